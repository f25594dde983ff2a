"""Alembic glue: create, back up and upgrade the ledger's schema.

Imported only when the ledger is not at :data:`filekeeper.schema.SCHEMA_HEAD`, or by the
``db`` commands, so that everyday commands do not pay for importing alembic. It depends on
:mod:`filekeeper.engine` alone: opening a database needs no ledger.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, text

from .config import Settings
from .engine import WRITE, cannot_create, database_errors, make_engine, new_build, owner_only, prepare, read_revision
from .errors import LedgerError

# Any constant will do; it only has to be the same for every filekeeper process.
_PG_MIGRATION_LOCK = 0x66_6B_6D_69  # "fkmi"


def script_location() -> Path:
    """The migrations folder: inside the installed package, or beside it in a checkout."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "migrations", package.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise LedgerError(f"filekeeper's migrations are missing (looked in {package}); reinstall filekeeper")


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(script_location()))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head() -> str:
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    if len(heads) != 1:
        raise LedgerError(f"filekeeper's migrations have {len(heads)} heads; this build is broken")
    return heads[0]


def known_revisions() -> set[str]:
    return {s.revision for s in ScriptDirectory.from_config(alembic_config()).walk_revisions()}


@dataclass(frozen=True)
class Status:
    current: str | None
    head: str

    @property
    def state(self) -> str:
        if self.current == self.head:
            return "current"
        if self.current is None:
            return "empty"
        if self.current not in known_revisions():
            return "newer"
        return "behind"


def status(settings: Settings) -> Status:
    """The ledger's revision against this filekeeper's head; reads only, creates nothing."""
    path = settings.ledger_path
    if path is not None and not path.exists():
        if why := cannot_create(path):
            raise LedgerError(f"there is no ledger at {path}, and none can be made there: {why}")
        return Status(None, head())
    engine = prepare(settings)
    try:
        with database_errors(settings, "read"), engine.connect() as conn:
            return Status(read_revision(conn), head())
    finally:
        engine.dispose()


def upgrade(settings: Settings) -> tuple[Status, Status, Path | None]:
    """``filekeeper db upgrade``: the status before and after, and the backup made if any."""
    path = settings.ledger_path
    engine = prepare(settings)
    try:
        with database_errors(settings, "upgrade"):
            if path is not None and not path.exists() and create_sqlite(path):
                before = Status(None, head())
            else:  # there was one, or another process made it meanwhile
                with engine.connect() as conn:
                    before = Status(read_revision(conn), head())
            backup = upgrade_to_head(engine, settings.ledger_path)
            with engine.connect() as conn:
                after = Status(read_revision(conn), head())
    finally:
        engine.dispose()
    return before, after, backup


def create_sqlite(path: Path) -> bool:
    """Make a new SQLite ledger at ``path`` whole, or keep the one another process made first;
    whether this process's became the ledger.

    SQLite creates a database's file empty and fills it at the first write, and an empty file
    is refused as a lost ledger: processes starting at once on a fresh home refused the one
    another was making. So the ledger is built under a name of its own beside ``path`` (owner-only,
    at the schema's head, in WAL mode) and linked into place only when whole. A symlink, even to
    a file not there yet, is followed: the ledger is made where it points.
    """
    path = Path(os.path.realpath(path))
    build = new_build(path)
    try:
        try:
            engine = make_engine(f"sqlite:///{build}", pooled=False)
            try:
                with engine.connect() as conn:
                    conn.exec_driver_sql("PRAGMA user_version").scalar()  # creates the file
                    owner_only(build)  # before anything is in it: it names every file and who sent it
                upgrade_to_head(engine, None)
            finally:
                engine.dispose()
            # Last, so that the mode is in the header and nothing is left in a -wal file when it closes.
            wal = sqlite3.connect(build)
            try:
                wal.execute("PRAGMA journal_mode = WAL")
            finally:
                wal.close()
            return _put_in_place(build, path)
        finally:
            for leftover in (build, *(build.with_name(build.name + s) for s in ("-journal", "-wal", "-shm"))):
                leftover.unlink(missing_ok=True)
    except (OSError, sqlite3.Error) as e:
        raise LedgerError(f"cannot create the ledger {path}: {getattr(e, 'strerror', None) or e}") from None


def _put_in_place(build: Path, path: Path) -> bool:
    try:
        os.link(build, path)  # fails, rather than replace it, if another process's is there
    except FileExistsError:
        return False  # it stays: processes may be using it already
    except OSError:
        # A filesystem without hard links: a rename, which would replace one made a moment ago.
        if path.exists():
            return False
        build.rename(path)
    return True


def _refuse_newer(revision: str | None) -> None:
    if revision is not None and revision not in known_revisions():
        raise LedgerError(
            f"the ledger is at schema revision {revision}, written by a newer filekeeper "
            f"(this one knows up to {head()}); upgrade filekeeper to use it"
        )


def backup_sqlite(path: Path, revision: str) -> Path:
    """A consistent copy of the ledger (WAL included), taken with SQLite's backup API."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    target = path.with_name(f"{path.name}.backup-{revision}-{stamp}")
    src = sqlite3.connect(path)
    try:
        dst = sqlite3.connect(target)
        owner_only(target)  # as private as the ledger it copies
        try:
            src.backup(dst)
        finally:
            dst.close()
    finally:
        src.close()
    return target


def upgrade_to_head(engine: Engine, sqlite_path: Path | None) -> Path | None:
    """Bring the ledger to the newest schema; returns the backup made, if any.

    Runs under the database's write lock and re-reads the revision inside it, so that two
    processes meeting an empty or old ledger at once upgrade it exactly once.
    """
    with engine.connect() as conn:
        conn.execution_options(**{WRITE: True})
        with conn.begin():
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
            revision = read_revision(conn)
            _refuse_newer(revision)
            if revision == head():
                return None
            backup = None
            if revision is not None and sqlite_path is not None:
                backup = backup_sqlite(sqlite_path, revision)
            command.upgrade(alembic_config(conn), "head")
            return backup
