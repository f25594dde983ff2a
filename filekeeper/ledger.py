"""The ledger: every file filekeeper has reserved, uploaded or deleted, and what happened to it.

This module is the ledger's only writer. Everything that can happen to a file is a method of
:class:`Writer`, and each decides the audit event it writes, so the list of those methods is the
list of what can happen. Other modules read through :class:`Reader` (or their own ``select``s)
and write by calling a transition inside ``with ledger.write() as w:``, one transaction each.
(``account_usage``, the sums of what each account holds, is kept by the database's own triggers
on ``files``: whatever writes a file row updates them in its transaction.)
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sqlite3
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from functools import cached_property
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    BigInteger,
    Connection,
    Engine,
    Executable,
    Integer,
    Row,
    Select,
    and_,
    bindparam,
    case,
    cast,
    exists,
    func,
    insert,
    literal,
    literal_column,
    or_,
    select,
    true,
    union_all,
    update,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError

from .engine import (
    WRITE,
    database_errors,
    db_message,
    make_engine,
    prepare,
    read_revision,
    use_wal,
)
from .errors import LedgerConflict, LedgerError, UsageError
from .quota import Held, Request, Room, Usage, Violation
from .records import LAPSING, SORTS, DeleteOutcome, FileRecord, Identity, Intent, PendingRow, Tracked
from .schema import (
    HELD,
    LISTED,
    SCHEMA_HEAD,
    Action,
    DeleteKind,
    RunStatus,
    Status,
    account_keys,
    account_usage,
    accounts,
    delete_intents,
    events,
    files,
    reconcile_runs,
    staging_tables,
    utcnow,
)

if TYPE_CHECKING:
    from .config import Account, Settings
    from .providers import RemoteFile


@dataclass(frozen=True)
class FileQuery:
    """Which ledger records to list, and in what order (``filekeeper ls``)."""

    account_ids: Iterable[int] | None = None
    statuses: Sequence[str] | None = None
    purpose: str | None = None
    #: a glob matched against the filename (``*.pdf``), case-sensitive
    name: str | None = None
    #: only files created at or before this time (``--older-than``)
    created_before: datetime | None = None
    #: only files that expire by this time, the expired included (``--expiring-within``)
    expiring_by: datetime | None = None
    sort: str = "created"
    limit: int | None = None


def _tracked(account_id: int) -> Any:
    """The rows a reconcile compares a listing with: the account's rows that hold quota, and the
    ``missing`` ones (a missing file listed again is restored, not taken for an orphan)."""
    return (
        (files.c.account_id == account_id)
        & files.c.status.in_([*HELD, Status.MISSING])
        & ((files.c.status != Status.MISSING) | files.c.file_id.is_not(None))
    )


def _alive(now: Any) -> Any:
    """Rows the provider has not deleted by itself by ``now``."""
    return files.c.provider_expires_at.is_(None) | (files.c.provider_expires_at > now)


def lapsed(now: datetime) -> Any:
    """Held files past the provider's own expiry: readers see them ``expired`` (as
    :meth:`FileRecord.from_row` shows them), whatever their row says until a reconcile records it."""
    return files.c.status.in_(LAPSING) & ~_alive(now)


def shown_status(now: datetime) -> Any:
    """A row's status as readers see it (see :func:`lapsed`)."""
    return case((lapsed(now), Status.EXPIRED.value), else_=files.c.status)


def _with_status(statuses: Iterable[str], now: datetime) -> Any:
    """``shown_status(now) IN statuses``, spelled so that the index on status still serves it."""
    wanted = set(statuses)
    shown = files.c.status.in_(list(wanted)) & ~lapsed(now)
    return (shown | lapsed(now)) if Status.EXPIRED in wanted else shown


def _may_duplicate(table: Any, account_id: Any, size: Any, purpose: Any, filename: Any) -> Any:
    """Rows of ``table`` that make hashing an upload first worth it: an active file of the same
    size and purpose, or a reservation of this very file left pending once its content was sent."""
    return and_(
        table.c.account_id == account_id,
        table.c.bytes == size,
        table.c.purpose == purpose,
        (table.c.status == Status.ACTIVE)
        | ((table.c.status == Status.PENDING) & (table.c.filename == filename) & table.c.sha256.is_not(None)),
    )


def _usage_parts(account_id: Any, now: Any) -> Any:
    """What the account holds, per purpose, as rows to add up: its ``account_usage`` rows (kept by
    the database's triggers, marked 0), less the held rows the provider has already deleted by
    itself by ``now`` (marked 1: those the sums still count; one range of an index, usually empty)."""
    kept = select(literal(0).label("lapsed"), account_usage.c.purpose, account_usage.c.files, account_usage.c.bytes)
    gone = (
        select(literal(1), files.c.purpose, -func.count(), -func.sum(files.c.bytes))
        .where(files.c.account_id == account_id, files.c.status.in_(HELD), files.c.provider_expires_at <= now)
        .group_by(files.c.purpose)
    )
    return union_all(kept.where(account_usage.c.account_id == account_id), gone)


def _by_purpose(rows: Iterable[Any]) -> dict[str, list[int]]:
    """(purpose, files, bytes) rows added up per purpose."""
    sums: dict[str, list[int]] = {}
    for purpose, n, b in rows:
        part = sums.setdefault(purpose, [0, 0])
        part[0] += int(n)
        part[1] += int(b)
    return sums


def _usage_from(rows: Iterable[Any]) -> tuple[Usage, int]:
    """:class:`Usage` from :func:`_usage_parts`' rows, and how many ``account_usage`` rows it read."""
    rows = list(rows)
    kept = sum(not lapsed for lapsed, *_ in rows)
    parts = _by_purpose(row[1:] for row in rows)
    by_purpose = {p: Usage(n, b) for p, (n, b) in parts.items() if n}
    return Usage(sum(u.files for u in by_purpose.values()), sum(u.bytes for u in by_purpose.values()), by_purpose), kept


def _param(name: str, type_: Any = None) -> Any:
    # A value of None makes the parameter optional at compile time, so that the statement can be
    # compiled once, before any value is known (see _Prepared).
    return bindparam(name, None, type_=type_)


class _Prepared:
    """A statement built and compiled once per database, then run as the driver's own SQL.

    Only for the few statements a reservation makes while it holds the account's lock: there,
    SQLAlchemy's per-statement work (finding the compiled form, binding, building the result:
    some 25 µs a statement here) was a large part of the time the lock was held. The SQL and the
    conversion of each value (UTCDateTime, JSON) are still SQLAlchemy's. On PostgreSQL the
    statement still goes through ``exec_driver_sql``, for its events and its handling of a dropped
    connection (a round trip costs more than that work there); on SQLite, where nothing can drop
    and the lock is the whole database's, straight through the driver, errors raised as
    SQLAlchemy's own."""

    def __init__(self, build: Callable[[], Executable]) -> None:
        self._build = build
        self._by_dialect: dict[str, tuple[str, list[tuple[str, Any, Any]], bool]] = {}

    def _compile(self, dialect: Dialect) -> tuple[str, list[tuple[str, Any, Any]], bool]:
        compiled = self._build().compile(dialect=dialect, compile_kwargs={"render_postcompile": True})  # type: ignore[attr-defined]
        slots = []
        for name in compiled.positiontup or compiled.params:
            bind = compiled.binds.get(name)
            convert = bind.type.dialect_impl(dialect).bind_processor(dialect) if bind is not None else None
            default = compiled.params.get(name)
            slots.append((name, default.value if isinstance(default, Enum) else default, convert))
        return compiled.string, slots, compiled.positiontup is not None

    def bound(self, dialect: Dialect, params: dict[str, Any]) -> tuple[str, Any]:
        """The SQL and its values, as the driver takes them."""
        found = self._by_dialect.get(dialect.name)
        if found is None:
            found = self._by_dialect[dialect.name] = self._compile(dialect)
        sql, slots, positional = found
        values = [
            (convert(params[name]) if convert else params[name]) if name in params else default
            for name, default, convert in slots
        ]
        return sql, tuple(values) if positional else {name: v for (name, _, _), v in zip(slots, values, strict=True)}

    def run(self, conn: Connection, **params: Any) -> list[Any]:
        return _run_bound(conn, *self.bound(conn.dialect, params))


def _run_bound(conn: Connection, sql: str, values: Any) -> list[Any]:
    """One statement as the driver takes it (see :class:`_Prepared`), its rows."""
    if conn.dialect.name == "sqlite":
        try:
            cursor = conn.connection.driver_connection.execute(sql, values)  # type: ignore[union-attr]
        except sqlite3.Error as e:
            raise DBAPIError.instance(sql, values, e, sqlite3.Error) from None
        return cursor.fetchall() if cursor.description else []
    result = conn.exec_driver_sql(sql, values)
    return result.fetchall() if result.returns_rows else []


def _bind(dialect: Dialect, calls: Sequence[tuple[_Prepared, dict[str, Any]]]) -> list[tuple[str, Any]]:
    return [statement.bound(dialect, params) for statement, params in calls]


def _pipelined(conn: Connection, bound: Sequence[tuple[str, Any]], *, commit: bool = False) -> list[list[Any]]:
    """Statements (as :func:`_bind` makes them) in order, their rows. Where the driver can pipeline them (psycopg),
    sent together, in one round trip (the transaction's BEGIN with them, and ``commit``: its
    COMMIT too, which a failed statement turns into nothing): the server still runs each once the
    one before has finished, so a read after a lock begins only once the lock is granted and, in
    a read-committed transaction, sees everything committed before (a lock and a read in one
    statement would read what was committed before it began to wait). The pipeline is the
    driver's own, unseen by SQLAlchemy's events (its own commit then finds nothing left to do);
    errors are raised as SQLAlchemy's."""
    dialect = conn.dialect
    if dialect.name != "postgresql":
        assert not commit, "a commit is sent with a pipeline only"
        return [_run_bound(conn, sql, values) for sql, values in bound]
    driver: Any = conn.connection.driver_connection
    errors = dialect.loaded_dbapi.Error
    failed: Exception | None = None
    cursors: list[Any] = []
    try:
        with driver.pipeline():
            try:
                for sql, values in bound:
                    cursors.append(driver.execute(sql, values))
                if commit:
                    driver.execute("COMMIT")  # waited for with the rest, as the pipeline ends
            except errors as e:
                # A failure can come back while later statements are still being sent. Caught
                # here, so that the pipeline is ended as any other (psycopg warns, on the user's
                # terminal, when it ends one aborted under an exception); its end then raises
                # that the pipeline was aborted, and this first failure is the one that counts.
                failed = e
        rows = [cursor.fetchall() if cursor.description else [] for cursor in cursors]
    except errors as e:
        failed = failed or e
    if failed is not None:
        sql = "; ".join(sql for sql, _ in bound)
        raise DBAPIError.instance(sql, None, failed, errors, dialect=dialect) from None
    return rows


#: account_usage rows an account may gather before a reservation folds them into one per purpose
FOLD_AFTER = 8


def _reserved_values() -> dict[str, Any]:
    """A reservation's ``files`` row, column by column: parameters, but its status."""
    named = ("account_id", "filename", "bytes", "sha256", "purpose", "created_at", "expires_at", "provider_expires_at")
    values: dict[str, Any] = {name: _param(name, files.c[name].type) for name in named}
    values["status"] = literal(Status.PENDING.value, files.c.status.type)
    return values


def _reserving() -> Any:
    return insert(files).values(**_reserved_values()).returning(files.c.id)


def _reserving_if_room() -> Any:
    # Where the lock is the whole database's from the transaction's start (SQLite), the row is
    # written only if the usage, before it, leaves room for it: one statement under the lock.
    totals, fits = _room_totals(counted=False)
    values = _reserved_values()
    return (
        insert(files)
        .from_select(list(values), select(*values.values()).select_from(totals).where(fits))
        .returning(files.c.id)
    )


_EVENT_COLUMNS = ("at", "account_id", "file_id", "action", "actor", "pid", "detail")


def _event_values() -> dict[str, Any]:
    return {name: _param(name, events.c[name].type) for name in _EVENT_COLUMNS}


def _reserve_with_event() -> Any:
    # Where the database takes an INSERT inside WITH (PostgreSQL), the row and its event are one
    # statement: one round trip fewer while the account is locked.
    reserved = _reserving().cte("reserved")
    return (
        insert(events)
        .from_select([*_EVENT_COLUMNS, "file_pk"], select(*_event_values().values(), reserved.c.id))
        .returning(events.c.file_pk)
    )


def _usage_rows_gone(*, if_piled: bool = False) -> Any:
    """The account's ``account_usage`` rows deleted, what they held returned; ``if_piled``: only
    where there are more than FOLD_AFTER of them."""
    mine = account_usage.c.account_id == _param("account_id")
    if if_piled:
        piled = account_usage.alias("piled")
        many = select(func.count()).where(piled.c.account_id == _param("account_id")).scalar_subquery()
        mine = mine & (many > FOLD_AFTER)
    return (
        account_usage.delete()
        .where(mine)
        .returning(account_usage.c.purpose, account_usage.c.files, account_usage.c.bytes)
    )


def _fold_at_once(*, if_piled: bool = False) -> Any:
    # Where the database takes a DELETE inside WITH (PostgreSQL), the fold is one statement: no
    # round trip of its own while the reservation that folds holds the account's lock.
    gone = _usage_rows_gone(if_piled=if_piled).cte("gone")
    files_, bytes_ = func.sum(gone.c.files), func.sum(gone.c.bytes)
    sums = (
        select(_param("account_id", account_usage.c.account_id.type), gone.c.purpose, files_, bytes_)
        .group_by(gone.c.purpose)
        .having((files_ != 0) | (bytes_ != 0))
    )
    return insert(account_usage).from_select(["account_id", "purpose", "files", "bytes"], sums)


#: the largest number either database's integers hold (SQLite's INTEGER, PostgreSQL's BIGINT)
_INT64 = 2**63 - 1


def _as_bound(limit: int | None) -> int | None:
    """A limit as the room test binds it: one beyond what the database's integers hold is no limit
    (no sum of them can reach it), where binding it would fail every upload."""
    return None if limit is None or limit > _INT64 else limit


#: what PostgreSQL's error says when a reservation's own check finds no room (see _room_check)
NO_ROOM = "filekeeper: no room"


def _room_totals(*, counted: bool) -> tuple[Any, Any]:
    """The account's usage as one row of four sums (files and bytes, the account's and the
    purpose's), and the condition that each is within its bound of a :class:`~filekeeper.quota.Room`
    (a NULL bound: no limit) with the new file: ``counted`` in the sums already (its row written
    first), or to be added to them."""
    held = _usage_parts(_param("account_id"), _param("now", files.c.provider_expires_at.type)).subquery("held")
    mine = held.c.purpose == _param("purpose", files.c.purpose.type)
    totals = select(
        func.coalesce(func.sum(held.c.files), 0).label("max_files"),
        func.coalesce(func.sum(held.c.bytes), 0).label("max_bytes"),
        func.coalesce(func.sum(held.c.files).filter(mine), 0).label("purpose_max_files"),
        func.coalesce(func.sum(held.c.bytes).filter(mine), 0).label("purpose_max_bytes"),
    ).subquery("totals")
    new_files, new_bytes = (literal(0), literal(0)) if counted else (literal(1), _param("bytes", BigInteger()))
    conditions = []
    for name, new in (
        ("max_files", new_files),
        ("max_bytes", new_bytes),
        ("purpose_max_files", new_files),
        ("purpose_max_bytes", new_bytes),
    ):
        bound = _param(name, BigInteger())
        conditions.append(bound.is_(None) | (totals.c[name] + new <= bound))
    return totals, and_(*conditions)


def _room_check() -> Any:
    """A row if the account's usage, the new row counted, is within a :class:`~filekeeper.quota.Room`;
    else the statement fails with NO_ROOM in its error, and takes the transaction (the reservation
    with it) down. A failure rather than a row saying so, because the commit travels with this
    statement and must not happen then; a cast of NO_ROOM to a number, because PostgreSQL's SQL
    has no statement that fails by choice."""
    totals, fits = _room_totals(counted=True)
    verdict = case((fits, literal_column("'0'")), else_=literal_column(f"'{NO_ROOM}'"))
    return select(cast(verdict, Integer)).select_from(totals)


# Built on first use, not at import: most commands never reserve.
_USAGE = _Prepared(lambda: _usage_parts(_param("account_id"), _param("now", files.c.provider_expires_at.type)))
_FOLD = _Prepared(_usage_rows_gone)
_FOLD_AT_ONCE = _Prepared(_fold_at_once)
_FOLD_IF_PILED = _Prepared(lambda: _fold_at_once(if_piled=True))
_ROOM_CHECK = _Prepared(_room_check)
_ADD_USAGE = _Prepared(
    lambda: insert(account_usage).values(
        account_id=_param("account_id"), purpose=_param("purpose"), files=_param("files"), bytes=_param("bytes")
    )
)
_LOCK = _Prepared(
    lambda: select(accounts.c.id).where(accounts.c.id == _param("account_id")).with_for_update(key_share=True)
)
# For the rest of a reservation's transaction on PostgreSQL, plain index scans only. The fold
# leaves a dead row for every account_usage row it replaces, hundreds a second under many
# uploaders, until autovacuum comes by (a minute or more); a plain index scan marks the dead
# entries it meets so that the next read skips them, where a bitmap or sequential scan, which
# the planner picks for a table this small, visits every one again, under the account's lock:
# reservations from 8 processes slowed by a third within seconds (``bench/quota_check.py``).
_INDEX_SCANS = _Prepared(
    lambda: select(func.set_config("enable_bitmapscan", "off", True), func.set_config("enable_seqscan", "off", True))
)
_RESERVE = _Prepared(_reserving)
_EVENT = _Prepared(lambda: insert(events).values(file_pk=_param("file_pk"), **_event_values()))
_RESERVE_IF_ROOM = _Prepared(_reserving_if_room)
# The event of the row just written by _RESERVE_IF_ROOM, bound before its id is known (its
# trigger's writes do not change which row SQLite last inserted, once the statement is done).
_EVENT_OF_LAST_ROW = _Prepared(lambda: insert(events).values(file_pk=func.last_insert_rowid(), **_event_values()))
_RESERVE_WITH_EVENT = _Prepared(_reserve_with_event)


@functools.cache
def _statuses_statement(count: int) -> _Prepared:
    """Status by provider id of ``count`` files of one account (:meth:`Ledger.status_probe`)."""
    return _Prepared(
        lambda: select(files.c.file_id, files.c.status).where(
            files.c.account_id == _param("account_id"),
            files.c.file_id.in_([_param(f"id{i}", files.c.file_id.type) for i in range(count)]),
        )
    )


@functools.lru_cache(maxsize=16)
def _check_statement(requests: int) -> Select[Any]:
    """:meth:`Reader.check_figures`'s query for this many requests, built once: building it is
    most of what a check costs in Python."""
    other = files.alias("dup")
    probes = [
        exists()
        .where(
            _may_duplicate(
                other, accounts.c.id, bindparam(f"bytes{i}"), bindparam(f"purpose{i}"), bindparam(f"filename{i}")
            )
        )
        .label(f"dup{i}")
        for i in range(requests)
    ]
    now = bindparam("now", type_=files.c.provider_expires_at.type)
    named = select(accounts.c.id).where(accounts.c.name == bindparam("name")).scalar_subquery()
    parts = _usage_parts(named, now).subquery()
    return (
        select(accounts.c.id, parts.c.lapsed, parts.c.purpose, parts.c.files, parts.c.bytes)
        .add_columns(*probes)
        .select_from(accounts.outerjoin(parts, true()))
        .where(accounts.c.name == bindparam("name"))
    )


#: the largest ledger row id: ``files.id`` is a 32-bit INTEGER on PostgreSQL
_MAX_ROW_ID = 2**31 - 1

#: ledger records: a files row with its account's name and provider
RECORDS: Select[Any] = select(files, accounts.c.name.label("account"), accounts.c.provider).join(
    accounts, files.c.account_id == accounts.c.id
)
#: ls --sort: oldest first, largest first, by name, soonest expiry first (no expiry last)
_ORDER: dict[str, tuple[Any, ...]] = {
    "created": (files.c.created_at, files.c.id),
    "size": (files.c.bytes.desc(), files.c.id),
    "name": (files.c.filename, files.c.id),
    "expires": (files.c.expires_at.is_(None), files.c.expires_at, files.c.id),
}
assert tuple(_ORDER) == SORTS, "records.SORTS names the orders this module implements"


def actor() -> str:
    """user@host of this process, for the audit log."""
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry, as in some containers
        user = f"uid{os.getuid()}" if hasattr(os, "getuid") else "unknown"
    return f"{user}@{socket.gethostname()}"


def open_ledger(settings: Settings, *, upgrade: bool = True) -> Ledger:
    """Open the ledger, creating or upgrading it to the current schema on first use."""
    path = settings.ledger_path
    ledger = Ledger(prepare(settings))
    try:
        if path is not None and not path.exists():
            from .migrate import create_sqlite  # alembic is imported only when there is work for it

            with database_errors(settings, "create"):
                create_sqlite(path)
        with database_errors(settings, "open"), ledger.engine.connect() as conn:
            revision = read_revision(conn)
            conn.rollback()  # end the read transaction: the journal mode cannot change inside one
            if conn.dialect.name == "sqlite":
                use_wal(conn, settings)
        if revision != SCHEMA_HEAD and upgrade:
            from .migrate import upgrade_to_head  # alembic is imported only when there is work for it

            with database_errors(settings, "upgrade"):
                upgrade_to_head(ledger.engine, settings.ledger_path)
    except BaseException:
        ledger.close()
        raise
    return ledger


class Ledger:
    """One ledger database: read and write transactions over it, and the account bookkeeping."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.pid = os.getpid()
        self._staging_engine: Engine | None = None
        self._stages: set[Stage] = set()
        # The same pool; its connections' transactions take the write lock as they begin (set
        # once here: setting it on each connection was a tenth of a reservation's time).
        self._writing = engine.execution_options(**{WRITE: True})

    @cached_property
    def actor(self) -> str:
        # Computed on the first event, not at open: read-only commands never need it.
        return actor()

    def close(self) -> None:
        for stage in list(self._stages):
            stage.close()
        if self._staging_engine is not None:
            self._staging_engine.dispose()
        self.engine.dispose()

    def stage(self, account_id: int | None, provider: str) -> Stage:
        """A new staging area for one reconcile's listing, on a connection of its own (closed
        with the stage, or with the ledger at the latest)."""
        if self._staging_engine is None:
            # Unpooled: a stage's connection is really closed after it, TEMP tables and all,
            # and stages kept open by plans never starve the pool the writes use.
            self._staging_engine = make_engine(self.engine.url.render_as_string(hide_password=False), pooled=False)
        stage = Stage(self, self._staging_engine, account_id, provider)
        self._stages.add(stage)
        return stage

    @contextmanager
    def read(self) -> Iterator[Reader]:
        """A read transaction."""
        with self._transaction(write=False) as conn:
            yield Reader(conn)

    def ready_reservation(self, account_id: int, request: Request, row: PendingRow, room: Room) -> ReadyReservation:
        """Everything :meth:`Writer.reserve_if_room` sends, its values bound, made before the
        transaction that takes the lock begins (on SQLite its start is the lock, and binding the
        values, some 60 µs a reservation here, was all done under it)."""
        values, event = _reservation_rows(self, account_id, request, row)
        locked = {"account_id": account_id, "now": row.created_at}
        bounds = {
            "purpose": room.purpose,
            "max_files": _as_bound(room.max_files),
            "max_bytes": _as_bound(room.max_bytes),
            "purpose_max_files": _as_bound(room.purpose_max_files),
            "purpose_max_bytes": _as_bound(room.purpose_max_bytes),
        }
        if self.engine.dialect.name == "postgresql":
            calls = [
                (_RESERVE_WITH_EVENT, {**values, **event}),
                (_INDEX_SCANS, {}),
                (_LOCK, locked),
                (_FOLD_IF_PILED, locked),
                (_ROOM_CHECK, {**locked, **bounds}),
            ]
        else:
            calls = [(_RESERVE_IF_ROOM, {**values, **locked, **bounds}), (_EVENT_OF_LAST_ROW, event)]
        return ReadyReservation(request, row, tuple(_bind(self.engine.dialect, calls)))

    @contextmanager
    def write(self) -> Iterator[Writer]:
        """A write transaction: it takes the write lock at once (SQLite ``BEGIN IMMEDIATE``),
        so a read-check-write sequence inside it cannot race; committed on success."""
        with self._transaction(write=True) as conn:
            yield Writer(conn, self)

    @contextmanager
    def status_probe(self, account_id: int) -> Iterator[Callable[[Sequence[str]], dict[str, str]]]:
        """The current status of files by provider id (those the ledger has), on one connection of
        its own, each call one query in a fresh transaction: it sees what other processes committed
        a moment ago (a reconcile re-checks the files it is about to delete right before they go)."""
        try:
            with self.engine.connect() as conn:
                sqlite = conn.dialect.name == "sqlite"

                def statuses(file_ids: Sequence[str]) -> dict[str, str]:
                    if sqlite:  # out of a transaction: the one statement sees every commit before it
                        return Reader(conn).statuses_of(account_id, file_ids)
                    with conn.begin():
                        return Reader(conn).statuses_of(account_id, file_ids)

                yield statuses
        except SQLAlchemyError as e:
            raise LedgerError(f"ledger error: {db_message(e)}") from None

    @contextmanager
    def _transaction(self, *, write: bool) -> Iterator[Connection]:
        try:
            with (self._writing if write else self.engine).connect() as conn, conn.begin():
                yield conn
        except IntegrityError as e:
            raise LedgerConflict(f"ledger error: {db_message(e)}") from None
        except SQLAlchemyError as e:
            raise LedgerError(f"ledger error: {db_message(e)}") from None

    # --- convenience reads ------------------------------------------------------------------

    def accounts(self) -> dict[str, tuple[int, str]]:
        """Every account the ledger has seen: name -> (ledger id, provider)."""
        with self.read() as r:
            return r.accounts()

    def files(
        self, *, account_ids: Iterable[int] | None = None, statuses: Sequence[str] | None = None
    ) -> list[FileRecord]:
        with self.read() as r:
            return r.files(account_ids=account_ids, statuses=statuses)

    def find(self, account_id: int, file_id: str) -> FileRecord | None:
        with self.read() as r:
            return r.find(account_id, file_id)

    def usage(self, account_ids: Iterable[int], *, now: datetime | None = None) -> dict[int, Usage]:
        with self.read() as r:
            return r.usage(account_ids, now=now)

    # --- accounts ---------------------------------------------------------------------------

    def ensure_account(self, account: Account, *, record_changes: bool = True) -> int:
        """The ledger id of an account, recording it (or a change of key or URL) as it is first used.

        ``record_changes=False`` records a new account but leaves a known one as it is: a reconcile
        records a new key only once its listing has shown it reaches the same account."""
        fp = account.key_fingerprint()
        for attempt in range(2):
            try:
                with self.write() as w:
                    row = w.account_row(account.name, lock=True)
                    if row is None:
                        return w.add_account(account, fp)
                    if row.provider != account.provider:
                        raise UsageError(
                            f"account {account.name!r} is recorded in the ledger as provider {row.provider!r}, "
                            f"but the config says {account.provider!r}; use a new account name"
                        )
                    if record_changes:
                        if (row.base_url, row.key_fingerprint) != (account.base_url, fp):
                            w.change_account(row, account, fp)
                        w.note_identity(row.id, account)
                    return row.id
            except LedgerConflict:
                if attempt:  # another process created it between our read and insert
                    raise
        raise AssertionError("unreachable")


class Reader:
    """Reads inside one transaction."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def record(self, ledger_id: int) -> FileRecord:
        return FileRecord.from_row(self.conn.execute(RECORDS.where(files.c.id == ledger_id)).one())

    def account_row(self, name: str, *, lock: bool = False) -> Row[Any] | None:
        query = select(accounts).where(accounts.c.name == name)
        return self.conn.execute(query.with_for_update() if lock else query).first()

    def accounts(self) -> dict[str, tuple[int, str]]:
        rows = self.conn.execute(select(accounts.c.name, accounts.c.id, accounts.c.provider))
        return {name: (id_, provider) for name, id_, provider in rows}

    def files(
        self, *, account_ids: Iterable[int] | None = None, statuses: Sequence[str] | None = None
    ) -> list[FileRecord]:
        return list(self.iter_files(FileQuery(account_ids=account_ids, statuses=statuses)))

    def iter_files(self, q: FileQuery) -> Iterator[FileRecord]:
        """The records ``q`` asks for, streamed from the database in its order."""
        from fnmatch import fnmatchcase

        query = RECORDS.order_by(*_ORDER[q.sort])
        if q.account_ids is not None:
            query = query.where(files.c.account_id.in_(list(q.account_ids)))
        if q.statuses:
            query = query.where(_with_status(q.statuses, utcnow()))
        if q.purpose is not None:
            query = query.where(files.c.purpose == q.purpose)
        if q.created_before is not None:
            query = query.where(files.c.created_at <= q.created_before)
        if q.expiring_by is not None:
            query = query.where(files.c.expires_at.is_not(None), files.c.expires_at <= q.expiring_by)
        if q.limit is not None and q.name is None:
            query = query.limit(q.limit)
        shown = 0
        for row in self.conn.execution_options(stream_results=True, yield_per=1000).execute(query):
            record = FileRecord.from_row(row)
            if q.name is not None and not fnmatchcase(record.filename, q.name):
                continue
            yield record
            shown += 1
            if q.limit is not None and shown >= q.limit:
                return

    def history(self, ledger_id: int) -> list[Row[Any]]:
        """Every event of one file row, oldest first (those that name it by provider id too)."""
        row = self.conn.execute(select(files.c.account_id, files.c.file_id).where(files.c.id == ledger_id)).one()
        about = events.c.file_pk == ledger_id
        if row.file_id is not None:
            about = about | (
                events.c.file_pk.is_(None) & (events.c.account_id == row.account_id) & (events.c.file_id == row.file_id)
            )
        return list(self.conn.execute(select(events).where(about).order_by(events.c.id)))

    def records_named(self, ref: str, account_ids: Iterable[int] | None = None) -> list[FileRecord]:
        """Rows with this provider id (in any of ``account_ids``), or the row ``#N`` names."""
        query = RECORDS.order_by(files.c.id)
        if ref.startswith("#") and ref[1:].isascii() and ref[1:].isdigit():
            if int(ref[1:]) > _MAX_ROW_ID:  # no such row, and past what the column (and driver) can take
                return []
            query = query.where(files.c.id == int(ref[1:]))
        else:
            query = query.where(files.c.file_id == ref)
        if account_ids is not None:
            query = query.where(files.c.account_id.in_(list(account_ids)))
        return [FileRecord.from_row(r) for r in self.conn.execute(query)]

    def find(self, account_id: int, file_id: str) -> FileRecord | None:
        row = self.conn.execute(RECORDS.where(files.c.account_id == account_id, files.c.file_id == file_id)).first()
        return None if row is None else FileRecord.from_row(row)

    def owners_of(self, file_ids: Sequence[str]) -> dict[str, list[str]]:
        """The accounts (names) the ledger records each of these provider file ids under."""
        out: dict[str, list[str]] = {}
        query = (
            select(files.c.file_id, accounts.c.name)
            .join(accounts, files.c.account_id == accounts.c.id)
            .where(files.c.file_id.in_(list(file_ids)))
            .distinct()
        )
        for file_id, name in self.conn.execute(query):
            out.setdefault(file_id, []).append(name)
        return out

    def ledger_id_of(self, account_id: int, file_id: str) -> int | None:
        return self.conn.execute(
            select(files.c.id).where(files.c.account_id == account_id, files.c.file_id == file_id)
        ).scalar()

    def statuses_of(self, account_id: int, file_ids: Sequence[str]) -> dict[str, str]:
        # Prepared, as a reservation's statements are: a reconcile's delete loop runs this on
        # every turn, its thread waiting for the interpreter's lock behind 32 busy workers at each
        # step (SQLAlchemy's own way took ~5x the time).
        params = {f"id{i}": file_id for i, file_id in enumerate(file_ids)}
        return dict(_statuses_statement(len(file_ids)).run(self.conn, account_id=account_id, **params))

    def usage(self, account_ids: Iterable[int], *, now: datetime | None = None) -> dict[int, Usage]:
        """Files and bytes held per account, and per purpose within it: the one usage query.

        Held are the rows in :data:`HELD`, except those the provider has deleted by itself by
        ``now`` (a Gemini file after its 48 hours, listed or not, takes no room)."""
        when = now or utcnow()
        return {a: self.usage_of(a, when) for a in account_ids}

    def usage_of(self, account_id: int, now: datetime) -> Usage:
        """One account's :meth:`usage`."""
        return _usage_from(_USAGE.run(self.conn, account_id=account_id, now=now))[0]

    def check_figures(
        self, account: str, requests: Sequence[Request], *, now: datetime
    ) -> tuple[int | None, Usage, list[bool]]:
        """What a quota check reads, in one statement (the least a check can do is one aggregate
        query; this is that query with its two companions folded in): the account's ledger id
        (None if never recorded), its :meth:`usage`, and for each request :meth:`may_be_duplicate`."""
        params: dict[str, Any] = {"name": account, "now": now}
        for i, r in enumerate(requests):
            params.update({f"bytes{i}": r.bytes, f"purpose{i}": r.purpose, f"filename{i}": r.filename})
        rows = self.conn.execute(_check_statement(len(requests)), params).all()
        if not rows:
            return None, Usage(0, 0), [False] * len(requests)
        usage, _ = _usage_from(row[1:5] for row in rows if row[2] is not None)
        return rows[0][0], usage, [bool(flag) for flag in rows[0][5:]]

    def held_files(self, account_id: int, *, expired_by: datetime | None = None) -> list[Held]:
        """Active files that could make room (only those expired by ``expired_by``, if given); not
        those the provider has already deleted by itself."""
        query = select(
            files.c.id,
            files.c.file_id,
            files.c.filename,
            files.c.bytes,
            files.c.created_at,
            files.c.expires_at,
            files.c.purpose,
        ).where(
            files.c.account_id == account_id,
            files.c.status == Status.ACTIVE,
            files.c.file_id.is_not(None),
            _alive(utcnow()),
        )
        if expired_by is not None:
            query = query.where(files.c.expires_at <= expired_by)
        return [Held(*row) for row in self.conn.execute(query)]

    def find_duplicate(
        self,
        account_id: int,
        sha256: str,
        purpose: str,
        *,
        lasting_until: datetime | None = None,
        exclude: Iterable[int] = (),
    ) -> FileRecord | None:
        """The newest active file with the same content and purpose that an upload can reuse: one
        that does not expire before ``lasting_until``, and is not one of ``exclude``."""
        query = RECORDS.where(
            files.c.account_id == account_id,
            files.c.sha256 == sha256,
            files.c.purpose == purpose,
            files.c.status == Status.ACTIVE,
            files.c.file_id.is_not(None),
        )
        if lasting_until is not None:
            query = query.where(files.c.expires_at.is_(None) | (files.c.expires_at >= lasting_until))
        if excluded := list(exclude):
            query = query.where(files.c.id.not_in(excluded))
        row = self.conn.execute(query.order_by(files.c.id.desc()).limit(1)).first()
        return None if row is None else FileRecord.from_row(row, reused=True)

    def pending_twins(self, account_id: int, request: Request, sha256: str) -> list[FileRecord]:
        """Reservations of this very file (name, size, purpose and content) whose outcome was never
        recorded: a run that crashed, or lost its answer, after the whole file was sent."""
        rows = self.conn.execute(
            RECORDS.where(
                files.c.account_id == account_id,
                files.c.status == Status.PENDING,
                files.c.filename == request.filename,
                files.c.bytes == request.bytes,
                files.c.purpose == request.purpose,
                files.c.sha256 == sha256,
            ).order_by(files.c.id)
        )
        return [FileRecord.from_row(r) for r in rows]

    def may_be_duplicate(self, account_id: int, request: Request) -> bool:
        """Whether an active file of the same size and purpose exists, or a reservation of this very
        file was left pending: only then is hashing first worth it."""
        where = _may_duplicate(files, account_id, request.bytes, request.purpose, request.filename)
        return self.conn.execute(select(files.c.id).where(where).limit(1)).first() is not None

    def identities_of(self, account_id: int) -> dict[tuple[str, str], Identity]:
        """The (base URL, key fingerprint) pairs this account has been used with, and how each is known."""
        rows = self.conn.execute(
            select(
                account_keys.c.base_url,
                account_keys.c.key_fingerprint,
                account_keys.c.first_seen,
                account_keys.c.proven_by,
            ).where(account_keys.c.account_id == account_id)
        )
        return {(url, fp): Identity(url, fp, first_seen, proven_by) for url, fp, first_seen, proven_by in rows}

    def baselined(self, account_id: int) -> bool:
        """Whether an applying reconcile has listed the account through this ledger before: until one
        has, every file the provider lists that the ledger does not know is someone else's."""
        return self.baselined_at(account_id) is not None

    def baselined_at(self, account_id: int) -> datetime | None:
        """When the first applying reconcile listed the account through this ledger (None: never)."""
        query = select(accounts.c.baselined_at).where(accounts.c.id == account_id)
        return self.conn.execute(query).scalar()

    def identities(self) -> list[tuple[str, str, set[str]]]:
        """The accounts the ledger tracks files of (files at the provider: a renamed account that holds
        none is history, not an identity), as (name, base URL, fingerprints of its keys), one per URL."""
        names = dict(self.conn.execute(select(accounts.c.id, accounts.c.name)).all())
        holding = select(files.c.id).where(files.c.account_id == account_keys.c.account_id, files.c.status.in_(LISTED))
        grouped: dict[tuple[str, str], set[str]] = {}
        rows = self.conn.execute(
            select(account_keys.c.account_id, account_keys.c.base_url, account_keys.c.key_fingerprint).where(
                holding.exists()
            )
        )
        for account_id, url, fp in rows:
            grouped.setdefault((names[account_id], url), set()).add(fp)
        return [(name, url, fps) for (name, url), fps in grouped.items()]

    def open_intents(self, account_id: int, *, loose_before: datetime, dead_runs: Sequence[int] = ()) -> list[Intent]:
        """Deletes written down and never recorded as done whose process is gone: those of a reconcile
        run that is no longer running (it finished, failed or was abandoned, or is one of
        ``dead_runs``), and those of a plain ``filekeeper delete`` (no run) written before
        ``loose_before``, by which time it has ended."""
        query = (
            select(
                delete_intents.c.id,
                delete_intents.c.file_id,
                delete_intents.c.file_pk,
                delete_intents.c.kind,
                delete_intents.c.run_id,
                delete_intents.c.at,
            )
            .outerjoin(reconcile_runs, reconcile_runs.c.id == delete_intents.c.run_id)
            .where(
                delete_intents.c.account_id == account_id,
                (reconcile_runs.c.status.is_not(None) & (reconcile_runs.c.status != RunStatus.RUNNING))
                | delete_intents.c.run_id.in_(list(dead_runs))
                | (delete_intents.c.run_id.is_(None) & (delete_intents.c.at <= loose_before)),
            )
            .order_by(delete_intents.c.id)
        )
        return [Intent(*row) for row in self.conn.execute(query)]

    def events_before(self, before: datetime) -> tuple[int, datetime | None, datetime | None]:
        query = select(func.count(), func.min(events.c.at), func.max(events.c.at)).where(events.c.at < before)
        n, first, last = self.conn.execute(query).one()
        return int(n), first, last

    def last_event_before(self, before: datetime) -> int | None:
        return self.conn.execute(select(func.max(events.c.id)).where(events.c.at < before)).scalar()

    def runs_since(self, account_id: int, since: datetime, *, besides: int) -> int:
        """How many of the account's applying runs, other than ``besides``, are running or
        finished at ``since`` or later."""
        c = reconcile_runs.c
        query = select(func.count()).where(
            c.account_id == account_id,
            c.id != besides,
            or_(c.status == RunStatus.RUNNING, c.finished_at >= since),
        )
        return int(self.conn.execute(query).scalar_one())

    def running_runs(self, account_id: int) -> list[Row[Any]]:
        return list(
            self.conn.execute(
                select(reconcile_runs).where(
                    reconcile_runs.c.account_id == account_id, reconcile_runs.c.status == RunStatus.RUNNING
                )
            )
        )


def _event_row(
    ledger: Ledger,
    action: Action,
    /,
    *,
    account_id: int | None,
    file_pk: int | None = None,
    file_id: str | None = None,
    **detail: Any,
) -> dict[str, Any]:
    return {
        "at": utcnow(),
        "account_id": account_id,
        "file_pk": file_pk,
        "file_id": file_id,
        "action": str(action),
        "actor": ledger.actor,
        "pid": ledger.pid,
        "detail": detail,
    }


def _reservation_rows(
    ledger: Ledger, account_id: int, request: Request, row: PendingRow
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The files row and the event (without its file_pk) that reserve ``request``."""
    values = {
        "account_id": account_id,
        "filename": request.filename,
        "bytes": request.bytes,
        "sha256": row.sha256,
        "purpose": request.purpose,
        "created_at": row.created_at,
        "expires_at": row.expires_at,
        "provider_expires_at": row.provider_expires_at,
    }
    event = _event_row(
        ledger,
        Action.RESERVE,
        account_id=account_id,
        filename=request.filename,
        bytes=request.bytes,
        purpose=request.purpose,
        **row.detail,
    )
    del event["file_pk"]  # the row's id, known once it is written
    return values, event


@dataclass(frozen=True)
class ReadyReservation:
    """A reservation's statements with their values bound (:meth:`Ledger.ready_reservation`), for
    :meth:`Writer.reserve_if_room` to run under the account's lock."""

    request: Request
    row: PendingRow
    statements: tuple[tuple[str, Any], ...]


class Writer(Reader):
    """A write transaction. Its methods are everything that can happen in the ledger; each writes
    its audit event. Nothing else in filekeeper inserts, updates or deletes a ledger row."""

    def __init__(self, conn: Connection, ledger: Ledger) -> None:
        super().__init__(conn)
        self._ledger = ledger

    # --- the audit log --------------------------------------------------------------------------

    def _event_row(self, action: Action, /, **kwargs: Any) -> dict[str, Any]:
        return _event_row(self._ledger, action, **kwargs)

    def _event(self, action: Action, **kwargs: Any) -> None:
        self.conn.execute(insert(events), [self._event_row(action, **kwargs)])

    def _move(self, ledger_id: int, expected: str | Sequence[str] | None = None, **values: Any) -> bool:
        """Change a row (only if its status is still ``expected``: another process may have moved it on)."""
        query = update(files).where(files.c.id == ledger_id)
        if isinstance(expected, str):
            query = query.where(files.c.status == expected)
        elif expected is not None:
            query = query.where(files.c.status.in_(list(expected)))
        return self.conn.execute(query.values(**values)).rowcount == 1

    def _account_of(self, ledger_id: int) -> int:
        return self.conn.execute(select(files.c.account_id).where(files.c.id == ledger_id)).scalar_one()

    # --- accounts -------------------------------------------------------------------------------

    def add_account(self, account: Account, fingerprint: str) -> int:
        account_id = self.conn.execute(
            insert(accounts).values(
                name=account.name,
                provider=account.provider,
                base_url=account.base_url,
                key_fingerprint=fingerprint,
                created_at=utcnow(),
            )
        ).inserted_primary_key[0]
        self._event(
            Action.ACCOUNT_ADDED,
            account_id=account_id,
            provider=account.provider,
            base_url=account.base_url,
            key_fingerprint=fingerprint,
        )
        url, _ = account.identity()
        self.conn.execute(
            insert(account_keys).values(
                account_id=account_id,
                key_fingerprint=fingerprint,
                base_url=url,
                first_seen=utcnow(),
                proven_by="first_use",
            )
        )
        return account_id

    def note_identity(self, account_id: int, account: Account) -> None:
        """The URL and key an upload or delete is using, if this account was never used with them:
        recorded ``unproven``, so that files uploaded through them prove nothing about them."""
        url, fp = account.identity()
        if (url, fp) not in self.identities_of(account_id):
            self.conn.execute(
                insert(account_keys).values(
                    account_id=account_id, key_fingerprint=fp, base_url=url, first_seen=utcnow(), proven_by="unproven"
                )
            )

    def prove_identity(self, account_id: int, account: Account, *, proven_by: str, detail: dict[str, Any]) -> None:
        """A URL and key the account had not been proven to be reached by, now known to reach it:
        ``listing`` (files the ledger recorded before it were listed through it) or ``trusted``
        (``--trust-key``)."""
        url, fp = account.identity()
        known = self.identities_of(account_id).get((url, fp))
        if known is None:
            self.conn.execute(
                insert(account_keys).values(
                    account_id=account_id, key_fingerprint=fp, base_url=url, first_seen=utcnow(), proven_by=proven_by
                )
            )
        else:
            self.conn.execute(
                update(account_keys)
                .where(
                    account_keys.c.account_id == account_id,
                    account_keys.c.key_fingerprint == fp,
                    account_keys.c.base_url == url,
                )
                .values(proven_by=proven_by)
            )
        self._event(
            Action.KEY_ROTATED, account_id=account_id, key_fingerprint=fp, base_url=url, proven_by=proven_by, **detail
        )

    def note_account(self, account: Account) -> None:
        """Record the account's base URL and key as they are now, if they changed."""
        row = self.account_row(account.name, lock=True)
        fp = account.key_fingerprint()
        if row is not None and (row.base_url, row.key_fingerprint) != (account.base_url, fp):
            self.change_account(row, account, fp)

    def set_baseline(self, account_id: int, now: datetime) -> None:
        """The first applying reconcile of the account through this ledger has listed it."""
        self.conn.execute(
            update(accounts)
            .where(accounts.c.id == account_id, accounts.c.baselined_at.is_(None))
            .values(baselined_at=now)
        )

    def change_account(self, row: Row[Any], account: Account, fingerprint: str) -> None:
        self._event(
            Action.ACCOUNT_CHANGED,
            account_id=row.id,
            base_url={"old": row.base_url, "new": account.base_url},
            key_fingerprint={"old": row.key_fingerprint, "new": fingerprint},
        )
        self.conn.execute(
            update(accounts)
            .where(accounts.c.id == row.id)
            .values(base_url=account.base_url, key_fingerprint=fingerprint)
        )

    def lock_account(self, account_id: int) -> None:
        """Serialise writers of one account: a row lock where the database has them (SQLite's
        write transaction already excludes every other writer). ``FOR NO KEY UPDATE``: writers of
        the account's files and usage rows (whose foreign keys take a key-share lock on it) need
        not wait for it, so that none of them can hold up a reservation that waits on them."""
        if self.conn.dialect.name != "sqlite":
            _LOCK.run(self.conn, account_id=account_id)

    def lock_and_read_usage(self, account_id: int, now: datetime) -> Usage:
        """:meth:`lock_account`, then :meth:`usage_of` under the lock: on PostgreSQL in one round
        trip (the read begins once the lock is granted, so it sees every reservation before it)."""
        if self.conn.dialect.name == "sqlite":
            return self.usage_of(account_id, now)
        params = {"account_id": account_id, "now": now}
        calls = [(_INDEX_SCANS, {}), (_LOCK, params), (_USAGE, params)]
        _, _, rows = _pipelined(self.conn, _bind(self.conn.dialect, calls))
        return self._folded(account_id, rows)

    def usage_of(self, account_id: int, now: datetime) -> Usage:
        """:meth:`Reader.usage_of`; an account whose ``account_usage`` rows have piled up has them
        folded into one per purpose on the way, so that the next read adds up a few."""
        return self._folded(account_id, _USAGE.run(self.conn, account_id=account_id, now=now))

    def _folded(self, account_id: int, rows: list[tuple[Any, ...]]) -> Usage:
        usage, kept = _usage_from(rows)
        if kept > FOLD_AFTER:
            self.fold_usage(account_id)
        return usage

    def fold_usage(self, account_id: int) -> None:
        """Replace the account's ``account_usage`` rows by one per purpose: by a reservation that
        found them piled up, and after the transitions that add many at once (a reconcile's
        changes, a batch of deletes), so that reading the usage stays a read of a few rows."""
        # Each row deleted is returned to exactly one folder, whoever else folds at the same time
        # (PostgreSQL's second DELETE finds the rows gone); rows other writers add meanwhile are
        # left for the next fold.
        if self.conn.dialect.name == "postgresql":
            _FOLD_AT_ONCE.run(self.conn, account_id=account_id)
            return
        for purpose, (n, b) in _by_purpose(_FOLD.run(self.conn, account_id=account_id)).items():
            if n or b:
                _ADD_USAGE.run(self.conn, account_id=account_id, purpose=purpose, files=n, bytes=b)

    # --- an upload: reserve, then activate or fail --------------------------------------------

    def refuse(self, account_id: int, request: Request, violations: Sequence[Violation], **detail: Any) -> None:
        self._event(
            Action.REFUSE,
            account_id=account_id,
            filename=request.filename,
            bytes=request.bytes,
            purpose=request.purpose,
            violations=[v.to_json() for v in violations],
            **detail,
        )

    def reuse(self, account_id: int, record: FileRecord, request: Request, sha256: str, **detail: Any) -> None:
        self._event(
            Action.REUSE,
            account_id=account_id,
            file_pk=record.ledger_id,
            file_id=record.id,
            filename=request.filename,
            sha256=sha256,
            **detail,
        )

    def reserve(self, account_id: int, request: Request, row: PendingRow) -> FileRecord:
        """A ``pending`` row: the quota is held from now until the upload lands or fails (or the
        provider's own expiry passes). The record returned is made from what was written rather
        than read back."""
        values, event = _reservation_rows(self._ledger, account_id, request, row)
        if self.conn.dialect.name == "postgresql":
            ((ledger_id,),) = _RESERVE_WITH_EVENT.run(self.conn, **{**values, **event})
        else:
            ((ledger_id,),) = _RESERVE.run(self.conn, **values)
            _EVENT.run(self.conn, **event, file_pk=ledger_id)
        return row.record(ledger_id, request)

    def reserve_if_room(self, ready: ReadyReservation) -> FileRecord | None:
        """A ``pending`` row, as :meth:`reserve` writes it, but only if the account has room for it,
        the room tested by the database itself; and the commit with it, the last thing this
        transaction does. None: there is no room, nothing is written, and the transaction is left
        to be rolled back (the caller then reserves the careful way, which says why, or makes room).

        Made so that the account's lock covers as little as it can (see
        :meth:`Ledger.ready_reservation`). On PostgreSQL the row and its event are written first,
        then the lock is taken, the usage rows folded if they have piled up, the usage (the new row
        counted) tested, and the commit: sent at once, in one round trip. The server still runs
        them in order, so the test reads once the lock is granted, in a snapshot of its own: every
        reservation committed before, and this one's row. A failed test fails the transaction, and
        the commit with it. On SQLite, whose lock is the transaction's from its start, the row is
        written only if there is room, then its event, then the commit, straight to the driver."""
        if self.conn.dialect.name == "postgresql":
            try:
                ((ledger_id,),), *_ = _pipelined(self.conn, ready.statements, commit=True)
            except DBAPIError as e:
                if getattr(e.orig, "sqlstate", None) == "22P02" and NO_ROOM in str(e.orig):
                    return None
                raise
        else:
            (reserving, event) = ready.statements
            rows = _run_bound(self.conn, *reserving)
            if not rows:
                return None
            ((ledger_id,),) = rows
            _run_bound(self.conn, *event)
            _run_bound(self.conn, "COMMIT", ())  # SQLAlchemy's own commit then finds nothing to do
        return ready.row.record(ledger_id, ready.request)

    def evict(self, account_id: int, victim: Held, *, mode: str, now: datetime, for_filename: str) -> None:
        """Marked gone inside the reservation's lock, so that no other upload counts on this room;
        deleted at the provider afterwards, and restored if that fails."""
        status = Status.EXPIRED if victim.expired(now) else Status.DELETED
        self._move(victim.ledger_id, status=status, deleted_at=now)
        self._event(
            Action.EVICT,
            account_id=account_id,
            file_pk=victim.ledger_id,
            file_id=victim.file_id,
            mode=mode,
            status=str(status),
            bytes=victim.bytes,
            to_make_room_for=for_filename,
        )

    def restore_evicted(self, account_id: int, victim: Held, error: str) -> None:
        """A file marked for eviction could not be deleted at the provider: it is still there."""
        self._move(victim.ledger_id, status=Status.ACTIVE, deleted_at=None)
        self._event(
            Action.EVICT_FAILED, account_id=account_id, file_pk=victim.ledger_id, file_id=victim.file_id, error=error
        )

    def undo_evict(self, account_id: int, ledger_id: int, file_id: str, *, run_id: int | None) -> None:
        """A file an upload marked for eviction, whose process died before deleting it: listed
        still, so ``active`` again."""
        if self._move(ledger_id, (Status.DELETED, Status.EXPIRED), status=Status.ACTIVE, deleted_at=None):
            self._event(
                Action.EVICT_FAILED,
                account_id=account_id,
                file_pk=ledger_id,
                file_id=file_id,
                error="the upload that evicted it stopped before deleting it; still at the provider",
                run_id=run_id,
            )

    def activate(
        self,
        ledger_id: int,
        *,
        file_id: str,
        size: int,
        sha256: str | None,
        provider_expires_at: datetime | None = None,
        **detail: Any,
    ) -> FileRecord:
        """A reservation's upload landed: it is ``active`` under the provider's id, expiring when
        the provider says it will (``provider_expires_at``) if that comes before ours.

        A provider that deduplicates content may answer with a file it already had, one the
        ledger holds under another row: then that row is the file (``active`` again if need be)
        and is returned as reused; the reservation becomes ``failed``, holding no quota."""
        account_id = self._account_of(ledger_id)
        holder = self.ledger_id_of(account_id, file_id)
        held = self.conn.execute(select(files.c.sha256).where(files.c.id == holder)).scalar() if holder else None
        if holder is not None and holder != ledger_id and held and sha256 and held != sha256:
            # Not a provider's dedupe (the content differs): another reservation took this file for
            # its own when its answer was lost. It is this upload's; that one is pending again.
            self._move(holder, status=Status.PENDING, file_id=None)
            self._event(
                Action.SETTLE_UNDONE,
                account_id=account_id,
                file_pk=holder,
                file_id=file_id,
                reason=f"the file is row {ledger_id}'s upload (its content differs)",
            )
            holder = None
        if holder is not None and holder != ledger_id:
            self._move(ledger_id, status=Status.FAILED)
            self._event(
                Action.UPLOAD_FAILED,
                account_id=account_id,
                file_pk=ledger_id,
                error=f"the provider answered with {file_id}, a file the ledger already holds (row {holder}): reused",
                provider_dedupe=True,
            )
            self._move(holder, status=Status.ACTIVE, deleted_at=None)
            record = FileRecord.from_row(self.conn.execute(RECORDS.where(files.c.id == holder)).one(), reused=True)
            self._event(
                Action.REUSE,
                account_id=account_id,
                file_pk=holder,
                file_id=file_id,
                sha256=sha256,
                provider_dedupe=True,
                **detail,
            )
            return record
        expiry = self._provider_expiry(ledger_id, provider_expires_at)
        self._move(ledger_id, file_id=file_id, bytes=size, sha256=sha256, status=Status.ACTIVE, **expiry)
        self._event(
            Action.UPLOAD,
            account_id=self._account_of(ledger_id),
            file_pk=ledger_id,
            file_id=file_id,
            bytes=size,
            sha256=sha256,
            **detail,
        )
        return self.record(ledger_id)

    def _provider_expiry(self, ledger_id: int, when: datetime | None) -> dict[str, Any]:
        """The values that record the provider's own expiry of a row: ours moves up to it if later."""
        if when is None:
            return {}
        ours = self.conn.execute(select(files.c.expires_at).where(files.c.id == ledger_id)).scalar()
        return {"provider_expires_at": when, "expires_at": when if ours is None else min(ours, when)}

    def note_sent(self, ledger_id: int, sha256: str) -> None:
        """A reservation's whole content is on its way: it may land from now on (no event: the
        upload's own event follows)."""
        self.conn.execute(
            update(files).where(files.c.id == ledger_id, files.c.status == Status.PENDING).values(sha256=sha256)
        )

    def found_gone(self, account_id: int, record: FileRecord) -> None:
        """An active file the provider no longer holds (its retrieve said so): ``missing``."""
        if self._move(record.ledger_id, Status.ACTIVE, status=Status.MISSING):
            self._event(Action.FOUND_MISSING, account_id=account_id, file_pk=record.ledger_id, file_id=record.id)

    def found_expired(self, account_id: int, record: FileRecord) -> FileRecord:
        """A file the provider refused to show after its own expiry had passed: ``expired``, as
        the provider deleted it then."""
        when = record.provider_expires_at
        if self._move(record.ledger_id, (Status.ACTIVE, Status.GENERATED), status=Status.EXPIRED, deleted_at=when):
            self._event(Action.FOUND_EXPIRED, account_id=account_id, file_pk=record.ledger_id, file_id=record.id)
        return self.record(record.ledger_id)

    def fail(self, ledger_id: int, error: str, **detail: Any) -> FileRecord:
        """A reservation's upload did not land: ``failed``, holding no quota."""
        self._move(ledger_id, status=Status.FAILED)
        self._event(
            Action.UPLOAD_FAILED, account_id=self._account_of(ledger_id), file_pk=ledger_id, error=error, **detail
        )
        return self.record(ledger_id)

    # --- deletes ----------------------------------------------------------------------------------

    def mark_deleted(self, account_id: int, file_id: str, *, already_gone: bool) -> FileRecord | None:
        """Record a delete at the provider; the event is written even for ids the ledger never saw."""
        ledger_id = self.ledger_id_of(account_id, file_id)
        if ledger_id is not None:
            self._move(
                ledger_id, [s for s in Status if s != Status.DELETED], status=Status.DELETED, deleted_at=utcnow()
            )
        self._event(
            Action.DELETE,
            account_id=account_id,
            file_pk=ledger_id,
            file_id=file_id,
            already_gone=already_gone,
            known=ledger_id is not None,
        )
        return None if ledger_id is None else self.record(ledger_id)

    # --- reconcile ------------------------------------------------------------------------------

    def settle(self, account_id: int, pending: Tracked, remote: RemoteFile, *, run_id: int | None) -> str | None:
        """A reservation whose upload landed after all: ``active`` under the id found in the listing.
        Returns why it was not settled, or None."""
        taken = self.ledger_id_of(account_id, remote.id)
        if taken is not None:
            return f"already recorded as ledger row {taken}; reservation not settled"
        size = remote.bytes if remote.bytes is not None else pending.bytes
        expiry = self._provider_expiry(pending.ledger_id, remote.expires_at)
        if self._move(pending.ledger_id, Status.PENDING, status=Status.ACTIVE, file_id=remote.id, bytes=size, **expiry):
            self._event(
                Action.RECONCILE_SETTLE,
                account_id=account_id,
                file_pk=pending.ledger_id,
                file_id=remote.id,
                run_id=run_id,
            )
        return None

    def fail_pending(self, account_id: int, pending: Tracked, *, run_id: int | None) -> None:
        if self._move(pending.ledger_id, Status.PENDING, status=Status.FAILED):
            self._event(
                Action.RECONCILE_FAIL_PENDING,
                account_id=account_id,
                file_pk=pending.ledger_id,
                reason="no matching file at the provider",
                run_id=run_id,
            )

    def _found(
        self,
        action: Action,
        account_id: int,
        tracked: Tracked,
        expected: str | Sequence[str],
        values: dict[str, Any],
        *,
        run_id: int | None,
        **detail: Any,
    ) -> None:
        """What a listing showed about a tracked file: move it on (if no one else has) and say so."""
        if self._move(tracked.ledger_id, expected, **values):
            pk, file_id = tracked.ledger_id, tracked.file_id
            self._event(action, account_id=account_id, file_pk=pk, file_id=file_id, run_id=run_id, **detail)

    def mark_missing(self, account_id: int, tracked: Tracked, *, run_id: int | None) -> None:
        """Gone at the provider without our doing, and proven gone (a 404, or a second listing)."""
        ours = (Status.ACTIVE, Status.GENERATED)
        self._found(Action.RECONCILE_MISSING, account_id, tracked, ours, {"status": Status.MISSING}, run_id=run_id)

    def mark_expired(self, account_id: int, tracked: Tracked, *, now: datetime, run_id: int | None) -> None:
        """Past its expiry and already gone at the provider: nothing to delete, only to record."""
        ours = (Status.ACTIVE, Status.GENERATED)
        values = {"status": Status.EXPIRED, "deleted_at": now}
        self._found(Action.RECONCILE_EXPIRED, account_id, tracked, ours, values, run_id=run_id, gone_at_provider=True)

    def record_drift(self, account_id: int, tracked: Tracked, remote: RemoteFile, *, run_id: int | None) -> None:
        self._event(
            Action.RECONCILE_DRIFT,
            account_id=account_id,
            file_pk=tracked.ledger_id,
            file_id=tracked.file_id,
            ledger={"filename": tracked.filename, "bytes": tracked.bytes},
            provider={"filename": remote.filename, "bytes": remote.bytes},
            run_id=run_id,
        )

    def adopt(self, account_id: int, remote: RemoteFile, *, expires_at: datetime | None, run_id: int | None) -> int:
        """A file at the provider recorded as ours (``reconcile --adopt``), with the provider's
        metadata and the retention policy's expiry."""
        values = {
            "filename": remote.filename or remote.id,
            "bytes": remote.bytes or 0,
            "status": Status.ACTIVE,
            "deleted_at": None,
            "expires_at": expires_at,
            "provider_expires_at": remote.expires_at,
        }
        ledger_id = self.ledger_id_of(account_id, remote.id)
        if ledger_id is not None:
            self._move(ledger_id, **values)
        else:
            ledger_id = self._insert_remote(account_id, remote, **values)
        self._event(
            Action.RECONCILE_ADOPT,
            account_id=account_id,
            file_pk=ledger_id,
            file_id=remote.id,
            bytes=remote.bytes,
            filename=remote.filename,
            run_id=run_id,
        )
        return ledger_id

    def _insert_remote(self, account_id: int, remote: RemoteFile, **values: Any) -> int:
        return self.conn.execute(
            insert(files).values(
                account_id=account_id,
                file_id=remote.id,
                purpose=remote.purpose if remote.purpose is not None else "unknown",
                sha256=None,
                created_at=remote.created_at or utcnow(),
                **{"filename": remote.filename or remote.id, "bytes": remote.bytes or 0, **values},
            )
        ).inserted_primary_key[0]

    def record_unclaimed(self, account_id: int, remote: RemoteFile, *, run_id: int | None) -> int | None:
        """A file found by a ledger that never tracked this account: someone else's until adopted.
        It counts against the account's storage, and no reconcile deletes it as an orphan.
        (None: another process recorded the file since the listing; its record stands.)"""
        if self.ledger_id_of(account_id, remote.id) is not None:
            return None
        ledger_id = self._insert_remote(
            account_id, remote, status=Status.UNCLAIMED, expires_at=None, provider_expires_at=remote.expires_at
        )
        self._event(
            Action.RECONCILE_UNCLAIMED, account_id=account_id, file_pk=ledger_id, file_id=remote.id, run_id=run_id
        )
        return ledger_id

    def record_generated(
        self, account_id: int, remote: RemoteFile, *, expires_at: datetime | None, run_id: int | None
    ) -> int | None:
        """A file the provider made (a batch's results): kept until ``expires_at``, never an orphan.
        (None: another process recorded the file since the listing; its record stands.)"""
        if self.ledger_id_of(account_id, remote.id) is not None:
            return None
        ledger_id = self._insert_remote(
            account_id, remote, status=Status.GENERATED, expires_at=expires_at, provider_expires_at=remote.expires_at
        )
        self._event(
            Action.RECONCILE_GENERATED,
            account_id=account_id,
            file_pk=ledger_id,
            file_id=remote.id,
            purpose=remote.purpose,
            run_id=run_id,
        )
        return ledger_id

    def reappear(self, account_id: int, tracked: Tracked, *, run_id: int | None) -> None:
        """A ``missing`` file listed again: it was there all along (a listing hid it), ``active`` again."""
        values = {"status": Status.ACTIVE}
        self._found(Action.RECONCILE_REAPPEARED, account_id, tracked, Status.MISSING, values, run_id=run_id)

    def mark_gone(self, account_id: int, tracked: Tracked, *, run_id: int | None) -> None:
        """An unclaimed file that left the provider (its owner deleted it): it holds no quota now."""
        values = {"status": Status.MISSING}
        self._found(Action.RECONCILE_GONE, account_id, tracked, Status.UNCLAIMED, values, run_id=run_id)

    # --- the delete journal --------------------------------------------------------------------

    def add_intents(
        self, account_id: int, items: Sequence[tuple[str, int | None, str]], *, run_id: int | None
    ) -> list[int]:
        """Write down deletes about to be sent, ``(file_id, ledger id, kind)``; their ids, in order."""
        if not items:
            return []
        now = utcnow()
        rows = [
            {
                "account_id": account_id,
                "file_id": file_id,
                "file_pk": file_pk,
                "run_id": run_id,
                "kind": kind,
                "at": now,
                "actor": self._ledger.actor,
                "pid": self._ledger.pid,
            }
            for file_id, file_pk, kind in items
        ]
        c = delete_intents.c
        if len({file_id for file_id, _, _ in items}) < len(items):  # never from a reconcile's batch
            query = insert(delete_intents).returning(c.id, sort_by_parameter_order=True)
            return list(self.conn.execute(query, rows).scalars())
        # One statement for the batch, its ids matched to the rows by file id: asking for them in
        # the rows' order instead makes SQLAlchemy insert the rows one at a time on SQLite (64
        # statements a batch, each waiting for the interpreter's lock behind the deletes in flight).
        ids = {
            file_id: id_ for file_id, id_ in self.conn.execute(insert(delete_intents).returning(c.file_id, c.id), rows)
        }
        return [ids[file_id] for file_id, _, _ in items]

    def settle_file_intents(self, account_id: int, file_id: str) -> None:
        """The plain deletes of this file written down earlier (an attempt whose answer was lost,
        that the SDK then sent again): its fate is known now, so they are settled with it."""
        self.conn.execute(
            delete_intents.delete().where(
                delete_intents.c.account_id == account_id,
                delete_intents.c.file_id == file_id,
                delete_intents.c.kind == DeleteKind.DELETE,
                delete_intents.c.run_id.is_(None),
            )
        )

    def void_intents(self, ids: Sequence[int]) -> None:
        """Deletes written down but not sent (skipped, interrupted) or found not done: forget them."""
        if ids:
            self.conn.execute(delete_intents.delete().where(delete_intents.c.id.in_(list(ids))))

    def record_deletes(self, account_id: int, done: Sequence[DeleteOutcome], *, run_id: int | None) -> None:
        """A batch of deletes the provider answered (or that a later run found done): statuses,
        events and the journal, in a few statements for the lot."""
        if not done:
            return
        now = utcnow()
        query = select(files.c.file_id, files.c.id).where(
            files.c.account_id == account_id, files.c.file_id.in_([d.job.file_id for d in done])
        )
        known = {file_id: ledger_id for file_id, ledger_id in self.conn.execute(query)}
        expired = [known[d.job.file_id] for d in done if d.job.kind == DeleteKind.EXPIRED and d.job.file_id in known]
        deleted = [known[d.job.file_id] for d in done if d.job.kind != DeleteKind.EXPIRED and d.job.file_id in known]
        if expired:
            self.conn.execute(
                update(files)
                .where(files.c.id.in_(expired), files.c.status.in_((Status.ACTIVE, Status.GENERATED)))
                .values(status=Status.EXPIRED, deleted_at=now)
            )
        if deleted:
            self.conn.execute(
                update(files)
                .where(files.c.id.in_(deleted), files.c.status.not_in((Status.DELETED, Status.EXPIRED)))
                .values(status=Status.DELETED, deleted_at=now)
            )
        rows = []
        for d in done:
            job = d.job
            detail: dict[str, Any] = {"settled_after_interrupt": True} if d.settled else {}
            if job.kind == DeleteKind.EXPIRED:
                action = Action.RECONCILE_EXPIRE
            elif job.kind == DeleteKind.DELETE:
                action, detail["known"] = Action.DELETE, job.file_id in known
            else:
                action = Action.RECONCILE_DELETE
                detail.update(orphan=job.kind == DeleteKind.ORPHAN, unclaimed=job.kind == DeleteKind.UNCLAIMED)
            rows.append(
                self._event_row(
                    action,
                    account_id=account_id,
                    file_pk=known.get(job.file_id),
                    file_id=job.file_id,
                    already_gone=not d.existed,
                    run_id=run_id,
                    **detail,
                )
            )
        self.conn.execute(insert(events), rows)
        self.void_intents([d.job.intent_id for d in done if d.job.intent_id is not None])
        self.fold_usage(account_id)

    # --- reconcile runs (a running row is also the account's lock) -------------------------------

    def start_run(self, account_id: int, now: datetime) -> int:
        return self.conn.execute(
            insert(reconcile_runs).values(
                account_id=account_id,
                status=RunStatus.RUNNING,
                applied=True,
                actor=self._ledger.actor,
                pid=self._ledger.pid,
                started_at=now,
                heartbeat_at=now,
                counts={},
            )
        ).inserted_primary_key[0]

    def abandon_run(self, account_id: int, run_id: int, why: str, now: datetime) -> None:
        """A running row whose process is gone: marked ``abandoned``, so its lock is free."""
        self.conn.execute(
            update(reconcile_runs)
            .where(reconcile_runs.c.id == run_id)
            .values(status=RunStatus.ABANDONED, finished_at=now, error=f"abandoned: {why}")
        )
        self._event(Action.RECONCILE_ABANDONED, account_id=account_id, run_id=run_id, reason=why)

    def heartbeat(self, run_id: int) -> None:
        self.conn.execute(update(reconcile_runs).where(reconcile_runs.c.id == run_id).values(heartbeat_at=utcnow()))

    def finish_run(
        self, run_id: int, status: RunStatus, *, listed: int, counts: dict[str, int], outcome: str, error: str | None
    ) -> None:
        now = utcnow()
        self.conn.execute(
            update(reconcile_runs)
            .where(reconcile_runs.c.id == run_id)
            .values(
                status=status,
                finished_at=now,
                heartbeat_at=now,
                listed=listed,
                counts=counts,
                outcome=outcome[:255],
                error=None if error is None else error[:2000],
            )
        )

    # --- the audit log's own upkeep -------------------------------------------------------------

    def prune_events(self, before: datetime, up_to_id: int) -> int:
        """Remove events older than ``before`` up to ``up_to_id`` (an archive holds them already)."""
        return self.conn.execute(events.delete().where(events.c.at < before, events.c.id <= up_to_id)).rowcount

    def import_events(self, rows: Sequence[dict[str, Any]]) -> tuple[int, int]:
        """Events read back from an archive (``db import-events``): (imported, already present).
        Each names its account; the file row is found again by the provider's id."""
        if not rows:
            return 0, 0
        known = {name: id_ for name, (id_, _) in self.accounts().items()}
        if unknown := sorted({r["account"] for r in rows if r["account"] and r["account"] not in known}):
            raise UsageError(
                f"the archive names accounts this ledger does not know ({', '.join(unknown)}); nothing was imported"
            )
        first, last = min(r["at"] for r in rows), max(r["at"] for r in rows)
        present = {
            (at, actor, pid, action, file_id or "", json.dumps(detail, sort_keys=True))
            for at, actor, pid, action, file_id, detail in self.conn.execute(
                select(
                    events.c.at, events.c.actor, events.c.pid, events.c.action, events.c.file_id, events.c.detail
                ).where(events.c.at >= first, events.c.at <= last)
            )
        }
        pks = {
            (a, f): pk
            for pk, a, f in self.conn.execute(
                select(files.c.id, files.c.account_id, files.c.file_id).where(
                    files.c.file_id.in_([r["file_id"] for r in rows if r["file_id"]])
                )
            )
        }
        fresh = []
        for r in rows:
            key = (
                r["at"],
                r["actor"],
                r["pid"],
                r["action"],
                r["file_id"] or "",
                json.dumps(r["detail"], sort_keys=True),
            )
            if key in present:
                continue
            present.add(key)
            account_id = known.get(r["account"]) if r["account"] else None
            fresh.append(
                {
                    "at": r["at"],
                    "account_id": account_id,
                    "file_pk": pks.get((account_id, r["file_id"])),
                    "file_id": r["file_id"] or None,
                    "action": r["action"],
                    "actor": r["actor"],
                    "pid": r["pid"],
                    "detail": r["detail"],
                }
            )
        if fresh:
            self.conn.execute(insert(events), fresh)
        return len(fresh), len(rows) - len(fresh)


class Stage:
    """One reconcile's staged listing, and the diff against the ledger, in SQL.

    Memory does not grow with the account: the ledger's side is copied into a TEMP table before
    the listing (:meth:`snapshot`), the listing goes in page by page (:meth:`add_page`), and the
    diff is a join of the two, of which Python sees only the rows that need its judgement (files
    the ledger does not know, and known ones whose status, size, name or expiry says something).
    The categories that grow with the listing stay in the table (:meth:`mark`, :meth:`rows`).

    Nothing reads the diff before :meth:`finish` says the listing was read to its end; the tables
    live on this stage's connection alone, so neither another run nor another process can see
    them, and they go when it closes, however the run ends.
    """

    CHUNK = 5000

    def __init__(self, ledger: Ledger, engine: Engine, account_id: int | None, provider: str) -> None:
        import secrets

        self._ledger = ledger
        self.account_id = account_id
        self.provider = provider
        self.tracked, self.listed_files = staging_tables(secrets.token_hex(6))
        self.listed = 0
        self.pages = 0
        self.complete = False
        self._marks: dict[str, list[int]] = {}
        self._conn: Connection | None = None
        with self._errors():
            self._conn = engine.connect()
            with self._conn.begin():
                self.tracked.create(self._conn)
                self.listed_files.create(self._conn)

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except IntegrityError as e:
            raise LedgerConflict(f"ledger error: {db_message(e)}") from None
        except SQLAlchemyError as e:
            raise LedgerError(f"ledger error: {db_message(e)}") from None

    @property
    def conn(self) -> Connection:
        if self._conn is None:
            raise LedgerError("this reconcile's staged listing is closed; run the reconcile again")
        return self._conn

    def close(self) -> None:
        """Drop the staging, connection and all (closing it alone would: an unpooled one ends)."""
        self._ledger._stages.discard(self)
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            # Dropped here rather than left to the session's end, which PostgreSQL finishes only
            # some time after the client has gone.
            with conn.begin():
                self.listed_files.drop(conn, checkfirst=False)
                self.tracked.drop(conn, checkfirst=False)
        except SQLAlchemyError:
            conn.invalidate()  # then the connection itself goes, and the tables with it
        finally:
            with contextlib.suppress(SQLAlchemyError):
                conn.close()

    # --- filling it ---------------------------------------------------------------------------

    def snapshot(self, lists_purpose: Callable[[str], bool]) -> list[Tracked]:
        """Copy the ledger's side, as it stands before the listing, into the stage: the account's
        tracked rows of the purposes the listing can show (Z.AI lists four of its seven). Returns
        the pending and active rows of the others, which no listing can judge (few: each such
        purpose has a file-count limit of its own)."""
        if self.account_id is None:  # a ledger that has never seen the account
            return []
        where = _tracked(self.account_id)
        with self._errors(), self.conn.begin():
            purposes = [p for (p,) in self.conn.execute(select(files.c.purpose).where(where).distinct())]
            shown = [p for p in purposes if lists_purpose(p)]
            columns = (
                "ledger_id",
                "file_id",
                "filename",
                "bytes",
                "status",
                "created_at",
                "expires_at",
                "purpose",
                "sha256",
            )
            rows = select(
                files.c.id,
                files.c.file_id,
                files.c.filename,
                files.c.bytes,
                files.c.status,
                files.c.created_at,
                files.c.expires_at,
                files.c.purpose,
                files.c.sha256,
            ).where(where)
            self.conn.execute(self.tracked.insert().from_select(columns, rows.where(files.c.purpose.in_(shown))))
            hidden = [p for p in purposes if p not in shown]
            if not hidden:
                return []
            unseen = rows.where(files.c.purpose.in_(hidden), files.c.status.in_([Status.PENDING, Status.ACTIVE]))
            return [Tracked(*r) for r in self.conn.execute(unseen.order_by(files.c.id))]

    def add_page(self, page: Sequence[RemoteFile]) -> str | None:
        """One page of the listing, in the order listed. Returns the id of a file listed before (on
        this page or an earlier one), and stages nothing of the page then: the listing cannot be
        trusted."""
        if self.complete:
            raise LedgerError("the staged listing is complete; a page cannot be added to it")
        self.pages += 1
        if not page:
            return None
        rows = [
            {
                "seq": self.listed + i,
                "id": rf.id,
                "filename": rf.filename,
                "bytes": rf.bytes,
                "created_at": rf.created_at,
                "purpose": rf.purpose,
                "status": rf.status,
                "expires_at": rf.expires_at,
                "generated": rf.generated,
                "sha256": rf.sha256,
            }
            for i, rf in enumerate(page)
        ]
        try:
            with self.conn.begin():
                self.conn.execute(insert(self.listed_files), rows)
        except IntegrityError:
            return self._repeated([rf.id for rf in page])
        except SQLAlchemyError as e:
            raise LedgerError(f"ledger error: {db_message(e)}") from None
        self.listed += len(page)
        return None

    def _repeated(self, ids: list[str]) -> str:
        seen: set[str] = set()
        for file_id in ids:
            if file_id in seen:
                return file_id
            seen.add(file_id)
        with self._errors(), self.conn.begin():
            for start in range(0, len(ids), 1000):
                query = select(self.listed_files.c.id).where(self.listed_files.c.id.in_(ids[start : start + 1000]))
                if (found := self.conn.execute(query.limit(1)).scalar()) is not None:
                    return str(found)
        return ids[0]  # refused, yet not found again: still a listing that cannot be trusted

    def finish(self) -> None:
        """The listing was read to its end: from now on the diff may be read."""
        if self.conn.dialect.name == "postgresql":
            # TEMP tables are never analyzed by autovacuum: without statistics the planner may
            # take a million rows for a few.
            with self._errors(), self.conn.begin():
                self.conn.exec_driver_sql(f"ANALYZE {self.tracked.name}")
                self.conn.exec_driver_sql(f"ANALYZE {self.listed_files.name}")
        self.complete = True

    def _diff(self) -> Connection:
        if not self.complete:
            raise LedgerError("the staged listing did not complete; it cannot be compared with the ledger")
        return self.conn

    # --- reading the diff -------------------------------------------------------------------------

    def _remote(self, row: Any) -> RemoteFile:
        from .providers import RemoteFile

        return RemoteFile(
            id=row.id,
            filename=row.filename,
            bytes=row.bytes,
            created_at=row.created_at,
            purpose=row.purpose,
            status=row.status,
            expires_at=row.expires_at,
            generated=bool(row.generated),
            sha256=row.sha256,
        )

    @staticmethod
    def _tracked_row(row: Any) -> Tracked:
        return Tracked(
            row.ledger_id,
            row.file_id,
            row.t_filename,
            row.t_bytes,
            row.t_status,
            row.t_created_at,
            row.t_expires_at,
            row.t_purpose,
        )

    def _tracked_columns(self) -> list[Any]:
        t = self.tracked.c
        return [
            t.ledger_id,
            t.file_id,
            t.filename.label("t_filename"),
            t.bytes.label("t_bytes"),
            t.status.label("t_status"),
            t.created_at.label("t_created_at"),
            t.expires_at.label("t_expires_at"),
            t.purpose.label("t_purpose"),
        ]

    def seqs_of(self, file_ids: Iterable[str]) -> dict[str, int]:
        """Where in the listing each of these files was listed (those it showed)."""
        ids = list(file_ids)
        out: dict[str, int] = {}
        conn, lf = self._diff(), self.listed_files.c
        with self._errors(), conn.begin():
            for start in range(0, len(ids), 1000):
                query = select(lf.id, lf.seq).where(lf.id.in_(ids[start : start + 1000]))
                out.update({file_id: seq for file_id, seq in conn.execute(query)})
        return out

    def elsewhere(self) -> dict[int, str]:
        """Listed files the ledger tracks under another account of the provider: listing position ->
        that account's name."""
        conn, lf = self._diff(), self.listed_files.c
        query = (
            select(lf.seq, accounts.c.name)
            .select_from(accounts)
            .join(files, files.c.account_id == accounts.c.id)
            .join(self.listed_files, lf.id == files.c.file_id)
            .where(accounts.c.provider == self.provider, files.c.status.in_(LISTED), files.c.file_id.is_not(None))
        )
        if self.account_id is not None:
            query = query.where(accounts.c.id != self.account_id)
        with self._errors(), conn.begin():
            return dict(conn.execute(query).all())

    def pending(self) -> list[Tracked]:
        t = self.tracked.c
        conn = self._diff()
        with self._errors(), conn.begin():
            rows = conn.execute(
                select(
                    t.ledger_id,
                    t.file_id,
                    t.filename,
                    t.bytes,
                    t.status,
                    t.created_at,
                    t.expires_at,
                    t.purpose,
                    t.sha256,
                )
                .where(t.status == Status.PENDING)
                .order_by(t.ledger_id)
            )
            return [Tracked(*r) for r in rows]

    def candidates(self, now: datetime) -> Iterator[tuple[int, RemoteFile, Tracked | None]]:
        """The listed files that need a look, in listing order, each with the ledger row it is (or
        None): those the ledger does not know, and known ones ``missing`` or ``unclaimed``, of
        another size or name, or past their expiry. The rest, known and as recorded, only count."""
        conn, lf, t = self._diff(), self.listed_files.c, self.tracked.c
        join = and_(t.file_id == lf.id, t.status != Status.PENDING)
        worth_a_look = or_(
            t.ledger_id.is_(None),
            t.status.in_((Status.MISSING, Status.UNCLAIMED)),
            and_(lf.bytes.is_not(None), lf.bytes != t.bytes),
            and_(lf.filename != "", lf.filename != t.filename),
            and_(t.expires_at.is_not(None), t.expires_at <= now),
        )
        base = select(self.listed_files, *self._tracked_columns()).select_from(
            self.listed_files.outerjoin(self.tracked, join)
        )
        after = -1
        while True:
            query = base.where(lf.seq > after, worth_a_look).order_by(lf.seq).limit(self.CHUNK)
            with self._errors(), conn.begin():
                rows = conn.execute(query).all()
            self.flush_marks()  # between chunks: no cursor is open on the table then
            for row in rows:
                yield row.seq, self._remote(row), None if row.ledger_id is None else self._tracked_row(row)
            if len(rows) < self.CHUNK:
                return
            after = rows[-1].seq

    def not_listed(self) -> Iterator[Tracked]:
        """The tracked files (with a provider id, neither pending nor missing) the listing left out."""
        conn, lf, t = self._diff(), self.listed_files.c, self.tracked.c
        absent = ~exists().where(lf.id == t.file_id)
        columns = (t.ledger_id, t.file_id, t.filename, t.bytes, t.status, t.created_at, t.expires_at, t.purpose)
        after = -1
        while True:
            query = (
                select(*columns)
                .where(
                    t.ledger_id > after,
                    t.file_id.is_not(None),
                    t.status.not_in((Status.PENDING, Status.MISSING)),
                    absent,
                )
                .order_by(t.ledger_id)
                .limit(self.CHUNK)
            )
            with self._errors(), conn.begin():
                rows = conn.execute(query).all()
            yield from (Tracked(*r) for r in rows)
            if len(rows) < self.CHUNK:
                return
            after = rows[-1].ledger_id

    def expected(
        self,
        statuses: Sequence[str],
        *,
        now: datetime,
        created_by: datetime,
        created_before: datetime | None = None,
        exclude: Collection[str] = (),
    ) -> tuple[int, int]:
        """(how many, how many of them listed): the tracked files of ``statuses`` the provider should
        list now, not past their expiry, created by ``created_by`` (and before ``created_before``),
        not among ``exclude`` (deletes a dead run sent)."""
        conn, lf, t = self._diff(), self.listed_files.c, self.tracked.c
        query = (
            select(func.count(), func.count(lf.seq))
            .select_from(self.tracked.outerjoin(self.listed_files, lf.id == t.file_id))
            .where(
                t.status.in_(list(statuses)),
                t.file_id.is_not(None),
                t.expires_at.is_(None) | (t.expires_at > now),
                t.created_at <= created_by,
            )
        )
        if created_before is not None:
            query = query.where(t.created_at < created_before)
        if exclude:
            query = query.where(t.file_id.not_in(list(exclude)))
        with self._errors(), conn.begin():
            n, present = conn.execute(query).one()
        return int(n), int(present)

    # --- the categories kept here -------------------------------------------------------------------

    def mark(self, seq: int, category: str) -> None:
        """File ``seq`` of the listing belongs to ``category`` (written between chunks, in batches)."""
        self._marks.setdefault(category, []).append(seq)

    def flush_marks(self) -> None:
        marks, self._marks = self._marks, {}
        if not marks:
            return
        lf = self.listed_files.c
        with self._errors(), self.conn.begin():
            for category, seqs in marks.items():
                for start in range(0, len(seqs), 1000):
                    self.conn.execute(
                        update(self.listed_files)
                        .where(lf.seq.in_(seqs[start : start + 1000]))
                        .values(category=literal(category))
                    )

    def _by_category(self, category: str, columns: Sequence[Any], join: Any = None) -> Iterator[Any]:
        self.flush_marks()
        conn, lf = self._diff(), self.listed_files.c
        source = self.listed_files if join is None else join
        after = -1
        while True:
            query = (
                select(*columns)
                .select_from(source)
                .where(lf.category == category, lf.seq > after)
                .order_by(lf.seq)
                .limit(self.CHUNK)
            )
            with self._errors(), conn.begin():
                rows = conn.execute(query).all()
            yield from rows
            if len(rows) < self.CHUNK:
                return
            after = rows[-1].seq

    def rows(self, category: str) -> Iterator[RemoteFile]:
        """The listed files of a category, in listing order, read back a chunk at a time."""
        for row in self._by_category(category, [self.listed_files]):
            yield self._remote(row)

    def pairs(self, category: str) -> Iterator[tuple[Tracked, RemoteFile]]:
        """The listed files of a category that the ledger tracks, with their ledger rows."""
        lf, t = self.listed_files.c, self.tracked.c
        join = self.listed_files.join(self.tracked, and_(t.file_id == lf.id, t.status != Status.PENDING))
        for row in self._by_category(category, [self.listed_files, *self._tracked_columns()], join):
            yield self._tracked_row(row), self._remote(row)
