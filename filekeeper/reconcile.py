"""Reconcile: make the ledger and a provider agree, safely enough to run unattended from cron.

One pass over the provider's listing, streamed page by page, classified against a snapshot of
the account's ``active`` and ``pending`` rows (the only copy held in memory):

- orphans: at the provider, not active in the ledger — deleted with ``apply`` (or adopted);
- missing: active in the ledger, gone at the provider — marked ``missing``;
- expired: active and past ``expires_at`` — deleted at the provider, marked ``expired``;
- pending: reservations older than ``min_age`` — settled against the listing, or ``failed``;
- drift: same id, different size or name — reported.

Safety rails: nothing is done on an incomplete listing (it raises before any change); an empty
listing while the ledger holds active files is refused; orphans younger than ``min_age`` are
never touched; a plan deleting more than ``max_delete`` is refused whole; one applying run per
account at a time (a lock in the ledger); every delete is re-checked in the ledger right before
it is sent; every action is an event, every applying run a ``reconcile_runs`` row.
"""

from __future__ import annotations

import math
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, insert, select, update

from .config import Account
from .errors import FileNotFoundAtProvider, ProviderError, ReconcileBusy, ReconcileRefused
from .ledger import Ledger, iso
from .quota import is_expired
from .reservation import could_be_upload_of
from .schema import accounts, files, reconcile_runs, utcnow

if TYPE_CHECKING:
    from .providers import Provider, RemoteFile

#: a running reconcile that has not shown a sign of life for this long is taken to have died
STALE_AFTER = timedelta(minutes=10)
HEARTBEAT_EVERY = 15.0  # seconds
RESULT_BATCH = 50  # delete results written to the ledger per transaction

Progress = Callable[[str, int, int], None]  # (phase, done, total-or-0)


@dataclass(frozen=True)
class Options:
    apply: bool = False
    adopt: bool = False
    max_delete: int | str = 100  # a count, or "N%" of the files listed
    min_age: timedelta = timedelta(hours=1)
    accept_empty: bool = False
    wait: bool = False
    concurrency: int = 32


@dataclass(frozen=True, slots=True)
class Tracked:
    """A ledger row as the reconcile snapshot saw it."""

    ledger_id: int
    file_id: str | None
    filename: str
    bytes: int
    status: str
    created_at: datetime
    expires_at: datetime | None

    def expired(self, now: datetime) -> bool:
        return is_expired(self.expires_at, now)


@dataclass
class Report:
    """What a reconcile found, and with ``apply``, what it did."""

    account: Account
    applied: bool = False
    listed: int = 0
    orphans: list[RemoteFile] = field(default_factory=list)
    missing: list[Tracked] = field(default_factory=list)
    expired: list[Tracked] = field(default_factory=list)  # active and past expires_at
    expired_present: set[str] = field(default_factory=set)  # ... of which the provider still holds these
    settled: list[tuple[Tracked, RemoteFile]] = field(default_factory=list)
    failed_pending: list[Tracked] = field(default_factory=list)
    waiting_pending: list[Tracked] = field(default_factory=list)
    drift: list[tuple[Tracked, RemoteFile]] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    adopted: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)
    run_id: int | None = None
    max_delete: int = 0

    @property
    def to_delete(self) -> int:
        return len(self.expired_present) + len(self.orphans)

    @property
    def has_work(self) -> bool:
        """Anything to do or to report: for --exit-code monitoring and for staying quiet in cron."""
        return bool(self.orphans or self.missing or self.expired or self.settled or self.failed_pending or self.drift)

    def counts(self) -> dict[str, int]:
        return {
            "listed": self.listed,
            "orphans": len(self.orphans),
            "missing": len(self.missing),
            "expired": len(self.expired),
            "settled": len(self.settled),
            "failed_pending": len(self.failed_pending),
            "waiting_pending": len(self.waiting_pending),
            "drift": len(self.drift),
            "deleted": len(self.deleted),
            "adopted": len(self.adopted),
            "skipped": len(self.skipped),
            "errors": len(self.errors),
        }

    def to_json(self) -> dict[str, Any]:
        a = self.account

        def remote(r: RemoteFile) -> dict[str, Any]:
            return {
                "id": r.id,
                "provider": a.provider,
                "account": a.name,
                "filename": r.filename,
                "bytes": r.bytes,
                "purpose": r.purpose,
                "status": r.status,
                "created_at": iso(r.created_at),
                "expires_at": iso(r.expires_at),
            }

        def tracked(t: Tracked, **extra: Any) -> dict[str, Any]:
            return {
                "id": t.file_id,
                "ledger_id": t.ledger_id,
                "provider": a.provider,
                "account": a.name,
                "filename": t.filename,
                "bytes": t.bytes,
                "status": t.status,
                "created_at": iso(t.created_at),
                "expires_at": iso(t.expires_at),
                **extra,
            }

        return {
            "account": a.name,
            "provider": a.provider,
            "applied": self.applied,
            "listed": self.listed,
            "orphans": [remote(r) for r in self.orphans],
            "missing": [tracked(t) for t in self.missing],
            "expired": [tracked(t, at_provider=t.file_id in self.expired_present) for t in self.expired],
            "pending": [tracked(t, outcome="settled", settled_as=r.id) for t, r in self.settled]
            + [tracked(t, outcome="failed") for t in self.failed_pending]
            + [tracked(t, outcome="waiting") for t in self.waiting_pending],
            "drift": [
                {
                    "id": t.file_id,
                    "ledger": {"filename": t.filename, "bytes": t.bytes},
                    "provider": {"filename": r.filename, "bytes": r.bytes},
                }
                for t, r in self.drift
            ],
            "deleted": self.deleted,
            "adopted": self.adopted,
            "skipped": [{"id": i, "reason": why} for i, why in self.skipped],
            "errors": [{"id": i, "error": e} for i, e in self.errors],
            "run_id": self.run_id,
        }


def delete_limit(max_delete: int | str, listed: int) -> int:
    """``--max-delete``: a count, or a percentage of the files listed (rounded up)."""
    if isinstance(max_delete, str) and max_delete.endswith("%"):
        return math.ceil(listed * float(max_delete[:-1]) / 100)
    return int(max_delete)


def parse_max_delete(value: str) -> int | str:
    """Validate ``--max-delete`` as N or N%; raises ValueError."""
    text = value.strip()
    number = text[:-1] if text.endswith("%") else text
    if not number.replace(".", "", 1).isdigit() or (not text.endswith("%") and not number.isdigit()):
        raise ValueError(f"--max-delete takes a whole number or a percentage like 10%, not {value!r}")
    return text if text.endswith("%") else int(number)


# --- the lock -----------------------------------------------------------------------------------


def _host_of(actor: str) -> str:
    return actor.rpartition("@")[2]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stale(run: Any, now: datetime) -> str | None:
    """Why a running row's process is gone, or None if it may still be working."""
    if run.heartbeat_at < now - STALE_AFTER:
        return f"no heartbeat since {iso(run.heartbeat_at)}"
    import socket

    if _host_of(run.actor) == socket.gethostname() and not _alive(run.pid):
        return f"process {run.pid} is gone"
    return None


def acquire(ledger: Ledger, account_id: int, *, wait: bool, on_wait: Callable[[str], None] | None = None) -> int:
    """Take the account's reconcile lock: a ``running`` row, inserted under the write lock."""
    announced = False
    while True:
        now = utcnow()
        with ledger.transaction(write=True) as conn:
            conn.execute(select(accounts.c.id).where(accounts.c.id == account_id).with_for_update())
            holders = conn.execute(
                select(reconcile_runs).where(
                    reconcile_runs.c.account_id == account_id, reconcile_runs.c.status == "running"
                )
            ).all()
            running = None
            for holder_row in holders:
                if why := _stale(holder_row, now):
                    conn.execute(
                        update(reconcile_runs)
                        .where(reconcile_runs.c.id == holder_row.id)
                        .values(status="abandoned", finished_at=now, error=f"abandoned: {why}")
                    )
                    ledger.event(conn, "reconcile_abandoned", account_id=account_id, run_id=holder_row.id, reason=why)
                else:
                    running = holder_row
            if running is None:
                return conn.execute(
                    insert(reconcile_runs).values(
                        account_id=account_id,
                        status="running",
                        applied=True,
                        actor=ledger.actor,
                        pid=ledger.pid,
                        started_at=now,
                        heartbeat_at=now,
                        counts={},
                    )
                ).inserted_primary_key[0]
        holder = f"run #{running.id} by {running.actor} (pid {running.pid}), started {iso(running.started_at)}"
        if not wait:
            raise ReconcileBusy(
                f"another reconcile of this account is running: {holder}; try again later, or pass --wait"
            )
        if not announced and on_wait:
            on_wait(f"waiting for {holder} to finish")
            announced = True
        time.sleep(1.0)


def _heartbeat(ledger: Ledger, run_id: int) -> None:
    with ledger.transaction(write=True) as conn:
        conn.execute(update(reconcile_runs).where(reconcile_runs.c.id == run_id).values(heartbeat_at=utcnow()))


def _finish(ledger: Ledger, run_id: int, status: str, report: Report, outcome: str, error: str | None = None) -> None:
    with ledger.transaction(write=True) as conn:
        conn.execute(
            update(reconcile_runs)
            .where(reconcile_runs.c.id == run_id)
            .values(
                status=status,
                finished_at=utcnow(),
                heartbeat_at=utcnow(),
                listed=report.listed,
                counts=report.counts(),
                outcome=outcome[:255],
                error=None if error is None else error[:2000],
            )
        )


# --- plan ---------------------------------------------------------------------------------------


def _snapshot(ledger: Ledger, account_id: int) -> tuple[dict[str, Tracked], list[Tracked]]:
    with ledger.transaction() as conn:
        rows = conn.execute(
            select(
                files.c.id,
                files.c.file_id,
                files.c.filename,
                files.c.bytes,
                files.c.status,
                files.c.created_at,
                files.c.expires_at,
            ).where(files.c.account_id == account_id, files.c.status.in_(("active", "pending")))
        )
        tracked = [Tracked(*r) for r in rows]
    active = {t.file_id: t for t in tracked if t.status == "active" and t.file_id}
    return active, [t for t in tracked if t.status == "pending"]


def classify(
    report: Report,
    active: dict[str, Tracked],
    pending: list[Tracked],
    listing: Iterable[RemoteFile],
    now: datetime,
    min_age: timedelta,
) -> None:
    """The one pass over the listing. Raises whatever the listing raises, before any change.

    Consumes ``active``: each listed file is popped from it, so what is left was not listed.
    """
    old_enough = now - min_age
    claimable: dict[str, list[Tracked]] = defaultdict(list)
    for p in pending:
        if p.created_at <= old_enough:  # a younger reservation may still be uploading
            claimable[p.filename].append(p)
    claimed: set[int] = set()
    for rf in listing:
        report.listed += 1
        t = active.pop(rf.id, None)
        if t is not None:
            if (rf.bytes is not None and rf.bytes != t.bytes) or (rf.filename and rf.filename != t.filename):
                report.drift.append((t, rf))
            if t.expired(now):
                report.expired.append(t)
                report.expired_present.add(rf.id)
            continue
        match = next(
            (
                p
                for p in claimable.get(rf.filename, ())
                if p.ledger_id not in claimed and could_be_upload_of(rf, p.filename, p.bytes, p.created_at)
            ),
            None,
        )
        if match is not None:
            claimed.add(match.ledger_id)
            report.settled.append((match, rf))
            continue
        report.orphans.append(rf)
    for t in active.values():
        (report.expired if t.expired(now) else report.missing).append(t)
    for p in pending:
        if p.ledger_id in claimed:
            continue
        (report.failed_pending if p.created_at <= old_enough else report.waiting_pending).append(p)


# --- the whole run ------------------------------------------------------------------------------


def reconcile(
    ledger: Ledger,
    account: Account,
    account_id: int,
    remote: Provider,
    options: Options,
    *,
    progress: Progress | None = None,
    on_wait: Callable[[str], None] | None = None,
) -> Report:
    report = Report(account, applied=options.apply)
    run_id = acquire(ledger, account_id, wait=options.wait, on_wait=on_wait) if options.apply else None
    report.run_id = run_id
    last_beat = time.monotonic()

    def on_page(pages: int, seen: int) -> None:
        nonlocal last_beat
        if progress:
            progress("listing", seen, 0)
        if run_id is not None and time.monotonic() - last_beat > HEARTBEAT_EVERY:
            _heartbeat(ledger, run_id)
            last_beat = time.monotonic()

    try:
        now = utcnow()
        active, pending = _snapshot(ledger, account_id)
        held = len(active)
        classify(report, active, pending, remote.list_files(on_page=on_page), now, options.min_age)
        report.max_delete = delete_limit(options.max_delete, report.listed)
        if report.listed == 0 and held and not options.accept_empty:
            raise ReconcileRefused(
                f"{account.name}: the provider listed no files while the ledger holds {held} active; "
                "a wrong API key or base URL looks exactly like this. Nothing was changed. "
                "If the account really is empty, run again with --accept-empty"
            )
        if options.apply:
            _apply(ledger, account_id, remote, report, options, now, progress, run_id)
    except BaseException as e:
        if run_id is not None:
            status = "aborted" if isinstance(e, ReconcileRefused) else "failed"
            _finish(ledger, run_id, status, report, status, str(e) or type(e).__name__)
        raise
    if run_id is not None:
        outcome = "done" if not report.errors else f"done with {len(report.errors)} error(s)"
        _finish(
            ledger,
            run_id,
            "done" if not report.errors else "failed",
            report,
            outcome,
            "; ".join(f"{i}: {e}" for i, e in report.errors[:20]) or None,
        )
    return report


def _apply(
    ledger: Ledger,
    account_id: int,
    remote: Provider,
    report: Report,
    options: Options,
    now: datetime,
    progress: Progress | None,
    run_id: int | None,
) -> None:
    old_enough = now - options.min_age
    eligible: list[RemoteFile] = []
    for rf in report.orphans:
        if rf.created_at is None:
            report.skipped.append((rf.id, "the provider gave no creation time"))
        elif rf.created_at > old_enough:
            report.skipped.append((rf.id, f"younger than --min-age ({_age(options.min_age)}): may be mid-upload"))
        else:
            eligible.append(rf)
    deletes = len(report.expired_present) + (0 if options.adopt else len(eligible))
    if deletes > report.max_delete:
        raise ReconcileRefused(
            f"{report.account.name}: the plan would delete {deletes} files, more than --max-delete "
            f"{options.max_delete}; nothing was changed. Review it with `filekeeper reconcile --account "
            f"{report.account.name}` and, if it is right, run again with --max-delete {deletes}"
        )
    detail = {"run_id": run_id}
    with ledger.transaction(write=True) as conn:
        for t, rf in report.settled:
            _settle(ledger, conn, account_id, t, rf, report, detail)
        for t in report.failed_pending:
            if _set_status(conn, t.ledger_id, "pending", status="failed"):
                ledger.event(
                    conn,
                    "reconcile_fail_pending",
                    account_id=account_id,
                    file_pk=t.ledger_id,
                    reason="no matching file at the provider",
                    **detail,
                )
        for t in report.missing:
            if _set_status(conn, t.ledger_id, "active", status="missing"):
                ledger.event(
                    conn, "reconcile_missing", account_id=account_id, file_pk=t.ledger_id, file_id=t.file_id, **detail
                )
        for t in report.expired:
            if t.file_id not in report.expired_present and _set_status(
                conn, t.ledger_id, "active", status="expired", deleted_at=now
            ):
                ledger.event(
                    conn,
                    "reconcile_expired",
                    account_id=account_id,
                    file_pk=t.ledger_id,
                    file_id=t.file_id,
                    gone_at_provider=True,
                    **detail,
                )
        for t, rf in report.drift:
            ledger.event(
                conn,
                "reconcile_drift",
                account_id=account_id,
                file_pk=t.ledger_id,
                file_id=t.file_id,
                ledger={"filename": t.filename, "bytes": t.bytes},
                provider={"filename": rf.filename, "bytes": rf.bytes},
                **detail,
            )
        if options.adopt:
            for rf in eligible:
                _adopt(ledger, conn, account_id, rf, report, detail)
    jobs: list[tuple[str, Tracked | None]] = [
        (t.file_id, t) for t in report.expired if t.file_id in report.expired_present
    ]  # type: ignore[misc]
    if not options.adopt:
        jobs += [(rf.id, None) for rf in eligible]
    _delete_all(ledger, account_id, remote, jobs, report, options.concurrency, progress, detail)


def _set_status(conn: Connection, ledger_id: int, expected: str, **values: Any) -> bool:
    """Change a row only if it is still as the snapshot saw it (an upload may have moved it on)."""
    result = conn.execute(update(files).where(files.c.id == ledger_id, files.c.status == expected).values(**values))
    return result.rowcount == 1


def _settle(
    ledger: Ledger,
    conn: Connection,
    account_id: int,
    t: Tracked,
    rf: RemoteFile,
    report: Report,
    detail: dict[str, Any],
) -> None:
    taken = conn.execute(select(files.c.id).where(files.c.account_id == account_id, files.c.file_id == rf.id)).first()
    if taken is not None:
        report.skipped.append((rf.id, f"already recorded as ledger row {taken.id}; reservation not settled"))
        return
    if _set_status(
        conn,
        t.ledger_id,
        "pending",
        status="active",
        file_id=rf.id,
        bytes=rf.bytes if rf.bytes is not None else t.bytes,
    ):
        ledger.event(conn, "reconcile_settle", account_id=account_id, file_pk=t.ledger_id, file_id=rf.id, **detail)


def _adopt(
    ledger: Ledger, conn: Connection, account_id: int, rf: RemoteFile, report: Report, detail: dict[str, Any]
) -> None:
    values = {
        "filename": rf.filename or rf.id,
        "bytes": rf.bytes or 0,
        "status": "active",
        "deleted_at": None,
        "expires_at": rf.expires_at,
    }
    existing = conn.execute(
        select(files.c.id).where(files.c.account_id == account_id, files.c.file_id == rf.id)
    ).first()
    if existing is not None:
        conn.execute(update(files).where(files.c.id == existing.id).values(**values))
        ledger_id = existing.id
    else:
        ledger_id = conn.execute(
            insert(files).values(
                account_id=account_id,
                file_id=rf.id,
                purpose=rf.purpose or "unknown",
                sha256=None,
                created_at=rf.created_at or utcnow(),
                **values,
            )
        ).inserted_primary_key[0]
    ledger.event(
        conn,
        "reconcile_adopt",
        account_id=account_id,
        file_pk=ledger_id,
        file_id=rf.id,
        bytes=rf.bytes,
        filename=rf.filename,
        **detail,
    )
    report.adopted.append(rf.id)


def _delete_all(
    ledger: Ledger,
    account_id: int,
    remote: Provider,
    jobs: list[tuple[str, Tracked | None]],
    report: Report,
    concurrency: int,
    progress: Progress | None,
    detail: dict[str, Any],
) -> None:
    """Delete concurrently, at most ``concurrency`` in flight.

    This thread schedules: right before handing a delete to a free worker, it re-checks the file
    in the ledger (on one connection of its own), and the worker sends it at once. Results are
    written to the ledger in batches.
    """
    if not jobs:
        return
    from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

    def send(file_id: str) -> bool | str:
        try:
            return remote.delete(file_id)
        except FileNotFoundAtProvider:
            return False
        except ProviderError as e:
            return str(e)

    done: list[tuple[str, Tracked | None, bool]] = []
    queue = iter(jobs)
    finished = 0
    with (
        ledger.engine.connect() as check,
        ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="reconcile") as pool,
    ):

        def next_delete() -> tuple[Future[bool | str], str, Tracked | None] | None:
            nonlocal finished
            for file_id, expired in queue:
                with check.begin():
                    status = check.execute(
                        select(files.c.status).where(files.c.account_id == account_id, files.c.file_id == file_id)
                    ).scalar()
                if expired is None and status == "active":
                    report.skipped.append((file_id, "became active in the ledger since the listing"))
                elif expired is not None and status != "active":
                    report.skipped.append((file_id, f"no longer active in the ledger ({status})"))
                else:
                    return pool.submit(send, file_id), file_id, expired
                finished += 1
            return None

        in_flight: dict[Future[bool | str], tuple[str, Tracked | None]] = {}
        while True:
            while len(in_flight) < concurrency and (job := next_delete()) is not None:
                in_flight[job[0]] = (job[1], job[2])
            if not in_flight:
                break
            completed, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in completed:
                file_id, expired = in_flight.pop(future)
                outcome = future.result()
                finished += 1
                if isinstance(outcome, str):
                    report.errors.append((file_id, outcome))
                else:
                    report.deleted.append(file_id)
                    done.append((file_id, expired, outcome))
            if len(done) >= RESULT_BATCH:
                _record_deletes(ledger, account_id, done, detail)
                done.clear()
            if progress:
                progress("deleting", finished, len(jobs))
    _record_deletes(ledger, account_id, done, detail)


def _record_deletes(
    ledger: Ledger, account_id: int, done: list[tuple[str, Tracked | None, bool]], detail: dict[str, Any]
) -> None:
    """Write a batch of delete results: statuses and events, a few statements for the lot."""
    if not done:
        return
    now = utcnow()
    rows = []
    with ledger.transaction(write=True) as conn:
        expired_ids = [t.ledger_id for _, t, _ in done if t is not None]
        if expired_ids:
            conn.execute(
                update(files)
                .where(files.c.id.in_(expired_ids), files.c.status == "active")
                .values(status="expired", deleted_at=now)
            )
        orphan_ids = [file_id for file_id, t, _ in done if t is None]
        known: dict[str, int] = {}
        if orphan_ids:
            query = select(files.c.file_id, files.c.id).where(
                files.c.account_id == account_id, files.c.file_id.in_(orphan_ids)
            )
            known = {file_id: ledger_id for file_id, ledger_id in conn.execute(query)}
        if known:
            conn.execute(
                update(files)
                .where(files.c.id.in_(list(known.values())), files.c.status.not_in(("deleted", "expired")))
                .values(status="deleted", deleted_at=now)
            )
        for file_id, t, existed in done:
            if t is not None:
                rows.append(
                    ledger.event_row(
                        "reconcile_expire",
                        account_id=account_id,
                        file_pk=t.ledger_id,
                        file_id=file_id,
                        already_gone=not existed,
                        **detail,
                    )
                )
            else:
                rows.append(
                    ledger.event_row(
                        "reconcile_delete",
                        account_id=account_id,
                        file_pk=known.get(file_id),
                        file_id=file_id,
                        orphan=True,
                        already_gone=not existed,
                        **detail,
                    )
                )
        ledger.events(conn, rows)


def _age(d: timedelta) -> str:
    seconds = int(d.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
