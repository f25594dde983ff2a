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

from .errors import (
    EXIT_CHANGES,
    EXIT_OK,
    FilekeeperError,
    FileNotFoundAtProvider,
    ProviderError,
    ReconcileBusy,
    ReconcileRefused,
    exit_code_for,
)
from .records import Tracked, iso
from .schema import RunStatus, Status, utcnow
from .upload import could_be_upload_of

if TYPE_CHECKING:
    from .config import Account
    from .ledger import Ledger
    from .providers import Provider, RemoteFile

#: a running reconcile that has not shown a sign of life for this long is taken to have died
STALE_AFTER = timedelta(minutes=10)
HEARTBEAT_EVERY = 15.0  # seconds
RESULT_BATCH = 50  # delete results written to the ledger per transaction

Progress = Callable[[str, int, int], None]  # (phase, done, total-or-0)


@dataclass(frozen=True)
class ReconcileOptions:
    apply: bool = False
    adopt: bool = False
    max_delete: int | str = 100  # a count, or "N%" of the files listed
    min_age: timedelta = timedelta(hours=1)
    accept_empty: bool = False
    wait: bool = False
    concurrency: int = 32


@dataclass
class ReconcilePlan:
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
        with ledger.write() as w:
            w.lock_account(account_id)
            running = None
            for holder_row in w.running_runs(account_id):
                if why := _stale(holder_row, now):
                    w.abandon_run(account_id, holder_row.id, why, now)
                else:
                    running = holder_row
            if running is None:
                return w.start_run(account_id, now)
        holder = f"run #{running.id} by {running.actor} (pid {running.pid}), started {iso(running.started_at)}"
        if not wait:
            raise ReconcileBusy(
                f"another reconcile of this account is running: {holder}; try again later, or pass --wait"
            )
        if not announced and on_wait:
            on_wait(f"waiting for {holder} to finish")
            announced = True
        time.sleep(1.0)


def _finish(
    ledger: Ledger, run_id: int, status: RunStatus, plan: ReconcilePlan, outcome: str, error: str | None = None
) -> None:
    with ledger.write() as w:
        w.finish_run(run_id, status, listed=plan.listed, counts=plan.counts(), outcome=outcome, error=error)


# --- plan ---------------------------------------------------------------------------------------


def _snapshot(ledger: Ledger, account_id: int) -> tuple[dict[str, Tracked], list[Tracked]]:
    with ledger.read() as r:
        tracked = r.tracked(account_id)
    active = {t.file_id: t for t in tracked if t.status == Status.ACTIVE and t.file_id}
    return active, [t for t in tracked if t.status == Status.PENDING]


def classify(
    plan: ReconcilePlan,
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
        plan.listed += 1
        t = active.pop(rf.id, None)
        if t is not None:
            if (rf.bytes is not None and rf.bytes != t.bytes) or (rf.filename and rf.filename != t.filename):
                plan.drift.append((t, rf))
            if t.expired(now):
                plan.expired.append(t)
                plan.expired_present.add(rf.id)
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
            plan.settled.append((match, rf))
            continue
        plan.orphans.append(rf)
    for t in active.values():
        (plan.expired if t.expired(now) else plan.missing).append(t)
    for p in pending:
        if p.ledger_id in claimed:
            continue
        (plan.failed_pending if p.created_at <= old_enough else plan.waiting_pending).append(p)


# --- the whole run ------------------------------------------------------------------------------


def reconcile(
    ledger: Ledger,
    account: Account,
    account_id: int,
    remote: Provider,
    options: ReconcileOptions,
    *,
    progress: Progress | None = None,
    on_wait: Callable[[str], None] | None = None,
) -> ReconcilePlan:
    plan = ReconcilePlan(account, applied=options.apply)
    run_id = acquire(ledger, account_id, wait=options.wait, on_wait=on_wait) if options.apply else None
    plan.run_id = run_id
    last_beat = time.monotonic()

    def on_page(pages: int, seen: int) -> None:
        nonlocal last_beat
        if progress:
            progress("listing", seen, 0)
        if run_id is not None and time.monotonic() - last_beat > HEARTBEAT_EVERY:
            with ledger.write() as w:
                w.heartbeat(run_id)
            last_beat = time.monotonic()

    try:
        now = utcnow()
        active, pending = _snapshot(ledger, account_id)
        held = len(active)
        classify(plan, active, pending, remote.list_files(on_page=on_page), now, options.min_age)
        plan.max_delete = delete_limit(options.max_delete, plan.listed)
        if plan.listed == 0 and held and not options.accept_empty:
            raise ReconcileRefused(
                f"{account.name}: the provider listed no files while the ledger holds {held} active; "
                "a wrong API key or base URL looks exactly like this. Nothing was changed. "
                "If the account really is empty, run again with --accept-empty"
            )
        if options.apply:
            _apply(ledger, account_id, remote, plan, options, now, progress, run_id)
    except BaseException as e:
        if run_id is not None:
            status = RunStatus.ABORTED if isinstance(e, ReconcileRefused) else RunStatus.FAILED
            _finish(ledger, run_id, status, plan, str(status), str(e) or type(e).__name__)
        raise
    if run_id is not None:
        outcome = "done" if not plan.errors else f"done with {len(plan.errors)} error(s)"
        _finish(
            ledger,
            run_id,
            RunStatus.DONE if not plan.errors else RunStatus.FAILED,
            plan,
            outcome,
            "; ".join(f"{i}: {e}" for i, e in plan.errors[:20]) or None,
        )
    return plan


def exit_code(outcomes: Iterable[ReconcilePlan | FilekeeperError], *, changes: bool = False) -> int:
    """The exit code of a reconcile of one or more accounts: the most severe failure (a delete
    that failed counts as 1); else, with ``changes`` (--exit-code), 4 when anything had work."""
    outcomes = list(outcomes)
    failures = [o for o in outcomes if isinstance(o, FilekeeperError)]
    plans = [o for o in outcomes if isinstance(o, ReconcilePlan)]
    if failures or any(p.errors for p in plans):
        return max(exit_code_for(failures), 1)
    if changes and any(p.has_work for p in plans):
        return EXIT_CHANGES
    return EXIT_OK


def _apply(
    ledger: Ledger,
    account_id: int,
    remote: Provider,
    plan: ReconcilePlan,
    options: ReconcileOptions,
    now: datetime,
    progress: Progress | None,
    run_id: int | None,
) -> None:
    old_enough = now - options.min_age
    eligible: list[RemoteFile] = []
    for rf in plan.orphans:
        if rf.created_at is None:
            plan.skipped.append((rf.id, "the provider gave no creation time"))
        elif rf.created_at > old_enough:
            plan.skipped.append((rf.id, f"younger than --min-age ({_age(options.min_age)}): may be mid-upload"))
        else:
            eligible.append(rf)
    deletes = len(plan.expired_present) + (0 if options.adopt else len(eligible))
    if deletes > plan.max_delete:
        raise ReconcileRefused(
            f"{plan.account.name}: the plan would delete {deletes} files, more than --max-delete "
            f"{options.max_delete}; nothing was changed. Review it with `filekeeper reconcile --account "
            f"{plan.account.name}` and, if it is right, run again with --max-delete {deletes}"
        )
    with ledger.write() as w:
        for t, rf in plan.settled:
            if why := w.settle(account_id, t, rf, run_id=run_id):
                plan.skipped.append((rf.id, why))
        for t in plan.failed_pending:
            w.fail_pending(account_id, t, run_id=run_id)
        for t in plan.missing:
            w.mark_missing(account_id, t, run_id=run_id)
        for t in plan.expired:
            if t.file_id not in plan.expired_present:
                w.mark_expired(account_id, t, now=now, run_id=run_id)
        for t, rf in plan.drift:
            w.record_drift(account_id, t, rf, run_id=run_id)
        if options.adopt:
            for rf in eligible:
                w.adopt(account_id, rf, run_id=run_id)
                plan.adopted.append(rf.id)
    jobs: list[tuple[str, Tracked | None]] = [
        (t.file_id, t) for t in plan.expired if t.file_id is not None and t.file_id in plan.expired_present
    ]
    if not options.adopt:
        jobs += [(rf.id, None) for rf in eligible]
    _delete_all(ledger, account_id, remote, jobs, plan, options.concurrency, progress, run_id)


def _delete_all(
    ledger: Ledger,
    account_id: int,
    remote: Provider,
    jobs: list[tuple[str, Tracked | None]],
    plan: ReconcilePlan,
    concurrency: int,
    progress: Progress | None,
    run_id: int | None,
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

    def record() -> None:
        with ledger.write() as w:
            w.record_deletes(account_id, done, run_id=run_id)
        done.clear()

    with (
        ledger.status_probe(account_id) as status_now,
        ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="reconcile") as pool,
    ):

        def next_delete() -> tuple[Future[bool | str], str, Tracked | None] | None:
            nonlocal finished
            for file_id, expired in queue:
                status = status_now(file_id)
                if expired is None and status == Status.ACTIVE:
                    plan.skipped.append((file_id, "became active in the ledger since the listing"))
                elif expired is not None and status != Status.ACTIVE:
                    plan.skipped.append((file_id, f"no longer active in the ledger ({status})"))
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
                    plan.errors.append((file_id, outcome))
                else:
                    plan.deleted.append(file_id)
                    done.append((file_id, expired, outcome))
            if len(done) >= RESULT_BATCH:
                record()
            if progress:
                progress("deleting", finished, len(jobs))
    record()


def _age(d: timedelta) -> str:
    seconds = int(d.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
