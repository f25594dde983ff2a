"""Shared fixtures: a fresh FILEKEEPER_HOME per test, emulators over real sockets, a CLI runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from filekeeper.cli import cli
from filekeeper.providers import PROFILES
from tests.emulator import Emulator

# Every provider with a key variable of its own (all but "compatible", which config names), from the registry.
PROVIDERS = tuple(name for name, profile in PROFILES.items() if profile.key_env)
KEY_VARS = {name: str(PROFILES[name].key_env) for name in PROVIDERS}
URL_VARS = {name: str(PROFILES[name].base_url_env) for name in PROVIDERS}
# Long and distinctive, so that a grep for it cannot match by accident.
SECRET = "sk-fk-test-5b1f0c9e3d7a4e2b8c6d"


# --- the ledger's database: SQLite, and PostgreSQL where a server is reachable ---------------------

DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--database-url",
        default=None,
        help=f"PostgreSQL server for the postgresql leg (default: $FILEKEEPER_TEST_DATABASE_URL, else {DEFAULT_PG})",
    )


@pytest.fixture(scope="session")
def postgres_database(request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh database for this test run, created here and dropped at the end."""
    import uuid

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    url = make_url(
        request.config.getoption("--database-url") or os.environ.get("FILEKEEPER_TEST_DATABASE_URL") or DEFAULT_PG
    )
    required = os.environ.get("FILEKEEPER_REQUIRE_POSTGRES") == "1"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        if required:
            pytest.fail("FILEKEEPER_REQUIRE_POSTGRES=1 but psycopg is not installed (pip install '.[postgres]')")
        pytest.skip("PostgreSQL leg skipped: psycopg is not installed (pip install '.[postgres]')")
    name = f"filekeeper_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as e:
        admin.dispose()
        reason = f"PostgreSQL leg skipped: no server at {url.render_as_string(hide_password=True)} ({type(e).__name__})"
        if required:
            pytest.fail(reason.replace("skipped", "required (FILEKEEPER_REQUIRE_POSTGRES=1)"))
        pytest.skip(reason)
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: str, request: pytest.FixtureRequest
) -> Iterator[Path]:
    """An empty FILEKEEPER_HOME (and, on PostgreSQL, an empty schema of its own) and an environment
    with no provider variables of the machine's."""
    for name in list(os.environ):
        if name.startswith("FILEKEEPER_") or name.endswith(("_API_KEY", "_BASE_URL")):
            monkeypatch.delenv(name)
    path = tmp_path / "home"
    monkeypatch.setenv("FILEKEEPER_HOME", str(path))
    if backend == "sqlite":
        yield path
        assert_usage_kept(path)
        return
    if request.node.get_closest_marker("sqlite_only"):
        pytest.skip("about the SQLite file itself")
    from sqlalchemy import create_engine, text

    database = request.getfixturevalue("postgres_database")
    schema = f"t_{abs(hash(request.node.nodeid)) % 10**12}"
    engine = create_engine(database, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    monkeypatch.setenv("FILEKEEPER_DATABASE_URL", f"{database}?options=-csearch_path%3D{schema}")
    try:
        yield path
        assert_usage_kept(path)
    finally:
        with engine.connect() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        engine.dispose()


def assert_usage_kept(home: Path) -> None:
    """After every test, whatever it did to the ledger: the usage sums the database's triggers
    keep (account_usage) are exactly what the files rows hold."""
    from sqlalchemy import create_engine, inspect, text

    from filekeeper.schema import HELD

    if not os.environ.get("FILEKEEPER_DATABASE_URL") and not (home / "ledger.db").is_file():
        return
    engine = create_engine(ledger_url(home))
    try:
        with engine.connect() as conn:
            try:
                if not inspect(conn).has_table("account_usage"):
                    return
            except Exception:  # a test left a ledger that is no database on purpose
                return
            kept = conn.execute(
                text(
                    "SELECT account_id, purpose, sum(files), sum(bytes) FROM account_usage "
                    "GROUP BY account_id, purpose "
                    "HAVING sum(files) <> 0 OR sum(bytes) <> 0"
                )
            )
            held = conn.execute(
                text(
                    "SELECT account_id, purpose, count(*), sum(bytes) FROM files "
                    f"WHERE status IN ({', '.join(repr(str(s)) for s in HELD)}) GROUP BY account_id, purpose"
                )
            )
            assert {(a, p): (int(n), int(b)) for a, p, n, b in kept} == {
                (a, p): (int(n), int(b)) for a, p, n, b in held
            }, "account_usage no longer adds up to the held files rows"
    finally:
        engine.dispose()


def ledger_url(home: Path) -> str:
    return os.environ.get("FILEKEEPER_DATABASE_URL") or f"sqlite:///{home / 'ledger.db'}"


def _bind(statement: str, args: tuple[Any, ...]) -> tuple[Any, dict[str, Any]]:
    from sqlalchemy import text

    parts = statement.split("?")
    assert len(parts) == len(args) + 1, "one argument per ? placeholder"
    named = parts[0] + "".join(f":p{i}{rest}" for i, rest in enumerate(parts[1:]))
    return text(named), {f"p{i}": a for i, a in enumerate(args)}


def ledger_rows(home: Path, statement: str, *args: Any) -> list[tuple[Any, ...]]:
    """Read the ledger directly, whatever database holds it (``?`` placeholders)."""
    from sqlalchemy import create_engine

    engine = create_engine(ledger_url(home))
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(*_bind(statement, args))]
    finally:
        engine.dispose()


def ledger_sql(home: Path, statement: str, *args: Any) -> None:
    """Change the ledger directly, as a test's setup (an aged row, a held lock)."""
    from sqlalchemy import create_engine

    engine = create_engine(ledger_url(home))
    try:
        with engine.begin() as conn:
            conn.execute(*_bind(statement, args))
    finally:
        engine.dispose()


@contextmanager
def ledger_connection(home: Path) -> Iterator[Any]:
    """A Core connection in a committed transaction, for setups that need typed values
    (aware datetimes, booleans) written the same way on every database."""
    from sqlalchemy import create_engine

    engine = create_engine(ledger_url(home))
    try:
        with engine.begin() as conn:
            yield conn
    finally:
        engine.dispose()


def age_everything(home: Path, hours: float = 2) -> None:
    """Make every ledger row look ``hours`` older, as if uploaded long before what the test does next."""
    from datetime import timedelta

    from sqlalchemy import select, update

    from filekeeper.schema import account_keys, files

    with ledger_connection(home) as conn:
        for ledger_id, created in conn.execute(select(files.c.id, files.c.created_at)).all():
            conn.execute(
                update(files).where(files.c.id == ledger_id).values(created_at=created - timedelta(hours=hours))
            )
        # When each URL and key was first used moves back with the files uploaded through it.
        for key_id, seen in conn.execute(select(account_keys.c.id, account_keys.c.first_seen)).all():
            conn.execute(
                update(account_keys).where(account_keys.c.id == key_id).values(first_seen=seen - timedelta(hours=hours))
            )


def hold_lock(
    home: Path,
    pid: int,
    host: str,
    heartbeat: datetime | None = None,
    account_id: int = 1,
    started: datetime | None = None,
) -> None:
    """A ``running`` reconcile row: the account's lock, held by ``pid`` on ``host``."""
    from datetime import UTC

    from sqlalchemy import insert

    from filekeeper.schema import reconcile_runs

    stamp = heartbeat or datetime.now(UTC)
    with ledger_connection(home) as conn:
        conn.execute(
            insert(reconcile_runs).values(
                account_id=account_id,
                status="running",
                applied=True,
                actor=f"someone@{host}",
                pid=pid,
                started_at=started or stamp,
                heartbeat_at=stamp,
                counts={},
            )
        )


def upload(run: Callable[..., Result], tmp_path: Path, flavor: str, *names: str) -> list[dict[str, Any]]:
    """Upload files named ``names`` (each holding its own name) through the CLI; their records."""
    paths = [str(write(tmp_path / n, f"content of {n}")) for n in names]
    result = run("upload", *paths, "-p", flavor, "--json", "--concurrency", "1")
    assert result.exit_code == 0, result.stderr
    return result.json()


def baseline(run: Callable[..., Result], *account: str) -> None:
    """An applying reconcile of the account (``"-p", "openai"``, say) before the test adds files
    at the provider: the ledger's baseline. Unknown files it lists from then on are orphans;
    before it, a ledger takes them for someone else's (unclaimed)."""
    result = run("reconcile", *account, "--apply", "--min-age", "0", "--json")
    assert result.exit_code == 0, result.stdout + result.stderr
    docs = result.json() if isinstance(result.json(), list) else [result.json()]
    assert all(d["deleted"] == [] for d in docs), "a baseline run deletes nothing"
    backdate_baseline()


def backdate_baseline() -> None:
    """As if the first applying reconcile ran long ago: the files a test then adds "an hour ago"
    or "31 days ago" appeared after it (one made before the baseline is someone else's)."""
    from filekeeper import load_settings

    ledger_sql(
        load_settings().home,
        "UPDATE accounts SET baselined_at = ? WHERE baselined_at IS NOT NULL",
        datetime.now(UTC) - timedelta(days=400),
    )


def emulator_ids(emu: Emulator) -> set[str]:
    with emu.lock:
        return set(emu.files)


def files_count(home: Path) -> int:
    """Rows in the files table; 0 when the ledger was never even created."""
    from sqlalchemy import create_engine, inspect

    if not os.environ.get("FILEKEEPER_DATABASE_URL") and not (home / "ledger.db").exists():
        return 0
    engine = create_engine(ledger_url(home))
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table("files"):
                return 0
    finally:
        engine.dispose()
    return ledger_rows(home, "SELECT count(*) FROM files")[0][0]


def as_json(value: Any) -> Any:
    """An events.detail value as read back: text on SQLite, already parsed on PostgreSQL."""
    return json.loads(value) if isinstance(value, str) else value


def actions(home: Path) -> list[str]:
    return [a for (a,) in ledger_rows(home, "SELECT action FROM events ORDER BY id")]


def ledger_dump(home: Path) -> bytes:
    """Everything the ledger stores, as bytes to search: the file(s), or every row of every table."""
    if not os.environ.get("FILEKEEPER_DATABASE_URL"):
        return b"".join(p.read_bytes() for p in home.rglob("*") if p.is_file())
    return repr(
        [ledger_rows(home, f"SELECT * FROM {t}") for t in ("accounts", "files", "events", "reconcile_runs")]
    ).encode()


@pytest.fixture
def emulators() -> Iterator[Callable[..., Emulator]]:
    started: list[Emulator] = []

    def start(flavor: str, **kwargs: Any) -> Emulator:
        kwargs.setdefault("api_key", SECRET)
        emu = Emulator(flavor, **kwargs).start()
        started.append(emu)
        return emu

    yield start
    for emu in started:
        emu.stop()


@pytest.fixture
def provider_env(home: Path, emulators: Callable[..., Emulator], monkeypatch: pytest.MonkeyPatch):
    """Point one provider's standard variables at a fresh emulator; returns the emulator."""

    def setup(flavor: str, **kwargs: Any) -> Emulator:
        emu = emulators(flavor, **kwargs)
        monkeypatch.setenv(KEY_VARS[flavor], SECRET)
        monkeypatch.setenv(URL_VARS[flavor], emu.url)
        return emu

    return setup


@dataclass
class Result:
    exit_code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


@pytest.fixture
def run(home: Path) -> Callable[..., Result]:
    """Run the CLI in-process (stdout and stderr kept apart, neither a terminal)."""

    def invoke(*args: str) -> Result:
        result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
        return Result(result.exit_code, result.stdout, result.stderr)

    return invoke


def run_process(*args: str, env: dict[str, str] | None = None, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run the CLI as a real process, as a user or a cron job would."""
    return subprocess.run(
        [sys.executable, "-m", "filekeeper", *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        **kwargs,
    )


def run_on_terminal(*args: str, env: dict[str, str]) -> tuple[int, str]:
    """Run the CLI with its stderr on a pseudo-terminal; return the exit code and what it showed."""
    import pty

    primary, replica = pty.openpty()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "filekeeper", *args], env=env, stdout=subprocess.PIPE, stderr=replica, timeout=60
        )
        os.close(replica)
        chunks = []
        while True:
            try:
                data = os.read(primary, 65536)
            except OSError:  # EIO: the writer side is closed and everything was read
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(primary)
    return proc.returncode, b"".join(chunks).decode()


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path
