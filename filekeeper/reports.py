"""Audit reports: who uploaded what, where it went, and what it costs in quota.

Built from the ledger's files, events and reconcile runs. :func:`build` gathers the summaries
(small, whatever the ledger's size); :func:`iter_events` streams every event of the period, so
that a CSV of a million events never holds more than a batch of rows in memory.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Text, cast, func, select

from .config import Settings
from .errors import UsageError
from .ledger import RECORDS, Ledger, lapsed, shown_status
from .records import FileRecord, iso
from .report_formats import DAILY_COLUMNS, AccountNow, AuditReport, EventOut, write_csv
from .schema import HELD, Action, Status, accounts, events, files, reconcile_runs, utcnow

_DAILY_ACTIONS = {
    Action.UPLOAD: "uploads",
    Action.RECONCILE_SETTLE: "uploads",
    Action.REUSE: "reused",
    Action.REFUSE: "refused",
    Action.DELETE: "deletes",
    Action.EVICT: "deletes",
    Action.RECONCILE_EXPIRE: "expiries",
    Action.RECONCILE_EXPIRED: "expiries",
    Action.RECONCILE_DELETE: "orphans_deleted",
    Action.RECONCILE_ADOPT: "adopted",
    Action.RECONCILE_MISSING: "missing",
    Action.FOUND_MISSING: "missing",
    Action.UPLOAD_FAILED: "failures",
    Action.RECONCILE_FAIL_PENDING: "failures",
    Action.EVICT_FAILED: "failures",
    Action.RECONCILE_GENERATED: "generated",
    Action.RECONCILE_UNCLAIMED: "unclaimed",
}
#: whether an event says the file was already gone (a delete that deleted nothing)
ALREADY_GONE = func.coalesce(events.c.detail["already_gone"].as_boolean(), False).label("already_gone")


def column_of(action: str, already_gone: Any) -> str | None:
    """The figure an event counts in, daily and per actor alike. A delete that found the file
    already gone deleted nothing: it is no delete (an expiry that found it gone is still one)."""
    column = _DAILY_ACTIONS.get(action)
    if column in ("deletes", "orphans_deleted") and already_gone:
        return None
    return column


EXPIRING_WITHIN = timedelta(days=7)
LIST_LIMIT = 20


@dataclass
class ReportQuery:
    """One report's question: which accounts, which period. Renderers ask it for the summary
    (built once) and for the period's events (streamed, each time they are asked)."""

    ledger: Ledger
    settings: Settings
    account_ids: Sequence[int] | None
    since: datetime
    until: datetime
    _summary: AuditReport | None = field(default=None, repr=False)

    def summary(self) -> AuditReport:
        if self._summary is None:
            self._summary = build(self.ledger, self.settings, self.account_ids, self.since, self.until)
        return self._summary

    def events(self, *, newest_first: int | None = None) -> Iterator[EventOut]:
        return iter_events(self.ledger, self.account_ids, self.since, self.until, newest_first=newest_first)


def parse_when(text: str, *, end_of_day: bool = False) -> datetime:
    """A date (YYYY-MM-DD, the whole day) or an ISO 8601 time; UTC unless it says otherwise.
    Years 1970 to 9998 only: nothing filekeeper records is older, and arithmetic on the edges of
    the calendar would overflow."""
    try:
        if len(text) == 10:
            d = datetime.combine(date.fromisoformat(text), datetime.min.time(), UTC)
            parsed = d + timedelta(days=1) - timedelta(microseconds=1) if end_of_day else d
        else:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
            parsed = parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        raise ValueError(f"{text!r} is not a date (YYYY-MM-DD) or an ISO 8601 time") from None
    if not 1970 <= parsed.year <= 9998:
        raise ValueError(f"{text!r} is out of range (years 1970 to 9998)")
    return parsed


def build(
    ledger: Ledger, settings: Settings, account_ids: Sequence[int] | None, since: datetime, until: datetime
) -> AuditReport:
    now = utcnow()
    with ledger.read() as reader:
        conn = reader.conn
        query = select(accounts.c.id, accounts.c.name, accounts.c.provider).order_by(accounts.c.name)
        if account_ids is not None:
            query = query.where(accounts.c.id.in_(account_ids))
        known = list(conn.execute(query))
        ids = [a.id for a in known]
        names = {a.id: a.name for a in known}
        status_counts: dict[int, dict[str, int]] = defaultdict(dict)
        held: dict[int, tuple[int, int]] = {}

        def by_status(*where: Any) -> Iterator[tuple[int, str, int, int]]:
            for account_id, status, n, size in conn.execute(
                select(files.c.account_id, files.c.status, func.count(), func.coalesce(func.sum(files.c.bytes), 0))
                .where(files.c.account_id.in_(ids), *where)
                .group_by(files.c.account_id, files.c.status)
            ):
                yield account_id, status, int(n), int(size)

        for account_id, status, n, size in by_status():
            status_counts[account_id][status] = n
            if status in HELD:
                f, b = held.get(account_id, (0, 0))
                held[account_id] = (f + n, b + size)
        # Files the provider deleted by itself on schedule (Gemini's 48 hours) hold nothing: expired.
        for account_id, status, n, size in by_status(lapsed(now)):
            counts = status_counts[account_id]
            counts[status] -= n
            counts[Status.EXPIRED] = counts.get(Status.EXPIRED, 0) + n
            f, b = held[account_id]
            held[account_id] = (f - n, b - size)

        def records(*where: Any, order: Any, limit: int = LIST_LIMIT) -> dict[int, list[FileRecord]]:
            out: dict[int, list[FileRecord]] = defaultdict(list)
            for account_id in ids:
                rows = conn.execute(
                    RECORDS.where(files.c.account_id == account_id, *where).order_by(order).limit(limit)
                )
                out[account_id] = [FileRecord.from_row(r) for r in rows]
            return out

        shown = shown_status(now)
        expiring = records(
            shown == Status.ACTIVE,
            files.c.expires_at > now,
            files.c.expires_at <= now + EXPIRING_WITHIN,
            order=files.c.expires_at,
        )
        largest = records(shown == Status.ACTIVE, order=files.c.bytes.desc(), limit=10)
        pending = records(shown == Status.PENDING, order=files.c.created_at)
        failed = records(shown == Status.FAILED, order=files.c.created_at.desc())
        missing = records(shown == Status.MISSING, order=files.c.created_at.desc())
        generated = records(shown == Status.GENERATED, order=files.c.created_at.desc())
        unclaimed = records(shown == Status.UNCLAIMED, order=files.c.created_at.desc())

        daily: dict[tuple[date, str], dict[str, Any]] = {}

        def day_figures(day: date, account: str) -> dict[str, Any]:
            return daily.setdefault((day, account), {**dict.fromkeys(DAILY_COLUMNS, 0), "refused_by": {}})

        period = (events.c.at >= since, events.c.at <= until, events.c.account_id.in_(ids))
        day_of = func.date(events.c.at)
        for day, account_id, action, gone, n in conn.execute(
            select(day_of, events.c.account_id, events.c.action, ALREADY_GONE, func.count())
            .where(*period)
            .group_by(day_of, events.c.account_id, events.c.action, ALREADY_GONE)
        ):
            column = column_of(action, gone)
            if column:
                day_figures(_as_date(day), names[account_id])[column] += int(n)
        for day, account_id, size in conn.execute(
            select(day_of, events.c.account_id, func.coalesce(func.sum(files.c.bytes), 0))
            .join(files, files.c.id == events.c.file_pk)
            .where(*period, events.c.action.in_((Action.UPLOAD, Action.RECONCILE_SETTLE)))
            .group_by(day_of, events.c.account_id)
        ):
            day_figures(_as_date(day), names[account_id])["bytes_uploaded"] += int(size)
        for at, account_id, detail in conn.execute(
            select(events.c.at, events.c.account_id, events.c.detail).where(*period, events.c.action == Action.REFUSE)
        ):
            by = day_figures(at.date(), names[account_id])["refused_by"]
            for violation in (detail or {}).get("violations", []):
                by[violation.get("limit", "?")] = by.get(violation.get("limit", "?"), 0) + 1

        runs = []
        for run in conn.execute(
            select(reconcile_runs, accounts.c.name)
            .join(accounts, accounts.c.id == reconcile_runs.c.account_id)
            .where(
                reconcile_runs.c.account_id.in_(ids),
                reconcile_runs.c.started_at >= since,
                reconcile_runs.c.started_at <= until,
            )
            .order_by(reconcile_runs.c.started_at)
        ):
            counts = run.counts or {}
            day_figures(run.started_at.date(), run.name)["orphans_found"] += int(counts.get("orphans", 0))
            runs.append(
                {
                    "id": run.id,
                    "account": run.name,
                    "status": run.status,
                    "actor": run.actor,
                    "started_at": iso(run.started_at),
                    "finished_at": iso(run.finished_at),
                    "listed": run.listed,
                    "deleted": counts.get("deleted", 0),
                    "adopted": counts.get("adopted", 0),
                    "missing": counts.get("missing", 0),
                    "expired": counts.get("expired", 0),
                    "counts": counts,
                    "outcome": run.outcome,
                    "error": run.error,
                }
            )
        usage = _usage_series(conn, ids, names, since, until)
        actors = _actors(conn, names, period)

    out = []
    for a in known:
        limits = settings.account_or_default(a.name, a.provider).limits
        n, size = held.get(a.id, (0, 0))
        out.append(
            AccountNow(
                a.name,
                a.provider,
                n,
                size,
                limits,
                expiring[a.id],
                largest[a.id],
                pending[a.id],
                failed[a.id],
                missing[a.id],
                dict(status_counts[a.id]),
                generated[a.id],
                unclaimed[a.id],
            )
        )
    return AuditReport(now, since, until, out, daily, runs, usage, actors)


ACTOR_COLUMNS = ("uploads", "bytes_uploaded", "reused", "refused", "deletes", "expiries", "orphans_deleted")


def _actors(conn: Any, names: dict[int, str], period: tuple[Any, ...]) -> list[dict[str, Any]]:
    """Per user@host and account: what they uploaded, reused, were refused and deleted, counted by
    the same rule as the daily figures (:func:`column_of`), so that the two always agree."""
    table: dict[tuple[str, str], dict[str, Any]] = {}
    bytes_of = func.coalesce(func.sum(files.c.bytes), 0)
    for actor, account_id, action, gone, n, size in conn.execute(
        select(events.c.actor, events.c.account_id, events.c.action, ALREADY_GONE, func.count(), bytes_of)
        .outerjoin(files, files.c.id == events.c.file_pk)
        .where(*period)
        .group_by(events.c.actor, events.c.account_id, events.c.action, ALREADY_GONE)
    ):
        column = column_of(action, gone)
        if column not in ACTOR_COLUMNS:
            continue
        row = table.setdefault(
            (actor, names[account_id]),
            {"actor": actor, "account": names[account_id], **dict.fromkeys(ACTOR_COLUMNS, 0)},
        )
        row[column] += int(n)
        if column == "uploads":
            row["bytes_uploaded"] += int(size)
    return [table[k] for k in sorted(table)]


def _as_date(value: Any) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value)[:10])


def _usage_series(
    conn: Any, ids: list[int], names: dict[int, str], since: datetime, until: datetime
) -> dict[str, list[tuple[date, int, int]]]:
    """Files and bytes each account held at the end of each day: every file counts from its
    upload until it was deleted, expired or found missing."""
    gone = (
        select(events.c.file_pk, func.min(events.c.at).label("at"))
        .where(events.c.action == Action.RECONCILE_MISSING)
        .group_by(events.c.file_pk)
        .subquery()
    )
    end = func.coalesce(files.c.deleted_at, gone.c.at)
    first, last = since.date(), until.date()
    span = (last - first).days + 1
    delta: dict[int, list[list[int]]] = {i: [[0, 0] for _ in range(span + 1)] for i in ids}
    rows = conn.execute(
        select(files.c.account_id, files.c.created_at, end.label("end"), files.c.bytes)
        .outerjoin(gone, gone.c.file_pk == files.c.id)
        .where(
            files.c.account_id.in_(ids),
            files.c.status != Status.FAILED,
            files.c.file_id.is_not(None),
            files.c.created_at <= until,
        )
    )
    for account_id, created, ended, size in rows:
        ended_day = None if ended is None else _as_date(ended)
        if ended_day is not None and ended_day < first:
            continue
        start = max(0, (created.date() - first).days)
        d = delta[account_id]
        d[start][0] += 1
        d[start][1] += size
        if ended_day is not None and (ended_day - first).days < span:
            stop = (ended_day - first).days
            d[stop][0] -= 1
            d[stop][1] -= size
    out: dict[str, list[tuple[date, int, int]]] = {}
    for account_id, d in delta.items():
        n = size = 0
        series = []
        for i in range(span):
            n, size = n + d[i][0], size + d[i][1]
            series.append((first + timedelta(days=i), n, size))
        out[names[account_id]] = series
    return out


def iter_events(
    ledger: Ledger,
    account_ids: Sequence[int] | None,
    since: datetime | None,
    until: datetime | None,
    *,
    before: datetime | None = None,
    up_to_id: int | None = None,
    newest_first: int | None = None,
    batch: int = 2000,
) -> Iterator[EventOut]:
    """Every event of the period in order, streamed from the database a batch at a time
    (or only the ``newest_first`` latest, newest first)."""
    query = (
        select(
            events.c.at,
            events.c.actor,
            events.c.pid,
            accounts.c.name,
            accounts.c.provider,
            func.coalesce(events.c.file_id, files.c.file_id),
            files.c.filename,
            events.c.action,
            cast(events.c.detail, Text),
            events.c.detail["filename"].as_string(),
        )
        .outerjoin(accounts, accounts.c.id == events.c.account_id)
        .outerjoin(files, files.c.id == events.c.file_pk)
        .order_by(events.c.id.desc() if newest_first else events.c.id)
    )
    if newest_first:
        query = query.limit(newest_first)
    if account_ids is not None:
        query = query.where(events.c.account_id.in_(account_ids))
    if since is not None:
        query = query.where(events.c.at >= since)
    if until is not None:
        query = query.where(events.c.at <= until)
    if before is not None:
        query = query.where(events.c.at < before)
    if up_to_id is not None:
        query = query.where(events.c.id <= up_to_id)
    with ledger.read() as r:  # a dropped connection mid-stream is a LedgerError, like any other read
        result = r.conn.execution_options(stream_results=True, yield_per=batch).execute(query)
        for at, actor, pid, account, provider, file_id, filename, action, detail, detail_name in result:
            yield EventOut(
                iso(at) or "", actor, pid, account, provider, file_id, filename or detail_name, action, detail
            )


def event_out(row: Any, names: dict[int, str], providers: dict[str, str], record: FileRecord) -> EventOut:
    """An events row of one file (``filekeeper show``) as reports show events."""
    import json

    account = names.get(row.account_id) if row.account_id is not None else None
    return EventOut(
        iso(row.at) or "",
        row.actor,
        row.pid,
        account,
        providers.get(account) if account else None,
        row.file_id or record.id,
        record.filename,
        row.action,
        json.dumps(row.detail, ensure_ascii=False),
    )


def events_before(ledger: Ledger, before: datetime) -> tuple[int, datetime | None, datetime | None]:
    """How many events are older than ``before``, and the first and last of their times."""
    with ledger.read() as r:
        return r.events_before(before)


def archive_events(ledger: Ledger, before: datetime, archive: Path) -> int:
    """Archive every event before ``before`` to a CSV file, then delete them from the ledger.

    The archive is complete and on disk (written aside, fsynced, renamed; its owner's only)
    before anything is deleted, and only what it holds is deleted: events written meanwhile stay.
    """
    with ledger.read() as r:
        last_id = r.last_event_before(before)
    partial = archive.with_name(archive.name + ".partial")
    try:
        archive.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as e:
        raise UsageError(f"cannot write the archive {archive}: {e.strerror}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as out:
            count = write_csv(iter_events(ledger, None, None, None, before=before, up_to_id=last_id or 0), out)
            out.flush()
            os.fsync(out.fileno())
        partial.replace(archive)
    except OSError as e:  # a full disk, a lost mount: nothing was pruned
        partial.unlink(missing_ok=True)
        raise UsageError(f"cannot write the archive {archive}: {e.strerror}; nothing was removed") from None
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    if last_id is not None:
        with ledger.write() as w:
            w.prune_events(before, last_id)
    return count


def import_events(ledger: Ledger, archive: Path) -> tuple[int, int]:
    """Put an archive's events back in the ledger: (imported, already there). Every account it
    names must be one the ledger knows; an event identical to one the ledger holds is skipped,
    so importing the same archive twice adds nothing."""
    import csv
    import json

    from .report_formats import read_csv

    try:
        with archive.open(encoding="utf-8", newline="") as f:
            rows = list(read_csv(csv.reader(f)))
    except OSError as e:
        raise UsageError(f"cannot read {archive}: {e.strerror}") from None
    except (UnicodeDecodeError, csv.Error) as e:
        raise UsageError(f"{archive} is not a filekeeper events CSV: {e}") from None
    events_in: list[dict[str, Any]] = []

    def no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not a JSON value")  # NaN, Infinity: no database stores them as JSON

    for n, row in enumerate(rows, start=2):
        try:
            at = parse_when(row["time"])
            if not 1970 <= at.year <= 9998:
                raise ValueError(f"time {row['time']!r} is out of range")
            pid = int(row["pid"])
            if not 0 <= pid < 2**31:
                raise ValueError(f"pid {row['pid']!r} is out of range")
            detail = json.loads(row["detail"], parse_constant=no_constants)
            if not isinstance(detail, dict):
                raise ValueError("detail is not a JSON object")
            json.dumps(detail, ensure_ascii=False).encode("utf-8")  # lone surrogates cannot be stored
            for key in ("actor", "action", "account", "file_id"):
                row[key].encode("utf-8")
        except (ValueError, TypeError, OverflowError, UnicodeEncodeError) as e:
            raise UsageError(f"{archive}, row {n}: {e}; nothing was imported") from None
        events_in.append({**row, "at": at, "pid": pid, "detail": detail})
    with ledger.write() as w:
        return w.import_events(events_in)
