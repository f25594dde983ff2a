"""The ledger: every file filekeeper has reserved, uploaded or deleted, and what happened to it.

One ``Ledger`` wraps one SQLAlchemy engine. Writes that must not race (reservations, account
creation) run in a *write* transaction: ``BEGIN IMMEDIATE`` on SQLite, and a row lock
(``SELECT ... FOR UPDATE``) on databases that have them.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, Row, Select, create_engine, func, insert, inspect, select, text, update
from sqlalchemy import event as sa_event
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from .config import Account, Settings
from .errors import LedgerError, UsageError
from .schema import HELD, SCHEMA_HEAD, accounts, events, files, utcnow

SQLITE_MAGIC = b"SQLite format 3\x00"
_WRITE = "filekeeper_write"


@dataclass(frozen=True)
class FileRecord:
    """One ledger row, as the library and ``--json`` show it."""

    ledger_id: int
    id: str | None
    provider: str
    account: str
    filename: str
    bytes: int
    sha256: str | None
    purpose: str
    status: str
    created_at: datetime
    expires_at: datetime | None
    deleted_at: datetime | None
    reused: bool = False

    @classmethod
    def from_row(cls, row: Row[Any], *, reused: bool = False) -> FileRecord:
        """From a row of :data:`RECORDS` (a files row joined to its account)."""
        m = row._mapping
        return cls(
            ledger_id=m["id"],
            id=m["file_id"],
            provider=m["provider"],
            account=m["account"],
            filename=m["filename"],
            bytes=m["bytes"],
            sha256=m["sha256"],
            purpose=m["purpose"],
            status=m["status"],
            created_at=m["created_at"],
            expires_at=m["expires_at"],
            deleted_at=m["deleted_at"],
            reused=reused,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "provider": self.provider,
            "account": self.account,
            "filename": self.filename,
            "bytes": self.bytes,
            "sha256": self.sha256,
            "purpose": self.purpose,
            "status": self.status,
            "created_at": iso(self.created_at),
            "expires_at": iso(self.expires_at),
            "deleted_at": iso(self.deleted_at),
            "ledger_id": self.ledger_id,
            "reused": self.reused,
        }


def iso(d: datetime | None) -> str | None:
    """ISO 8601 UTC with a Z, as every JSON output shows times."""
    return None if d is None else d.isoformat().replace("+00:00", "Z")


#: ledger records: a files row with its account's name and provider
RECORDS: Select[Any] = select(files, accounts.c.name.label("account"), accounts.c.provider).join(
    accounts, files.c.account_id == accounts.c.id
)


def actor() -> str:
    """user@host of this process, for the audit log."""
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry, as in some containers
        user = f"uid{os.getuid()}" if hasattr(os, "getuid") else "unknown"
    return f"{user}@{socket.gethostname()}"


def make_engine(url: str) -> Engine:
    is_sqlite = url.startswith("sqlite")
    try:
        # pre_ping: a server restart or a dropped idle connection is replaced, not handed out.
        engine = create_engine(url, connect_args={"timeout": 30} if is_sqlite else {}, pool_pre_ping=not is_sqlite)
    except ModuleNotFoundError as e:
        raise LedgerError(
            f"the database driver for {url.split(':', 1)[0]} is not installed ({e.name}); "
            'for PostgreSQL: pip install "filekeeper[postgres]"'
        ) from None
    except Exception as e:
        raise UsageError(f"FILEKEEPER_DATABASE_URL is not a usable database URL: {e}") from None
    if is_sqlite:
        sa_event.listen(engine, "connect", _sqlite_connect)
        sa_event.listen(engine, "begin", _sqlite_begin)
    return engine


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # Take transaction control away from the sqlite3 module so that _sqlite_begin decides
    # between BEGIN and BEGIN IMMEDIATE (the documented SQLAlchemy recipe).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout = 30000")
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.execute("PRAGMA synchronous = NORMAL")
    cursor.close()


def _sqlite_begin(conn: Any) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(_WRITE) else "BEGIN")


def check_sqlite_file(path: Path) -> None:
    """Refuse a file that is not a SQLite database before SQLite can touch it."""
    try:
        with path.open("rb") as f:
            head = f.read(len(SQLITE_MAGIC))
    except FileNotFoundError:
        return
    except OSError as e:
        raise LedgerError(f"cannot read the ledger {path}: {e.strerror}") from None
    if head and head != SQLITE_MAGIC:
        raise LedgerError(
            f"the ledger {path} is not a SQLite database (corrupt or not a ledger); it was left untouched"
        )


def read_revision(conn: Connection) -> str | None:
    """The ledger's schema revision; None for an empty database. Refuses a foreign database."""
    if conn.dialect.name == "sqlite":
        # The everyday case, answered without the inspector: one query on a current ledger.
        found = conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE name = 'alembic_version'").first()
        if found is not None:
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    if not inspect(conn).has_table("alembic_version"):
        tables = inspect(conn).get_table_names()
        if tables:
            raise LedgerError(f"the database holds tables ({', '.join(tables[:5])}) but is not a filekeeper ledger")
        return None
    return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


@contextmanager
def database_errors(settings: Settings, doing: str) -> Iterator[None]:
    """Turn the database's own exceptions into one clear LedgerError naming the ledger."""
    try:
        yield
    except SQLAlchemyError as e:
        raise LedgerError(f"cannot {doing} the ledger {_where(settings)}: {_db_message(e)}") from None


def prepare(settings: Settings) -> Engine:
    """An engine for the ledger, after checking that a SQLite file is one and its folder exists."""
    path = settings.ledger_path
    if path is not None:
        check_sqlite_file(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise LedgerError(f"cannot create {path.parent}: {e.strerror}") from None
    return make_engine(settings.database_url)


def open_ledger(settings: Settings, *, upgrade: bool = True) -> Ledger:
    """Open the ledger, creating or upgrading it to the current schema on first use."""
    ledger = Ledger(prepare(settings))
    try:
        with database_errors(settings, "open"), ledger.engine.connect() as conn:
            revision = read_revision(conn)
            conn.rollback()  # end the read transaction: the journal mode cannot change inside one
            if conn.dialect.name == "sqlite":
                _use_wal(conn, settings)
        if revision != SCHEMA_HEAD and upgrade:
            from .migrate import upgrade_to_head  # alembic is imported only when there is work for it

            with database_errors(settings, "upgrade"):
                upgrade_to_head(ledger.engine, settings.ledger_path)
    except BaseException:
        ledger.close()
        raise
    return ledger


def _use_wal(conn: Connection, settings: Settings) -> None:
    # WAL lets readers work while an upload holds the write lock. The mode is stored in the
    # file, so it is set once, and only on a database known to be ours (it rewrites the header).
    raw = conn.connection.dbapi_connection
    assert raw is not None
    try:
        if raw.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            raw.execute("PRAGMA journal_mode = WAL")
    except sqlite3.Error as e:
        raise LedgerError(f"cannot open the ledger {_where(settings)}: {e}") from None


def _where(settings: Settings) -> str:
    return str(settings.ledger_path) if settings.ledger_path else "(FILEKEEPER_DATABASE_URL)"


def _db_message(e: SQLAlchemyError) -> str:
    orig = getattr(e, "orig", None)
    return str(orig or e).strip().splitlines()[0]


class Ledger:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.pid = os.getpid()

    @cached_property
    def actor(self) -> str:
        # Computed on the first event, not at open: read-only commands never need it.
        return actor()

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def transaction(self, *, write: bool = False) -> Iterator[Connection]:
        """A transaction, committed on success. ``write`` takes the write lock at once
        (SQLite ``BEGIN IMMEDIATE``), for read-check-write sequences that must not race."""
        try:
            with self.engine.connect() as conn:
                if write:
                    conn.execution_options(**{_WRITE: True})
                with conn.begin():
                    yield conn
        except IntegrityError:
            raise
        except SQLAlchemyError as e:
            raise LedgerError(f"ledger error: {_db_message(e)}") from None

    def event(
        self,
        conn: Connection,
        action: str,
        *,
        account_id: int | None,
        file_pk: int | None = None,
        file_id: str | None = None,
        **detail: Any,
    ) -> None:
        self.events(conn, [self.event_row(action, account_id=account_id, file_pk=file_pk, file_id=file_id, **detail)])

    def event_row(
        self,
        action: str,
        *,
        account_id: int | None,
        file_pk: int | None = None,
        file_id: str | None = None,
        **detail: Any,
    ) -> dict[str, Any]:
        """An audit event, ready for :meth:`events` (which writes many in one statement)."""
        return {
            "at": utcnow(),
            "account_id": account_id,
            "file_pk": file_pk,
            "file_id": file_id,
            "action": action,
            "actor": self.actor,
            "pid": self.pid,
            "detail": detail,
        }

    @staticmethod
    def events(conn: Connection, rows: list[dict[str, Any]]) -> None:
        if rows:
            conn.execute(insert(events), rows)

    @staticmethod
    def record(conn: Connection, ledger_id: int) -> FileRecord:
        return FileRecord.from_row(conn.execute(RECORDS.where(files.c.id == ledger_id)).one())

    # --- accounts -------------------------------------------------------------------------

    def ensure_account(self, account: Account) -> int:
        """The ledger id of an account, recording it (or a change of key or URL) as it is first used."""
        fp = account.key_fingerprint()
        for attempt in range(2):
            try:
                with self.transaction(write=True) as conn:
                    row = conn.execute(
                        select(accounts).where(accounts.c.name == account.name).with_for_update()
                    ).first()
                    if row is None:
                        account_id = conn.execute(
                            insert(accounts).values(
                                name=account.name,
                                provider=account.provider,
                                base_url=account.base_url,
                                key_fingerprint=fp,
                                created_at=utcnow(),
                            )
                        ).inserted_primary_key[0]
                        self.event(
                            conn,
                            "account_added",
                            account_id=account_id,
                            provider=account.provider,
                            base_url=account.base_url,
                            key_fingerprint=fp,
                        )
                        return account_id
                    if row.provider != account.provider:
                        raise UsageError(
                            f"account {account.name!r} is recorded in the ledger as provider {row.provider!r}, "
                            f"but the config says {account.provider!r}; use a new account name"
                        )
                    if (row.base_url, row.key_fingerprint) != (account.base_url, fp):
                        self.event(
                            conn,
                            "account_changed",
                            account_id=row.id,
                            base_url={"old": row.base_url, "new": account.base_url},
                            key_fingerprint={"old": row.key_fingerprint, "new": fp},
                        )
                        conn.execute(
                            update(accounts)
                            .where(accounts.c.id == row.id)
                            .values(base_url=account.base_url, key_fingerprint=fp)
                        )
                    return row.id
            except IntegrityError:
                if attempt:  # another process created it between our read and insert
                    raise
        raise AssertionError("unreachable")

    def accounts(self) -> dict[str, tuple[int, str]]:
        """Every account the ledger has seen: name -> (ledger id, provider)."""
        with self.transaction() as conn:
            rows = conn.execute(select(accounts.c.name, accounts.c.id, accounts.c.provider))
            return {name: (id_, provider) for name, id_, provider in rows}

    # --- files ----------------------------------------------------------------------------

    def activate(self, ledger_id: int, *, file_id: str, size: int, sha256: str, **detail: Any) -> FileRecord:
        """A reservation's upload landed: it is ``active`` under the provider's id."""
        with self.transaction(write=True) as conn:
            conn.execute(
                update(files)
                .where(files.c.id == ledger_id)
                .values(file_id=file_id, bytes=size, sha256=sha256, status="active")
            )
            record = self.record(conn, ledger_id)
            self.event(
                conn,
                "upload",
                account_id=_account_of(conn, ledger_id),
                file_pk=ledger_id,
                file_id=file_id,
                bytes=size,
                sha256=sha256,
                **detail,
            )
            return record

    def fail(self, ledger_id: int, error: str, **detail: Any) -> FileRecord:
        with self.transaction(write=True) as conn:
            conn.execute(update(files).where(files.c.id == ledger_id).values(status="failed"))
            self.event(
                conn, "upload_failed", account_id=_account_of(conn, ledger_id), file_pk=ledger_id, error=error, **detail
            )
            return self.record(conn, ledger_id)

    def mark_deleted(self, account_id: int, file_id: str, *, already_gone: bool) -> FileRecord | None:
        """Record a delete at the provider; the event is written even for ids the ledger never saw."""
        with self.transaction(write=True) as conn:
            ledger_id = conn.execute(
                select(files.c.id).where(files.c.account_id == account_id, files.c.file_id == file_id)
            ).scalar()
            if ledger_id is not None:
                conn.execute(
                    update(files)
                    .where(files.c.id == ledger_id, files.c.status != "deleted")
                    .values(status="deleted", deleted_at=utcnow())
                )
            self.event(
                conn,
                "delete",
                account_id=account_id,
                file_pk=ledger_id,
                file_id=file_id,
                already_gone=already_gone,
                known=ledger_id is not None,
            )
            return None if ledger_id is None else self.record(conn, ledger_id)

    def files(
        self,
        *,
        account_ids: Iterable[int] | None = None,
        statuses: Sequence[str] | None = None,
    ) -> list[FileRecord]:
        query = RECORDS.order_by(files.c.created_at, files.c.id)
        if account_ids is not None:
            query = query.where(files.c.account_id.in_(list(account_ids)))
        if statuses:
            query = query.where(files.c.status.in_(list(statuses)))
        with self.transaction() as conn:
            return [FileRecord.from_row(r) for r in conn.execute(query)]

    def find(self, account_id: int, file_id: str) -> FileRecord | None:
        with self.transaction() as conn:
            row = conn.execute(RECORDS.where(files.c.account_id == account_id, files.c.file_id == file_id)).first()
            return None if row is None else FileRecord.from_row(row)

    def usage(self, account_ids: Iterable[int]) -> dict[int, tuple[int, int]]:
        """Files and bytes held per account: ``active`` and ``pending`` rows."""
        ids = list(account_ids)
        with self.transaction() as conn:
            found = {a: (int(n), int(b)) for a, n, b in conn.execute(usage_query(ids))}
        return {a: found.get(a, (0, 0)) for a in ids}


def usage_query(account_ids: Sequence[int]) -> Select[Any]:
    return (
        select(files.c.account_id, func.count(), func.coalesce(func.sum(files.c.bytes), 0))
        .where(files.c.account_id.in_(account_ids), files.c.status.in_(HELD))
        .group_by(files.c.account_id)
    )


def _account_of(conn: Connection, ledger_id: int) -> int:
    return conn.execute(select(files.c.account_id).where(files.c.id == ledger_id)).scalar_one()
