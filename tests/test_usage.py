"""The usage sums the database keeps (account_usage, migration 0006): right after every kind of
write, after an upgrade of a ledger that already holds files, and however often they are folded.

Every test that uses ``home`` also checks, as it ends, that the sums add up to the files rows
(``conftest.assert_usage_kept``); these are the cases made to break them."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from alembic import command
from sqlalchemy import insert

from filekeeper.config import load_settings
from filekeeper.engine import WRITE, prepare
from filekeeper.ledger import FOLD_AFTER, open_ledger
from filekeeper.migrate import alembic_config
from filekeeper.quota import Request
from filekeeper.records import PendingRow
from filekeeper.schema import accounts, files
from tests.conftest import ledger_rows, ledger_sql

TRIGGERS = {"files_usage_insert", "files_usage_delete", "files_usage_update"}
NOW = datetime.now(UTC)


def _account(conn, name: str = "a") -> int:
    return conn.execute(
        insert(accounts).values(
            name=name, provider="openai", base_url="http://x", key_fingerprint="sha256:0", created_at=NOW
        )
    ).inserted_primary_key[0]


def _file(conn, account_id: int, status: str, size: int, purpose: str = "assistants", **values) -> int:
    return conn.execute(
        insert(files).values(
            account_id=account_id,
            filename=f"{status}-{size}.txt",
            bytes=size,
            purpose=purpose,
            status=status,
            created_at=NOW,
            **values,
        )
    ).inserted_primary_key[0]


def _usage(account_id: int = 1) -> tuple[int, int, dict[str, tuple[int, int]]]:
    ledger = open_ledger(load_settings())
    try:
        u = ledger.usage([account_id])[account_id]
        return u.files, u.bytes, {p: (v.files, v.bytes) for p, v in u.by_purpose.items()}
    finally:
        ledger.close()


def test_the_triggers_exist_at_head(home: Path, backend: str) -> None:
    open_ledger(load_settings()).close()
    if backend == "sqlite":
        found = ledger_rows(home, "SELECT name FROM sqlite_master WHERE type = 'trigger'")
    else:
        found = ledger_rows(home, "SELECT tgname FROM pg_trigger WHERE tgrelid = 'files'::regclass")
    # A later migration that rebuilds files (SQLite's batch mode) would drop them without a word.
    assert {name for (name,) in found} >= TRIGGERS


def test_an_upgrade_sums_what_the_ledger_already_holds(home: Path) -> None:
    engine = prepare(load_settings())
    with engine.connect() as conn:
        conn.execution_options(**{WRITE: True})
        with conn.begin():
            command.upgrade(alembic_config(conn), "0005")
            a, b = _account(conn, "a"), _account(conn, "b")
            for status, size in [("active", 10), ("pending", 20), ("unclaimed", 40), ("generated", 80)]:
                _file(conn, a, status, size)
            for status in ("deleted", "expired", "failed", "missing", "evicting"):
                _file(conn, a, status, 1000)  # holds nothing
            _file(conn, a, "active", 5, purpose="batch")
            _file(conn, b, "active", 7)
    engine.dispose()
    assert _usage(a) == (5, 155, {"assistants": (4, 150), "batch": (1, 5)})  # the upgrade happens on open
    assert _usage(b) == (1, 7, {"assistants": (1, 7)})


def test_every_kind_of_write_keeps_the_sums(home: Path) -> None:
    open_ledger(load_settings()).close()
    engine = prepare(load_settings())
    with engine.begin() as conn:
        a, b = _account(conn, "a"), _account(conn, "b")
        one = _file(conn, a, "pending", 100)
        two = _file(conn, a, "active", 200)
        three = _file(conn, a, "deleted", 400)
    engine.dispose()
    assert _usage(a) == (2, 300, {"assistants": (2, 300)})
    ledger_sql(home, "UPDATE files SET status = 'active', bytes = 150 WHERE id = ?", one)  # held, size corrected
    assert _usage(a) == (2, 350, {"assistants": (2, 350)})
    ledger_sql(home, "UPDATE files SET purpose = 'batch' WHERE id = ?", two)
    assert _usage(a) == (2, 350, {"assistants": (1, 150), "batch": (1, 200)})
    ledger_sql(home, "UPDATE files SET status = 'active' WHERE id = ?", three)  # back from deleted
    ledger_sql(home, "UPDATE files SET account_id = ? WHERE id = ?", b, two)
    assert _usage(a) == (2, 550, {"assistants": (2, 550)})
    assert _usage(b) == (1, 200, {"batch": (1, 200)})
    ledger_sql(home, "UPDATE files SET status = 'deleted'")  # many rows in one statement
    assert _usage(a) == (0, 0, {}) and _usage(b) == (0, 0, {})
    ledger_sql(home, "UPDATE files SET status = 'unclaimed' WHERE id = ?", one)
    ledger_sql(home, "DELETE FROM events")
    ledger_sql(home, "DELETE FROM files WHERE id = ?", one)  # a row removed outright
    assert _usage(a) == (0, 0, {})


def test_files_the_provider_deleted_by_itself_are_not_counted(home: Path) -> None:
    open_ledger(load_settings()).close()
    engine = prepare(load_settings())
    with engine.begin() as conn:
        a = _account(conn)
        _file(conn, a, "active", 1, provider_expires_at=NOW - timedelta(hours=1))  # gone at the provider
        _file(conn, a, "active", 2, provider_expires_at=NOW + timedelta(hours=1))
        _file(conn, a, "active", 4)
        _file(conn, a, "deleted", 8, provider_expires_at=NOW - timedelta(hours=1))
    engine.dispose()
    assert _usage(a) == (2, 6, {"assistants": (2, 6)})
    ledger = open_ledger(load_settings())
    try:
        later = ledger.usage([a], now=NOW + timedelta(hours=2))[a]
        assert (later.files, later.bytes) == (1, 4)
    finally:
        ledger.close()


def test_reservations_fold_the_rows_they_read(home: Path) -> None:
    """Each reservation adds a row; reading more than FOLD_AFTER of them folds them into one per
    purpose, inside the reservation's transaction, and the sums stay what they were."""
    ledger = open_ledger(load_settings())
    try:
        with ledger.write() as w:
            a = _account(w.conn)
        for i in range(5 * FOLD_AFTER):
            with ledger.write() as w:
                w.lock_account(a)
                usage = w.usage_of(a, datetime.now(UTC))
                assert (usage.files, usage.bytes) == (i, 10 * i)
                purpose = "batch" if i % 2 else "assistants"
                request = Request(f"f{i}", 10, purpose)
                w.reserve(a, request, PendingRow("a", "openai", sha256=None, created_at=NOW, expires_at=None))
        rows = ledger_rows(home, "SELECT count(*) FROM account_usage WHERE account_id = ?", a)[0][0]
        assert rows <= FOLD_AFTER + 2  # one per purpose, and what came since the last fold
        u = ledger.usage([a])[a]
        assert (u.files, u.bytes) == (5 * FOLD_AFTER, 50 * FOLD_AFTER)
        assert {p: v.files for p, v in u.by_purpose.items()} == {"assistants": 20, "batch": 20}
    finally:
        ledger.close()


def test_a_reconcile_folds_what_its_changes_added(provider_env, run, home: Path, tmp_path: Path) -> None:
    emu = provider_env("openai")
    for i in range(30):
        emu.add_file(f"theirs-{i}.txt", 10, created_at=int(time.time()) - 86400)
    result = run("reconcile", "-p", "openai", "--apply")
    assert result.exit_code == 0, result.stderr
    assert ledger_rows(home, "SELECT count(*) FROM files WHERE status = 'unclaimed'") == [(30,)]
    assert ledger_rows(home, "SELECT count(*) FROM account_usage") == [(1,)]  # 30 rows added, folded into one
    assert _usage(1)[:2] == (30, 300)
