"""What only a shared PostgreSQL ledger has to survive: dropped connections, a missing driver."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, event, text

from filekeeper import Keeper, LedgerError
from filekeeper.upload import FilePayload, UploadJob, reserve
from tests.conftest import ledger_rows, ledger_sql, upload, write


@pytest.fixture
def postgres(home: Path, backend: str) -> Path:
    if backend != "postgresql":
        pytest.skip("about PostgreSQL connections")
    return home


def kill_connection_when(keeper: Keeper, marker: str) -> list[str]:
    """Terminate the ledger's server connection the moment a statement containing ``marker``
    is about to run: a network drop or a server restart in the middle of a transaction."""
    admin = create_engine(os.environ["FILEKEEPER_DATABASE_URL"])
    killed: list[str] = []

    def before(conn, _cursor, statement: str, *_args: object) -> None:  # type: ignore[no-untyped-def]
        if marker in statement and not killed:
            pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
            with admin.connect() as a:
                a.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            killed.append(statement)

    event.listen(keeper.ledger.engine, "before_cursor_execute", before)
    return killed


def test_a_connection_dropped_while_reserving_loses_nothing(postgres: Path, provider_env, tmp_path: Path) -> None:
    """The connection dies at the reservation's INSERT, inside the server (the statement goes out
    in the driver's pipeline, where no client-side hook can see it)."""
    emu = provider_env("openai")
    doc = write(tmp_path / "a.txt", "hello")
    with Keeper() as keeper:
        keeper.ledger.ensure_account(keeper.account(provider="openai"))
        with keeper.ledger.engine.begin() as conn:  # the first insert into files ends its own connection
            conn.execute(text("CREATE SEQUENCE kill_once"))
            conn.execute(
                text(
                    "CREATE FUNCTION kill_once() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                    "IF nextval('kill_once') = 1 THEN PERFORM pg_terminate_backend(pg_backend_pid()); END IF; "
                    "RETURN NEW; END $$"
                )
            )
            conn.execute(
                text("CREATE TRIGGER kill_once BEFORE INSERT ON files FOR EACH ROW EXECUTE FUNCTION kill_once()")
            )
        [result] = keeper.upload([doc], provider="openai")
        assert isinstance(result.error, LedgerError)
        assert ledger_rows(postgres, "SELECT last_value FROM kill_once") == [(1,)]  # killed there, once
        # The reservation rolled back with the connection: no row, no event, nothing sent.
        assert ledger_rows(postgres, "SELECT count(*) FROM files") == [(0,)]
        assert ledger_rows(postgres, "SELECT count(*) FROM events WHERE action = 'reserve'") == [(0,)]
        assert emu.count("POST", "/files") == 0
        # The pool replaces the dead connection: the next upload simply works.
        [again] = keeper.upload([doc], provider="openai")
        assert again.ok and again.record is not None and again.record.status == "active"


def test_a_connection_dropped_while_waiting_for_the_account_lock_loses_nothing(
    postgres: Path, provider_env, tmp_path: Path
) -> None:
    """On PostgreSQL a reservation writes its row first and then waits for the account's lock
    (upload._reserve_first): dropped while it waits, the row goes with the transaction."""
    import threading
    import time

    emu = provider_env("openai")
    doc = write(tmp_path / "a.txt", "hello")
    admin = create_engine(os.environ["FILEKEEPER_DATABASE_URL"])
    with Keeper() as keeper, admin.connect() as holder:
        account = keeper.account(provider="openai")
        job = UploadJob(account, keeper.ledger.ensure_account(account), FilePayload(doc), "assistants")
        holder.execute(text("SELECT id FROM accounts FOR NO KEY UPDATE"))  # another writer of the account
        results: list[object] = []

        def reserving() -> None:
            try:
                reserve(keeper.ledger, job, None)
            except LedgerError as e:
                results.append(e)

        worker = threading.Thread(target=reserving)
        worker.start()
        waiting: list[int] = []
        deadline = time.monotonic() + 30
        while not waiting and time.monotonic() < deadline:  # until the reservation waits on the lock
            with admin.connect() as a:
                waiting = [
                    pid
                    for (pid,) in a.execute(
                        text(
                            "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                            "AND query LIKE '%FOR NO KEY UPDATE%' AND pid <> pg_backend_pid()"
                        )
                    )
                ]
        assert waiting, "the reservation never waited for the lock"
        with admin.connect() as a:
            a.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": waiting[0]})
        worker.join(timeout=60)
        holder.rollback()
        assert len(results) == 1  # a one-line ledger error, raised
        assert ledger_rows(postgres, "SELECT count(*) FROM files") == [(0,)]
        assert ledger_rows(postgres, "SELECT count(*) FROM events WHERE action = 'reserve'") == [(0,)]
        assert emu.count("POST", "/files") == 0
        [again] = keeper.upload([doc], provider="openai")  # the pool replaced the connection
        assert again.ok and again.record is not None and again.record.status == "active"
    admin.dispose()


@pytest.mark.parametrize("settled_by", ["reconcile", "upload again"])
def test_a_connection_dropped_after_the_upload_leaves_a_reservation_reconcile_settles(
    postgres: Path, provider_env, run, tmp_path: Path, settled_by: str
) -> None:
    """The file is stored, and the ledger's connection dies as it is recorded: the error says so,
    with the id, and what it says settles the row does, without a second copy."""
    emu = provider_env("openai")
    doc = write(tmp_path / "a.txt", "hello")
    with Keeper() as keeper:
        keeper.ledger.ensure_account(keeper.account(provider="openai"))
        killed = kill_connection_when(keeper, "SET file_id=")
        [result] = keeper.upload([doc], provider="openai")
        assert killed and isinstance(result.error, LedgerError)
    assert ledger_rows(postgres, "SELECT status FROM files") == [("pending",)]
    with emu.lock:
        [landed] = emu.files
    assert f"stored at the provider as {landed}, but the ledger could not record it" in str(result.error)
    assert (result.to_json()["id"], result.to_json()["outcome"]) == (landed, "failed")  # --json names it too
    assert "this upload run again settles it at once (no second copy)" in str(result.error)
    if settled_by == "reconcile":
        settled = run("reconcile", "-p", "openai", "--apply", "--min-age", "0", "--json").json()
        assert [p["outcome"] for p in settled["pending"]] == ["settled"]
    else:
        [again] = run("upload", str(doc), "-p", "openai", "--json").json()
        assert again["id"] == landed
    assert ledger_rows(postgres, "SELECT status, file_id FROM files") == [("active", landed)]
    assert list(emu.files) == [landed]


def test_a_connection_dropped_as_a_delete_is_recorded_says_what_was_done_and_sends_no_more(
    postgres: Path, provider_env, run, tmp_path: Path
) -> None:
    """`filekeeper delete a b c`: a is deleted at the provider and the ledger's connection dies as
    that is recorded. a's result says it was deleted and what records it; b and c are not sent
    (their outcome could not be recorded either); the next reconcile records a as deleted."""
    emu = provider_env("openai")
    ids = [r["id"] for r in upload(run, tmp_path, "openai", "a.txt", "b.txt", "c.txt")]
    with Keeper() as keeper:
        killed = kill_connection_when(keeper, "deleted_at=")
        results = keeper.delete(ids, provider="openai")
    assert killed
    assert [r.file_id for r in results] == ids and all(isinstance(r.error, LedgerError) for r in results)
    assert "deleted at the provider, but the ledger could not record it" in str(results[0].error)
    assert "filekeeper reconcile --apply` from 15 minutes on records what became" in str(results[0].error)
    assert all("not deleted: not sent" in str(r.error) for r in results[1:])
    assert emu.ids() == set(ids[1:])
    assert ledger_rows(postgres, "SELECT count(*) FROM delete_intents") == [(1,)]  # a's, for reconcile
    # --json lists what is gone at the provider: a, unrecorded; b and c, not sent, are not there.
    [gone] = [r.to_json() for r in results if r.gone_at_provider]
    assert (gone["id"], gone["status"], gone["recorded"], gone["already_gone"]) == (ids[0], "deleted", False, False)
    # A reconcile at once: the delete could still be running, so its journal entry is not yet
    # taken for done, and the file, absent, is recorded missing.
    soon = run("reconcile", "-p", "openai", "--apply", "--min-age", "0")
    assert soon.exit_code == 0, soon.stderr
    assert ledger_rows(postgres, "SELECT status FROM files WHERE file_id = ?", ids[0]) == [("missing",)]
    # Cron's next reconcile, once a plain delete's journal entry is old enough to be a dead one's.
    ledger_sql(postgres, "UPDATE delete_intents SET at = ?", datetime.now(UTC) - timedelta(minutes=20))
    settled = run("reconcile", "-p", "openai", "--apply", "--min-age", "0")
    assert settled.exit_code == 0, settled.stderr
    assert dict(ledger_rows(postgres, "SELECT file_id, status FROM files")) == {
        ids[0]: "deleted",
        ids[1]: "active",
        ids[2]: "active",
    }
    assert ledger_rows(postgres, "SELECT count(*) FROM delete_intents") == [(0,)]


def test_a_missing_driver_is_a_clear_message(postgres: Path, tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['psycopg'] = None\n"
        "from filekeeper.cli import main\n"
        "sys.argv = ['filekeeper', 'ls']\n"
        "main()\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ.copy())
    assert out.returncode == 1
    assert "the database driver for postgresql+psycopg is not installed" in out.stderr
    assert 'pip install "filekeeper[postgres]"' in out.stderr
    assert "Traceback" not in out.stderr


class _Sized:
    """A payload that is only reserved, never sent: a name and a size."""

    def __init__(self, filename: str) -> None:
        self.filename, self.size = filename, 10


@pytest.mark.parametrize("hashed", [False, True], ids=["at once", "locked first"])
def test_a_reservations_plan_settings_end_with_its_transaction(postgres: Path, provider_env, hashed: bool) -> None:
    """A reservation reads its usage with plain index scans only (see ledger._INDEX_SCANS); the
    setting is its transaction's, not the pooled connection's that a report runs on next."""
    from filekeeper.ledger import open_ledger
    from filekeeper.quota import Request
    from filekeeper.upload import reserve

    provider_env("openai")
    with Keeper() as keeper:
        account = keeper.account(provider="openai")
        a = keeper.ledger.ensure_account(account)
    ledger = open_ledger(keeper.settings)
    try:
        job = UploadJob(account, a, _Sized("a.pdf"), "assistants")  # type: ignore[arg-type]
        assert job.request == Request("a.pdf", 10, "assistants")
        made = reserve(ledger, job, "0" * 64 if hashed else None)
        assert made.record is not None
        with ledger.engine.connect() as conn:  # the one connection the pool has: the reservation's
            settings = (
                conn.exec_driver_sql("SHOW enable_bitmapscan").scalar(),
                conn.exec_driver_sql("SHOW enable_seqscan").scalar(),
            )
        assert settings == ("on", "on")
        assert ledger.engine.pool.checkedin() == 1
    finally:
        ledger.close()


def test_a_refusal_the_database_tests_leaves_no_driver_warning(
    postgres: Path, provider_env, caplog: pytest.LogCaptureFixture
) -> None:
    """The quick reservation's room test fails on purpose when there is no room; the pipelined
    COMMIT with it used to be waited for inside the pipeline, and psycopg then warned, now and
    then, as it ended the aborted pipeline ("error ignored terminating …"), on the user's terminal."""
    import logging

    from filekeeper.ledger import open_ledger

    provider_env("openai")
    with Keeper() as keeper:
        account = keeper.account(provider="openai")
        a = keeper.ledger.ensure_account(account)
    full = dataclasses.replace(account, limits=dataclasses.replace(account.limits, max_files=0))
    ledger = open_ledger(keeper.settings)
    try:

        def refuse(i: int) -> bool:
            made = reserve(ledger, UploadJob(full, a, _Sized(f"f{i}.pdf"), "assistants"), None)  # type: ignore[arg-type]
            return made.record is None and bool(made.violations)

        with caplog.at_level(logging.WARNING), ThreadPoolExecutor(4) as pool:  # as several uploads at once
            assert all(pool.map(refuse, range(60)))
        assert [r.getMessage() for r in caplog.records if r.name.startswith("psycopg")] == []
    finally:
        ledger.close()
    assert ledger_rows(postgres, "SELECT count(*) FROM files") == [(0,)]
    assert ledger_rows(postgres, "SELECT count(*) FROM events WHERE action = 'refuse'") == [(60,)]
