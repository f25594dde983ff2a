"""The ledger file itself: creation on first use, migrations, and refusing what it cannot read."""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

import filekeeper.ledger
import filekeeper.migrate
from filekeeper.config import load_settings
from filekeeper.ledger import open_ledger
from filekeeper.migrate import alembic_config, head
from filekeeper.schema import SCHEMA_HEAD, metadata
from tests.conftest import ledger_rows, ledger_sql, write


def names(folder: Path) -> list[str]:
    """What is in the folder, but the ledger's -wal and -shm (which stay when its last users close
    at once, as SQLite leaves them)."""
    return sorted(p.name for p in folder.iterdir() if p.name not in ("ledger.db-wal", "ledger.db-shm"))


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_one_head_and_the_constant_follows_it() -> None:
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    assert heads == [SCHEMA_HEAD]
    assert head() == SCHEMA_HEAD


def test_models_match_migrations(home: Path) -> None:
    ledger = open_ledger(load_settings())
    with ledger.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata)
    ledger.close()
    assert diff == []


@pytest.mark.sqlite_only
def test_first_use_creates_the_ledger_with_wal_and_foreign_keys(run, home: Path) -> None:
    assert not home.exists()
    result = run("ls")
    assert result.exit_code == 0, result.stderr
    db = home / "ledger.db"
    assert db.is_file()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone()[0] == SCHEMA_HEAD
    ledger = open_ledger(load_settings())
    with ledger.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
    ledger.close()
    assert run("db", "current").stdout.strip() == f"{SCHEMA_HEAD} (head)"


def test_db_upgrade_and_current_on_an_empty_home(run, home: Path, backend: str) -> None:
    empty = "no ledger yet" if backend == "sqlite" else "none (empty; run: filekeeper db upgrade)"
    assert empty in run("db", "current").stdout
    assert run("db", "upgrade").stdout.strip() == f"ledger upgraded from empty to {SCHEMA_HEAD}"
    assert run("db", "upgrade").stdout.strip() == f"ledger already at {SCHEMA_HEAD} (head)"


@pytest.mark.sqlite_only
def test_an_older_ledger_is_copied_aside_before_it_is_upgraded(
    run, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run("ls").exit_code == 0  # a ledger at the current head
    with sqlite3.connect(home / "ledger.db") as conn:
        conn.execute(
            "INSERT INTO accounts (name, provider, base_url, key_fingerprint, created_at) "
            "VALUES ('a', 'moonshot', 'http://x', 'sha256:0', '2026-01-01 00:00:00')"
        )
    before = (home / "ledger.db").read_bytes()
    # A newer filekeeper: the same migrations plus one more revision.
    scripts = tmp_path / "migrations"
    shutil.copytree(filekeeper.migrate.script_location(), scripts)
    write(
        scripts / "versions" / "9000_test.py",
        f"""
import sqlalchemy as sa
from alembic import op

revision = "9000"
down_revision = "{SCHEMA_HEAD}"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("accounts") as batch:
        batch.add_column(sa.Column("note", sa.String(20), nullable=True))


def downgrade():
    pass
""",
    )
    monkeypatch.setattr(filekeeper.migrate, "script_location", lambda: scripts)
    monkeypatch.setattr(filekeeper.ledger, "SCHEMA_HEAD", "9000")

    result = run("ls")
    assert result.exit_code == 0, result.stderr
    backups = list(home.glob(f"ledger.db.backup-{SCHEMA_HEAD}-*"))
    assert len(backups) == 1
    with sqlite3.connect(backups[0]) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone()[0] == SCHEMA_HEAD
        assert conn.execute("SELECT name FROM accounts").fetchall() == [("a",)]
    with sqlite3.connect(home / "ledger.db") as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone()[0] == "9000"
        assert conn.execute("SELECT name, note FROM accounts").fetchall() == [("a", None)]
    assert before  # the original was read before the upgrade, not replaced by the copy


def test_a_ledger_from_a_newer_filekeeper_is_refused(run, home: Path, backend: str) -> None:
    assert run("ls").exit_code == 0
    ledger_sql(home, "UPDATE alembic_version SET version_num = '9999'")
    before = digest(home / "ledger.db") if backend == "sqlite" else ledger_rows(home, "SELECT * FROM alembic_version")
    result = run("ls")
    assert result.exit_code == 1
    assert "schema revision 9999, written by a newer filekeeper" in result.stderr
    assert "upgrade filekeeper" in result.stderr
    assert "Traceback" not in result.stderr
    after = digest(home / "ledger.db") if backend == "sqlite" else ledger_rows(home, "SELECT * FROM alembic_version")
    assert after == before
    assert "newer filekeeper" in run("db", "current").stdout
    assert run("db", "upgrade").exit_code == 1


@pytest.mark.sqlite_only
@pytest.mark.parametrize(
    "content",
    [b"this is not a database at all\n" * 100, b"SQLite format 3\x00" + b"\xff" * 4000],
    ids=["garbage", "sqlite-header-then-garbage"],
)
def test_a_corrupt_ledger_fails_cleanly_and_is_left_byte_for_byte(run, home: Path, content: bytes) -> None:
    db = write(home / "ledger.db", content)
    for args in (["ls"], ["usage"], ["db", "current"], ["db", "upgrade"], ["upload", str(db), "-p", "moonshot"]):
        result = run(*args)
        assert result.exit_code in (1, 2), (args, result.stderr)
        assert "Traceback" not in result.stderr
        assert result.stderr.startswith("filekeeper: error:")
        assert db.read_bytes() == content
    assert run("ls").exit_code == 1
    assert "ledger" in run("ls").stderr


@pytest.mark.sqlite_only
@pytest.mark.parametrize("spilled", [False, True], ids=["empty", "half-written"])
def test_a_ledger_whose_creation_was_killed_is_recovered_on_next_use(run, home: Path, spilled: bool) -> None:
    """kill -9 during the very first command: the file is left empty, or half-written, beside
    SQLite's hot journal. The next command lets SQLite put it back and makes the ledger anew,
    instead of refusing it for ever as empty or corrupt."""
    home.mkdir(parents=True)
    db = home / "ledger.db"
    code = (
        "import os, signal, sqlite3\n"
        f"c = sqlite3.connect({str(db)!r}, isolation_level=None)\n"
        f"c.execute('PRAGMA cache_size = {1 if spilled else 2000}')\n"  # 1: pages spill into the file
        "c.execute('BEGIN')\n"
        "c.execute('CREATE TABLE t (x)')\n"
        "c.executemany('INSERT INTO t VALUES (?)', [(b'x' * 1000,) for _ in range(500)])\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=False)
    # What the kill left: the journal of a transaction that never finished, and the file empty or
    # half-written (no whole database either way: refused, before, as empty or corrupt).
    assert (home / "ledger.db-journal").stat().st_size > 0
    assert (db.stat().st_size == 0) != spilled
    result = run("ls")
    assert result.exit_code == 0, result.stderr
    assert run("db", "current").stdout.strip() == f"{SCHEMA_HEAD} (head)"
    assert not (home / "ledger.db-journal").exists()  # rolled back, and the ledger made anew


@pytest.mark.sqlite_only
def test_db_upgrade_on_a_fresh_home_makes_the_ledger_owner_only(run, home: Path) -> None:
    assert run("db", "upgrade").exit_code == 0
    assert (home / "ledger.db").stat().st_mode & 0o777 == 0o600


@pytest.mark.sqlite_only
def test_many_processes_starting_on_a_fresh_home_share_one_new_ledger(home: Path) -> None:
    """SQLite makes a new database's file empty and fills it at the first write: processes starting
    at once on a fresh home (CI workers, a fan-out) found another's empty file and refused it as a
    lost ledger. It is made aside and linked into place whole, so each finds it whole or absent."""
    import os

    env = {**os.environ, "FILEKEEPER_HOME": str(home)}
    for _ in range(3):
        shutil.rmtree(home, ignore_errors=True)
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "filekeeper", "ls"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
            for _ in range(12)
        ]
        outcomes = [(p.wait(timeout=120), p.stderr.read().decode()) for p in procs if p.stderr]
        assert [e for c, e in outcomes if c != 0] == []
        assert names(home) == ["ledger.db"]  # no build left beside it
        with sqlite3.connect(home / "ledger.db") as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert conn.execute("SELECT version_num FROM alembic_version").fetchone()[0] == SCHEMA_HEAD
        assert (home / "ledger.db").stat().st_mode & 0o777 == 0o600


@pytest.mark.sqlite_only
def test_a_new_ledger_killed_while_it_is_built_leaves_none_and_a_later_command_sweeps_it(run, home: Path) -> None:
    """kill -9 while the new ledger is built: what is left is under a name of its own, never the
    ledger. The next command makes the ledger and leaves the build alone while it could still be
    another process's (in another container, say, where its pid means nothing); once it is an hour
    old, a command sweeps it away."""
    import os
    import time

    home.mkdir(parents=True)
    code = (
        "import os, signal\n"
        "from pathlib import Path\n"
        "import filekeeper.migrate as m\n"
        "m.upgrade_to_head = lambda *a: os.kill(os.getpid(), signal.SIGKILL)\n"
        f"m.create_sqlite(Path({str(home / 'ledger.db')!r}))\n"
    )
    killed = subprocess.run([sys.executable, "-c", code], check=False)
    assert killed.returncode == -9
    [left] = names(home)
    assert left.startswith(".ledger.db.new-")  # half-made, under its own name: never the ledger
    result = run("ls")
    assert result.exit_code == 0, result.stderr
    assert names(home) == [left, "ledger.db"]  # young: maybe someone's
    hour_ago = time.time() - 3601
    os.utime(home / left, (hour_ago, hour_ago))
    assert run("ls").exit_code == 0
    assert names(home) == ["ledger.db"]  # the dead build swept away
    assert run("db", "current").stdout.strip() == f"{SCHEMA_HEAD} (head)"


@pytest.mark.sqlite_only
def test_a_second_name_of_the_ledger_left_by_a_build_is_swept_at_once(run, home: Path) -> None:
    """A process killed between linking its build into place and removing the build's name
    leaves the ledger with two names; the next command removes the extra one, ledger untouched."""
    import os

    assert run("ls").exit_code == 0
    db = home / "ledger.db"
    os.link(db, home / ".ledger.db.new-0123456789abcdef")
    before = digest(db)
    assert run("ls").exit_code == 0
    assert names(home) == ["ledger.db"] and db.stat().st_nlink == 1
    assert digest(db) == before


@pytest.mark.sqlite_only
def test_a_ledger_path_that_is_a_dangling_symlink_is_made_where_it_points(run, home: Path, tmp_path: Path) -> None:
    home.mkdir(parents=True)
    target = tmp_path / "elsewhere" / "team.db"
    target.parent.mkdir()
    (home / "ledger.db").symlink_to(target)
    result = run("db", "upgrade")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == f"ledger upgraded from empty to {SCHEMA_HEAD}"
    assert (home / "ledger.db").is_symlink() and target.stat().st_mode & 0o777 == 0o600
    with sqlite3.connect(target) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert [p.name for p in target.parent.iterdir() if p.name.startswith(".")] == []  # no build left


@pytest.mark.sqlite_only
def test_db_upgrade_run_at_once_on_a_fresh_home_says_once_that_it_made_the_ledger(home: Path) -> None:
    import os

    env = {**os.environ, "FILEKEEPER_HOME": str(home)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "filekeeper", "db", "upgrade"], env=env, stdout=subprocess.PIPE, text=True
        )
        for _ in range(8)
    ]
    said = sorted(p.communicate(timeout=120)[0].strip() for p in procs)
    assert all(p.returncode == 0 for p in procs)
    made = f"ledger upgraded from empty to {SCHEMA_HEAD}"
    assert said == sorted([made] + [f"ledger already at {SCHEMA_HEAD} (head)"] * 7)


@pytest.mark.sqlite_only
def test_a_home_on_a_filesystem_without_hard_links_still_gets_its_ledger(
    run, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import os

    def no_links(*_args: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    open_ledger(load_settings()).close()
    assert names(home) == ["ledger.db"]
    assert run("db", "current").stdout.strip() == f"{SCHEMA_HEAD} (head)"


@pytest.mark.sqlite_only
def test_an_empty_file_is_refused_whichever_driver_the_url_names(
    run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``sqlite+pysqlite:///`` went around every guard on the SQLite file: a lost (emptied) ledger
    was silently made anew."""
    lost = tmp_path / "lost.db"
    lost.write_bytes(b"")
    with monkeypatch.context() as m:
        m.setenv("FILEKEEPER_DATABASE_URL", f"sqlite+pysqlite:///{lost}")
        result = run("ls")
    assert result.exit_code == 1 and "is empty (0 bytes), not a ledger" in result.stderr
    assert lost.stat().st_size == 0


@pytest.mark.sqlite_only
def test_the_commands_that_only_look_say_when_no_ledger_can_be_made(run, home: Path) -> None:
    """A FILEKEEPER_HOME that is a file: every command that opens the ledger fails, so `db current`
    and `doctor` must not say "no ledger yet" and "nothing looks wrong"."""
    home.parent.mkdir(parents=True, exist_ok=True)
    home.write_text("not a folder")
    why = f"there is no ledger at {home / 'ledger.db'}, and none can be made there: {home} is not a folder"
    current = run("db", "current")
    assert current.exit_code == 1 and why in current.stderr
    doctor = run("doctor")
    assert doctor.exit_code == 1 and why in doctor.stdout
    assert run("ls").exit_code == 1
    assert home.read_text() == "not a folder"


@pytest.mark.sqlite_only
def test_a_symlinked_ledger_pointing_into_no_folder_is_said_by_the_commands_that_look(
    run, home: Path, tmp_path: Path
) -> None:
    home.mkdir(parents=True)
    (home / "ledger.db").symlink_to(tmp_path / "gone" / "team.db")
    current = run("db", "current")
    assert current.exit_code == 1 and "points into" in current.stderr and "not a folder" in current.stderr
    assert run("doctor").exit_code == 1
    assert not (tmp_path / "gone").exists()


@pytest.mark.sqlite_only
@pytest.mark.parametrize("driver", ["sqlite", "sqlite+pysqlite"])
@pytest.mark.parametrize(
    "tail", ["/", "/ledger.db?mode=ro", "", ":memory:"], ids=["folder", "options", "nothing", "memory"]
)
def test_a_sqlite_url_that_names_no_plain_file_is_refused(
    run, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tail: str, driver: str
) -> None:
    """A trailing slash made a ledger file named after the folder; ``?mode=ro`` became part of
    the file's name; a ledger in memory is gone when the command ends. Refused as bad input, with
    any driver named, and nothing is made."""
    url = f"{driver}:///{tmp_path / 'team'}{tail}" if tail.startswith("/") else f"{driver}:///{tail}"
    with monkeypatch.context() as m:  # only for the command: the teardown's checks read the real one
        m.setenv("FILEKEEPER_DATABASE_URL", url)
        result = run("ls")
    assert result.exit_code == 2
    assert "a SQLite ledger's URL names its file and nothing else" in result.stderr
    assert not (tmp_path / "team").exists() and not list(tmp_path.glob("*ledger*"))


@pytest.mark.sqlite_only
def test_db_upgrade_leaves_the_ledger_in_wal_mode(run, home: Path) -> None:
    """As first use does: a ledger made by ``db upgrade`` and then opened by many processes at
    once had them all race to switch it, and the switch does not wait (CI saw one of 16 uploads
    fail with 'database is locked')."""
    assert run("db", "upgrade").exit_code == 0
    with sqlite3.connect(home / "ledger.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.sqlite_only
def test_a_ledger_in_rollback_mode_is_used_while_busy_and_switched_when_quiet(
    provider_env, run, home: Path, tmp_path: Path
) -> None:
    """A ledger an older ``db upgrade`` left in rollback-journal mode, read by another process
    as a command opens it: the command works in that mode rather than fail, and a later one
    switches it to WAL."""
    provider_env("openai")
    assert run("upload", str(write(tmp_path / "a.txt", "a")), "-p", "openai").exit_code == 0
    db = home / "ledger.db"
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode = DELETE").fetchone()[0] == "delete"
    reader = sqlite3.connect(db, isolation_level=None)
    reader.execute("BEGIN")
    assert reader.execute("SELECT count(*) FROM files").fetchone() == (1,)  # holds a shared lock
    try:
        busy = run("ls", "--json")
        assert busy.exit_code == 0, busy.stderr
        assert [r["filename"] for r in busy.json()] == ["a.txt"]
        assert reader.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    finally:
        reader.close()
    assert run("upload", str(write(tmp_path / "b.txt", "b")), "-p", "openai").exit_code == 0
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert ledger_rows(home, "SELECT filename FROM files ORDER BY id") == [("a.txt",), ("b.txt",)]


@pytest.mark.sqlite_only
def test_a_foreign_sqlite_database_is_not_taken_over(run, home: Path) -> None:
    home.mkdir(parents=True)
    with sqlite3.connect(home / "ledger.db") as conn:
        conn.execute("CREATE TABLE recipes (id INTEGER)")
    before = digest(home / "ledger.db")
    result = run("ls")
    assert result.exit_code == 1
    assert "not a filekeeper ledger" in result.stderr
    assert digest(home / "ledger.db") == before
