"""The ledger's database engine: how it is created, checked and locked, before any table is read.

Both :mod:`filekeeper.ledger` (everyday use) and :mod:`filekeeper.migrate` (schema upgrades) start
here, so neither needs the other to open a database. Writes that must not race take the database's
write lock at once: ``BEGIN IMMEDIATE`` on SQLite (the execution option :data:`WRITE`), and a row
lock (``SELECT ... FOR UPDATE``) on databases that have them.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, create_engine, inspect, text
from sqlalchemy import event as sa_event
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from .errors import LedgerError, UsageError

if TYPE_CHECKING:
    from .config import Settings

SQLITE_MAGIC = b"SQLite format 3\x00"
#: execution option: this connection's transactions take the write lock when they begin
WRITE = "filekeeper_write"


def make_engine(url: str, *, pooled: bool = True) -> Engine:
    """``pooled=False``: every connection is opened for its user and really closed after, taking
    what lives only on it (a reconcile's TEMP tables) with it."""
    is_sqlite = url.startswith("sqlite")
    try:
        # pre_ping: a server restart or a dropped idle connection is replaced, not handed out.
        pool: dict[str, Any] = {"pool_pre_ping": not is_sqlite} if pooled else {"poolclass": NullPool}
        engine = create_engine(url, connect_args={"timeout": 30} if is_sqlite else {}, **pool)
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
    # On the driver itself: for a reservation this is where it waits for the lock, and whatever runs
    # after the lock is granted holds up every other writer (SQLAlchemy's statement machinery did).
    statement = "BEGIN IMMEDIATE" if conn.get_execution_options().get(WRITE) else "BEGIN"
    try:
        conn.connection.driver_connection.execute(statement)
    except sqlite3.Error as e:  # raised as SQLAlchemy's own, as a statement's error would be
        raise DBAPIError.instance(statement, None, e, sqlite3.Error) from None


#: a new ledger's build (see :func:`filekeeper.migrate.create_sqlite`) older than this was left by
#: a process that died making it: a build takes well under a second. By age, because the process
#: that made it may be in another container or on another host sharing the folder.
BUILD_STALE_AFTER = 3600.0


def new_build(path: Path) -> Path:
    """Where a new ledger for ``path`` is built: beside it, under a name no other process takes."""
    return path.with_name(f".{path.name}.new-{os.urandom(8).hex()}")


def sweep_builds(path: Path) -> None:
    """Remove what dead processes' builds of a new ledger left beside ``path`` (a killed build, or
    a second name of the ledger if the process died between linking it into place and cleaning up)."""
    prefix = f".{path.name}.new-"
    now = time.time()
    try:
        ledger = path.stat().st_ino
    except OSError:
        ledger = None
    with contextlib.suppress(OSError), os.scandir(path.parent) as entries:
        for entry in entries:
            if entry.name.startswith(prefix):
                with contextlib.suppress(OSError):  # gone meanwhile, or not ours to remove
                    st = entry.stat(follow_symlinks=False)
                    # A second name of the ledger itself goes at once: the ledger's writes keep its time new.
                    if st.st_ino == ledger or now - st.st_mtime > BUILD_STALE_AFTER:
                        os.unlink(entry.path)


def cannot_create(path: Path) -> str | None:
    """Why a new ledger could not be made at ``path`` (None: nothing says it could not), found
    without making anything: for the commands that only look (`db current`, `doctor`)."""
    folder = Path(os.path.realpath(path)).parent
    if path.is_symlink() and not folder.is_dir():  # the ledger is made where it points, in no new folder
        return f"{path} points into {folder}, which is not a folder"
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        return f"{folder} is not a folder"
    if not os.access(folder, os.W_OK | os.X_OK):  # a read-only filesystem says so even to root
        return f"{folder} cannot be written"
    return None


def check_sqlite_file(path: Path) -> None:
    """Refuse a file that is not a whole SQLite database before SQLite can touch it: SQLite would
    take an empty file for a new database, and a cut-off one for a smaller one."""
    try:
        with path.open("rb") as f:
            header = f.read(100)
            size = os.fstat(f.fileno()).st_size
    except FileNotFoundError:
        return
    except OSError as e:
        raise LedgerError(f"cannot read the ledger {path}: {e.strerror}") from None
    journal = path.with_name(path.name + "-journal")
    if journal.is_file() and journal.stat().st_size > 0:
        # A transaction that never finished (a process killed while creating the ledger leaves
        # it empty or half-written): SQLite puts the file back from its journal as it opens it,
        # so what it is can be told only then.
        return
    left = "it was left as it is; move it away to start a new ledger, or restore it from a backup"
    if size == 0:
        raise LedgerError(f"the ledger {path} is empty (0 bytes), not a ledger; {left}")
    if not header.startswith(SQLITE_MAGIC):
        raise LedgerError(f"the ledger {path} is not a SQLite database (corrupt or not a ledger); {left}")
    if len(header) < 100:
        raise LedgerError(f"the ledger {path} is truncated ({size} bytes); {left}")
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    # The page count in the header is valid only when the two change counters agree.
    if header[24:28] == header[92:96] and pages and size < pages * page_size:
        raise LedgerError(
            f"the ledger {path} is truncated ({size:,} bytes of the {pages * page_size:,} its header records); {left}"
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
        raise LedgerError(f"cannot {doing} the ledger {where(settings)}: {db_message(e)}") from None


def prepare(settings: Settings) -> Engine:
    """An engine for the ledger, after checking that a SQLite file is one and its folder exists
    (created for its owner only, if it does not)."""
    path = settings.ledger_path
    if path is not None:
        sweep_builds(Path(os.path.realpath(path)))  # where builds are made (see create_sqlite)
        check_sqlite_file(path)
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            raise LedgerError(f"cannot create {path.parent}: {e.strerror}") from None
    return make_engine(settings.database_url)


def owner_only(path: Path) -> None:
    """Make a file filekeeper created (the ledger, a backup, an archive) readable by its owner only."""
    with contextlib.suppress(OSError):  # a filesystem without modes (a share) keeps its own
        path.chmod(0o600)


def use_wal(conn: Connection, settings: Settings) -> None:
    """WAL lets readers work while an upload holds the write lock. The mode is stored in the
    file, so it is set once, and only on a database known to be ours (it rewrites the header)."""
    raw = conn.connection.dbapi_connection
    assert raw is not None
    try:
        if raw.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            raw.execute("PRAGMA journal_mode = WAL")
    except sqlite3.OperationalError as e:
        # The switch needs the file to itself and SQLite does not wait for it: with other
        # processes reading or writing a ledger still in rollback mode (one an older `db upgrade`
        # made), it is busy. That mode is as safe, only less concurrent: carry on in it, and the
        # next process to open the ledger when it is quiet switches it.
        if e.sqlite_errorcode != sqlite3.SQLITE_BUSY:
            raise LedgerError(f"cannot open the ledger {where(settings)}: {e}") from None
    except sqlite3.Error as e:
        raise LedgerError(f"cannot open the ledger {where(settings)}: {e}") from None


def where(settings: Settings) -> str:
    return str(settings.ledger_path) if settings.ledger_path else "(FILEKEEPER_DATABASE_URL)"


def db_message(e: SQLAlchemyError) -> str:
    """The database's own one-line reason, without SQLAlchemy's SQL text and links."""
    orig = getattr(e, "orig", None)
    return str(orig or e).strip().splitlines()[0]
