"""The reconciler against the emulator over a real socket: each category, each safety rail."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from filekeeper import Keeper
from filekeeper.reconcile import ReconcileOptions, reconcile
from tests.conftest import (
    KEY_VARS,
    SECRET,
    URL_VARS,
    actions,
    age_everything,
    as_json,
    backdate_baseline,
    baseline,
    emulator_ids,
    hold_lock,
    ledger_connection,
    ledger_rows,
    ledger_sql,
    run_on_terminal,
    upload,
    write,
)

HOUR_AGO = int(time.time()) - 7200
JSON_KEYS = {
    "account",
    "provider",
    "applied",
    "listed",
    "orphans",
    "missing",
    "expired",
    "pending",
    "drift",
    "deleted",
    "adopted",
    "skipped",
    "errors",
    "run_id",
    "key",
    "unclaimed",
    "generated",
    "gone",
    "unconfirmed",
    "reappeared",
    "intents_settled",
    "interrupted",
    "to_delete",
    "to_adopt",
    "young",
    "not_yet_listed",
    "restored",
}


def sql(home: Path, statement: str, *args: Any) -> None:
    ledger_sql(home, statement, *args)


def test_plan_changes_nothing_and_apply_deletes_old_orphans(provider_env, run, home: Path, tmp_path: Path) -> None:
    emu = provider_env("openai", page_size=3)
    kept = upload(run, tmp_path, "openai", "keep.txt")[0]
    baseline(run, "-p", "openai")  # what appears at the provider from now on, unknown, is an orphan
    old = [emu.add_file(f"orphan{i}.txt", 10 + i, created_at=HOUR_AGO) for i in range(5)]
    young = emu.add_file("young.txt", 5)
    before_events = actions(home)
    plan = run("reconcile", "-p", "openai", "--json")
    assert plan.exit_code == 0, plan.stderr
    body = plan.json()
    assert set(body) == JSON_KEYS and body["applied"] is False and body["listed"] == 7
    assert sorted(o["id"] for o in body["orphans"]) == sorted(f.id for f in old)
    assert [y["id"] for y in body["young"]] == [young.id]  # held back by --min-age, shown apart
    assert body["deleted"] == [] and body["run_id"] is None
    assert actions(home) == before_events and ledger_rows(home, "SELECT count(*) FROM reconcile_runs") == [(1,)]
    assert len(emulator_ids(emu)) == 7

    applied = run("reconcile", "-p", "openai", "--apply", "--json").json()
    assert sorted(applied["deleted"]) == sorted(f.id for f in old)
    assert [y["id"] for y in applied["young"]] == [young.id] and applied["skipped"] == []
    assert emulator_ids(emu) == {kept["id"], young.id}
    assert actions(home).count("reconcile_delete") == 5
    [_, (status, counts, listed)] = ledger_rows(home, "SELECT status, counts, listed FROM reconcile_runs ORDER BY id")
    assert status == "done" and listed == 7 and as_json(counts)["deleted"] == 5
    assert ledger_rows(home, "SELECT status FROM files") == [("active",)]


def test_adopt_and_delete_unclaimed_together_are_refused_before_any_request(provider_env, run, home: Path) -> None:
    emu = provider_env("openai")
    emu.add_file("theirs.txt", 3, created_at=HOUR_AGO)
    result = run("reconcile", "-p", "openai", "--apply", "--adopt", "--delete-unclaimed")
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert "--adopt or --delete-unclaimed, not both" in result.stderr
    assert emu.count("GET") == 0 and emu.count("DELETE") == 0


def test_all_with_no_account_to_reconcile_says_so(run, home: Path) -> None:
    """A cron job whose environment lost its keys must not pass for one with nothing to do."""
    for args in (("--apply",), ("--json",), ("--exit-code",)):
        result = run("reconcile", "--all", *args)
        assert result.exit_code == 2 and result.stdout == "" and result.stderr.count("\n") == 1
        assert "no account to reconcile" in result.stderr and "OPENAI_API_KEY" in result.stderr


def test_adopt_records_orphans_instead_of_deleting(provider_env, run, home: Path) -> None:
    emu = provider_env("zai")
    orphan = emu.add_file("found.pdf", 1234, purpose="agent", created_at=HOUR_AGO)
    result = run("reconcile", "-p", "zai", "--apply", "--adopt", "--json").json()
    assert result["adopted"] == [orphan.id] and result["deleted"] == []
    assert orphan.id in emulator_ids(emu)
    [record] = run("ls", "-p", "zai", "--json").json()
    assert (record["id"], record["filename"], record["bytes"], record["purpose"], record["status"]) == (
        orphan.id,
        "found.pdf",
        1234,
        "agent",
        "active",
    )
    assert "reconcile_adopt" in actions(home)


def test_missing_files_are_marked_and_stop_counting(provider_env, run, home: Path, tmp_path: Path) -> None:
    emu = provider_env("moonshot")
    a, b, c = upload(run, tmp_path, "moonshot", "a.txt", "b.txt", "c.txt")
    age_everything(home)  # a file uploaded a moment ago may simply not be listed yet
    with emu.lock:
        del emu.files[a["id"]]  # deleted in the provider's console
    result = run("reconcile", "-p", "moonshot", "--apply", "--json").json()
    assert [m["id"] for m in result["missing"]] == [a["id"]]
    assert ledger_rows(home, "SELECT file_id, status FROM files ORDER BY id") == [
        (a["id"], "missing"),
        (b["id"], "active"),
        (c["id"], "active"),
    ]
    assert run("usage", "-p", "moonshot", "--json").json()[0]["files"] == 2
    assert "reconcile_missing" in actions(home)


def test_expired_files_are_deleted_and_marked(provider_env, run, home: Path, tmp_path: Path) -> None:
    emu = provider_env("xai")
    a, b, c = upload(run, tmp_path, "xai", "a.txt", "b.txt", "c.txt")
    sql(home, "UPDATE files SET expires_at = '2020-01-01 00:00:00' WHERE file_id IN (?, ?)", a["id"], b["id"])
    with emu.lock:
        del emu.files[b["id"]]  # the provider dropped it itself (as Z.AI does at 180 days)
    plan = run("reconcile", "-p", "xai", "--json").json()
    assert {e["id"]: e["at_provider"] for e in plan["expired"]} == {a["id"]: True, b["id"]: False}
    result = run("reconcile", "-p", "xai", "--apply", "--json").json()
    assert result["deleted"] == [a["id"]]
    assert emulator_ids(emu) == {c["id"]}
    statuses = dict(ledger_rows(home, "SELECT file_id, status FROM files"))
    assert statuses == {a["id"]: "expired", b["id"]: "expired", c["id"]: "active"}
    assert {"reconcile_expire", "reconcile_expired"} <= set(actions(home))


def test_pending_reservations_are_settled_or_failed(provider_env, run, home: Path, tmp_path: Path) -> None:
    emu = provider_env("openai")
    write(home / "config.toml", "[http]\nbackoff_seconds = 0.01\n")
    # A lost response whose lookup also failed: the reservation stays pending, the file landed.
    emu.inject("POST", "/files", drop_response=True, after_store=True)
    emu.inject("GET", "/files", status=500, times=5)
    lost = run("upload", str(write(tmp_path / "lost.txt", "landed anyway")), "-p", "openai")
    assert lost.exit_code == 1 and "stays pending" in lost.stderr
    # A reservation whose process died before sending anything.
    emu.inject("POST", "/files", drop_response=True)
    emu.inject("GET", "/files", status=500, times=5)
    assert run("upload", str(write(tmp_path / "never.txt", "never sent")), "-p", "openai").exit_code == 1
    assert ledger_rows(home, "SELECT status FROM files ORDER BY id") == [("pending",), ("pending",)]
    [landed] = emulator_ids(emu)

    young = run("reconcile", "-p", "openai", "--json").json()  # both reservations are younger than 1h
    assert {p["outcome"] for p in young["pending"]} == {"waiting"}
    assert [o["id"] for o in young["young"]] == [landed]  # a moment old: held back, whoever made it

    age_everything(home)
    result = run("reconcile", "-p", "openai", "--apply", "--json").json()
    outcomes = {p["filename"]: p["outcome"] for p in result["pending"]}
    assert outcomes == {"lost.txt": "settled", "never.txt": "failed"}
    assert result["orphans"] == [] and result["deleted"] == []
    assert ledger_rows(home, "SELECT filename, status, file_id FROM files ORDER BY id") == [
        ("lost.txt", "active", landed),
        ("never.txt", "failed", None),
    ]
    assert run("usage", "-p", "openai", "--json").json()[0]["files"] == 1  # the failed one freed its quota


def test_a_reservation_two_listed_files_could_be_is_left_pending_and_both_kept(
    provider_env, run, home: Path, tmp_path: Path
) -> None:
    emu = provider_env("openai")
    write(home / "config.toml", "[http]\nbackoff_seconds = 0.01\n")
    upload(run, tmp_path, "openai", "kept.txt")
    baseline(run, "-p", "openai")
    # Our upload landed, its answer lost and the listing unreadable: pending. Then a teammate
    # uploads another file of the same name and size.
    emu.inject("POST", "/files", drop_response=True, after_store=True)
    emu.inject("GET", "/files", status=500, times=5)
    ours = write(tmp_path / "report.txt", "version two")
    assert run("upload", str(ours), "-p", "openai", "--force").exit_code == 1
    [landed] = emulator_ids(emu) - {
        r[0] for r in ledger_rows(home, "SELECT file_id FROM files WHERE file_id IS NOT NULL")
    }
    theirs = emu.add_file("report.txt", len("version two"))
    age_everything(home)
    result = run("reconcile", "-p", "openai", "--apply", "--min-age", "0", "--json")
    assert result.exit_code == 0, result.stderr
    body = result.json()
    [pending] = body["pending"]
    assert pending["outcome"] == "ambiguous" and sorted(pending["could_be"]) == sorted([landed, theirs.id])
    assert body["orphans"] == [] and body["deleted"] == [] and {landed, theirs.id} <= emulator_ids(emu)
    assert ledger_rows(home, "SELECT status FROM files WHERE filename = 'report.txt'") == [("pending",)]
    text = run("reconcile", "-p", "openai", "--min-age", "0").stdout
    assert "could be any of" in text and "left pending, all kept" in text
    # Once only one could be it (the teammate deleted theirs), it is settled onto ours.
    with emu.lock:
        del emu.files[theirs.id]
    again = run("reconcile", "-p", "openai", "--apply", "--min-age", "0", "--json").json()
    assert [(p["outcome"], p["settled_as"]) for p in again["pending"]] == [("settled", landed)]
    assert ledger_rows(home, "SELECT status, file_id FROM files WHERE filename = 'report.txt'") == [("active", landed)]


def test_drift_is_reported(provider_env, run, home: Path, tmp_path: Path) -> None:
    emu = provider_env("openai")
    [a] = upload(run, tmp_path, "openai", "a.txt")
    with emu.lock:
        emu.files[a["id"]].bytes = 99
        emu.files[a["id"]].filename = "renamed.txt"
    result = run("reconcile", "-p", "openai", "--apply", "--json").json()
    assert result["drift"] == [
        {
            "id": a["id"],
            "ledger": {"filename": "a.txt", "bytes": a["bytes"]},
            "provider": {"filename": "renamed.txt", "bytes": 99},
        }
    ]
    assert "reconcile_drift" in actions(home)
    assert ledger_rows(home, "SELECT status FROM files") == [("active",)]


# --- safety rails -----------------------------------------------------------------------------------


def _nothing_changed(home: Path, emu, before: tuple[list[Any], set[str]]) -> None:
    assert (ledger_rows(home, "SELECT id, status FROM files ORDER BY id"), emulator_ids(emu)) == before


def _state(home: Path, emu) -> tuple[list[Any], set[str]]:
    return ledger_rows(home, "SELECT id, status FROM files ORDER BY id"), emulator_ids(emu)


@pytest.mark.parametrize("failure", ["page", "auth", "cursor"])
def test_an_incomplete_listing_changes_nothing(failure: str, provider_env, run, home: Path, tmp_path: Path) -> None:
    emu = provider_env("openai", page_size=2)
    write(home / "config.toml", "[http]\nbackoff_seconds = 0.01\nattempts = 2\n")
    kept = upload(run, tmp_path, "openai", "a.txt", "b.txt", "c.txt")
    with emu.lock:
        del emu.files[kept[0]["id"]]  # would be "missing" on a complete listing
    for i in range(4):
        emu.add_file(f"orphan{i}.txt", 5, created_at=HOUR_AGO)
    before = _state(home, emu)
    if failure == "page":
        first_page_then_fail(emu)
    elif failure == "auth":
        emu.inject("GET", "/files", status=401, body=emu.error_body(401, "invalid key"), times=5)
    else:
        page = {"object": "list", "data": [], "has_more": True, "last_id": "file-same"}
        for i in range(5):
            page = {
                **page,
                "data": [
                    {
                        "id": f"file-r{i}",
                        "object": "file",
                        "bytes": 1,
                        "created_at": HOUR_AGO,
                        "filename": "r.txt",
                        "purpose": "assistants",
                    }
                ],
            }
            emu.inject("GET", "/files", status=200, body=page)
    result = run("reconcile", "-p", "openai", "--apply")
    assert result.exit_code == 1, result.stdout + result.stderr
    assert {"page": "listing failed after 1 page", "auth": "invalid key", "cursor": "repeated the cursor"}[
        failure
    ] in result.stderr
    _nothing_changed(home, emu, before)
    assert not any(a.startswith("reconcile_") for a in actions(home))
    assert ledger_rows(home, "SELECT status FROM reconcile_runs") == [("failed",)]


def first_page_then_fail(emu) -> None:
    """Answer the first list request with a real first page, then fail every later one."""
    with emu.lock:
        files = sorted(emu.files.values(), key=lambda f: (f.created_at, f.id))[:2]
    first = [emu.file_object(f) for f in files]
    emu.inject(
        "GET",
        "/files",
        status=200,
        body={"object": "list", "data": first, "has_more": True, "last_id": first[-1]["id"]},
    )
    emu.inject("GET", "/files", status=500, body=emu.error_body(500, "boom"), times=10)


def test_an_empty_listing_with_active_files_is_refused(provider_env, run, home: Path, tmp_path: Path) -> None:
    emu = provider_env("moonshot")
    upload(run, tmp_path, "moonshot", "a.txt", "b.txt")
    with emu.lock:
        emu.files.clear()  # what a wrong key (another, empty account) looks like
    before = _state(home, emu)
    for args in (["reconcile", "-p", "moonshot"], ["reconcile", "-p", "moonshot", "--apply"]):
        result = run(*args)
        assert result.exit_code == 1 and "listed no files while the ledger holds 2 active" in result.stderr
        assert "--accept-empty" in result.stderr
    _nothing_changed(home, emu, before)
    age_everything(home)  # young files may simply not be listed yet: only old ones are missing
    accepted = run("reconcile", "-p", "moonshot", "--apply", "--accept-empty", "--json").json()
    assert len(accepted["missing"]) == 2
    assert ledger_rows(home, "SELECT DISTINCT status FROM files") == [("missing",)]


def test_max_delete_refuses_the_whole_plan(provider_env, run, home: Path, tmp_path: Path) -> None:
    emu = provider_env("openai")
    baseline(run, "-p", "openai")  # this ledger has listed the account: unknown files are orphans
    for i in range(12):
        emu.add_file(f"o{i}.txt", 3, created_at=HOUR_AGO)
    before = _state(home, emu)
    result = run("reconcile", "-p", "openai", "--apply", "--max-delete", "10")
    assert result.exit_code == 1
    assert "would delete 12 files, more than --max-delete 10" in result.stderr
    assert "--max-delete 12" in result.stderr
    assert len(emulator_ids(emu)) == 12
    assert _state(home, emu) == before
    assert ledger_rows(home, "SELECT status FROM reconcile_runs ORDER BY id") == [("done",), ("aborted",)]
    pct = run("reconcile", "-p", "openai", "--apply", "--max-delete", "50%")
    assert pct.exit_code == 1 and "more than --max-delete 50%" in pct.stderr
    ok = run("reconcile", "-p", "openai", "--apply", "--max-delete", "100%", "--json")
    assert ok.exit_code == 0 and len(ok.json()["deleted"]) == 12
    bad = run("reconcile", "-p", "openai", "--max-delete", "lots")
    assert bad.exit_code == 2


def test_min_age_protects_young_orphans(provider_env, run, tmp_path: Path) -> None:
    emu = provider_env("openai")
    baseline(run, "-p", "openai")
    fresh = emu.add_file("fresh.txt", 3)
    result = run("reconcile", "-p", "openai", "--apply", "--min-age", "2h", "--json").json()
    assert result["deleted"] == [] and [y["id"] for y in result["young"]] == [fresh.id]
    assert fresh.id in emulator_ids(emu)
    now = run("reconcile", "-p", "openai", "--apply", "--min-age", "0", "--json").json()
    assert now["deleted"] == [fresh.id]


def test_one_applying_reconcile_per_account(provider_env, run, home: Path, tmp_path: Path) -> None:
    provider_env("openai")
    upload(run, tmp_path, "openai", "a.txt")
    hold_lock(home, os.getpid(), socket.gethostname())  # a live holder: this very test process
    busy = run("reconcile", "-p", "openai", "--apply")
    assert busy.exit_code == 1 and "another reconcile of this account is running" in busy.stderr
    assert "--wait" in busy.stderr
    assert run("reconcile", "-p", "openai").exit_code == 0  # a plan needs no lock


def test_a_dead_holder_is_abandoned(provider_env, run, home: Path, tmp_path: Path) -> None:
    provider_env("openai")
    upload(run, tmp_path, "openai", "a.txt")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    now = datetime.now(UTC)
    hold_lock(home, dead.pid, socket.gethostname(), heartbeat=now)  # gone, but a moment ago: not yet
    busy = run("reconcile", "-p", "openai", "--apply")
    assert busy.exit_code == 1 and "another reconcile" in busy.stderr
    ledger_sql(home, "UPDATE reconcile_runs SET heartbeat_at = ?", now - timedelta(minutes=2))
    hold_lock(home, 1, "another-host", heartbeat=datetime(2020, 1, 1, tzinfo=UTC))  # silent for years
    result = run("reconcile", "-p", "openai", "--apply")
    assert result.exit_code == 0, result.stderr
    assert ledger_rows(home, "SELECT status FROM reconcile_runs ORDER BY id") == [
        ("abandoned",),
        ("abandoned",),
        ("done",),
    ]
    assert actions(home).count("reconcile_abandoned") == 2


def test_wait_waits_for_the_holder(home: Path, emulators, run, tmp_path: Path) -> None:
    emu = emulators("openai")
    env = {**os.environ, "FILEKEEPER_HOME": str(home), KEY_VARS["openai"]: SECRET, URL_VARS["openai"]: emu.url}
    assert run("db", "upgrade").exit_code == 0
    from sqlalchemy import insert

    from filekeeper.schema import accounts

    with ledger_connection(home) as conn:
        conn.execute(
            insert(accounts).values(
                name="openai",
                provider="openai",
                base_url=emu.url,
                key_fingerprint=_fingerprint(),
                created_at=datetime.now(UTC),
            )
        )
    hold_lock(home, os.getpid(), socket.gethostname())
    proc = subprocess.Popen(
        [sys.executable, "-m", "filekeeper", "reconcile", "-p", "openai", "--apply", "--wait"],
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    line = proc.stderr.readline()  # blocks until the waiter says it is waiting
    assert "waiting for run #1 by someone@" in line
    sql(home, "UPDATE reconcile_runs SET status = 'done' WHERE id = 1")
    assert proc.wait(timeout=60) == 0, proc.stderr.read()
    assert ledger_rows(home, "SELECT status FROM reconcile_runs ORDER BY id") == [("done",), ("done",)]


def _fingerprint() -> str:
    from filekeeper.config import fingerprint

    return fingerprint(SECRET)


class RacingProvider:
    """The real adapter, plus something that happens between the listing and the deletes."""

    def __init__(self, real: Any, after_listing: Any) -> None:
        self.real = real
        self.name = real.name
        self.after_listing = after_listing

    def list_pages(self, **kwargs: Any) -> Iterator[Any]:
        yield from self.real.list_pages(**kwargs)
        self.after_listing()

    def delete(self, file_id: str) -> bool:
        return self.real.delete(file_id)

    def lists_purpose(self, purpose: str) -> bool:
        return self.real.lists_purpose(purpose)


# --- a listing begun before the lock -----------------------------------------------------------


def _runs_long_ago(home: Path) -> None:
    """As if every run so far had ended an hour ago."""
    hour_ago = datetime.now(UTC) - timedelta(hours=1)
    ledger_sql(home, "UPDATE reconcile_runs SET started_at = ?, heartbeat_at = ?, finished_at = ?", *[hour_ago] * 3)


def test_the_listing_begins_before_the_ledgers_modules_load(provider_env, home: Path) -> None:
    provider_env("openai")
    code = (
        "import sys\n"
        "from filekeeper.providers.base import Provider\n"
        "real = Provider.list_pages\n"
        "def list_pages(self, **kw):\n"
        "    print('ledger modules loaded:', 'sqlalchemy' in sys.modules, file=sys.stderr)\n"
        "    return real(self, **kw)\n"
        "Provider.list_pages = list_pages\n"
        "from filekeeper.cli import main\n"
        "sys.argv = ['filekeeper', 'reconcile', '-p', 'openai', '--apply']\n"
        "main()\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "ledger modules loaded: False" in out.stderr
    assert ledger_rows(home, "SELECT status FROM reconcile_runs") == [("done",)]


def _reconcile_on_a_listing_begun_early(emu: Any, meanwhile: Any = lambda: None) -> tuple[Any, int, int]:
    """An applying reconcile of the openai account handed a listing begun before it, read to its
    end before ``meanwhile()`` runs: the plan, and the list and delete requests the run made."""
    with Keeper() as keeper:
        acct = keeper.account(provider="openai")
        account_id = keeper.ledger.ensure_account(acct)
        remote = keeper.connect(acct)
        try:
            early = remote.list_pages(track_ids=False)
            early.thread.join(30)
            assert not early.thread.is_alive()
            meanwhile()
            lists, deletes = emu.count("GET", "/files"), emu.count("DELETE")
            plan = reconcile(keeper.ledger, acct, account_id, remote, ReconcileOptions(apply=True), listing=early)
        finally:
            remote.close()
    return plan, emu.count("GET", "/files") - lists, emu.count("DELETE") - deletes


def test_a_listing_begun_before_the_lock_is_used_when_no_other_run_was_at_work(
    provider_env, run, home: Path, tmp_path: Path
) -> None:
    emu = provider_env("openai", page_size=2)
    upload(run, tmp_path, "openai", "a.txt", "b.txt", "c.txt")
    baseline(run, "-p", "openai")
    _runs_long_ago(home)
    orphans = {emu.add_file(f"orphan-{i}.txt", 3, created_at=HOUR_AGO).id for i in range(2)}
    plan, lists, deletes = _reconcile_on_a_listing_begun_early(emu)
    assert set(plan.deleted) == orphans and plan.listed == 5 and deletes == 2
    assert lists == 0  # the five files, in pages of two, were listed once: before the run


@pytest.mark.parametrize("other", ["finished", "died"])
def test_a_listing_begun_before_another_run_acted_is_not_used(
    provider_env, run, home: Path, tmp_path: Path, other: str
) -> None:
    """Begun before the lock was taken, a listing may show files another run deleted meanwhile:
    the run lists again, and neither deletes nor says it deleted what another run did."""
    emu = provider_env("openai")
    upload(run, tmp_path, "openai", "ours.txt")
    baseline(run, "-p", "openai")
    _runs_long_ago(home)
    orphans = {emu.add_file(f"orphan-{i}.txt", 3, created_at=HOUR_AGO).id for i in range(3)}

    def another_run() -> None:
        if other == "finished":
            done = run("reconcile", "-p", "openai", "--apply", "--min-age", "0", "--json")
            assert set(done.json()["deleted"]) == orphans
        else:  # a run whose deletes went through, killed before it recorded them
            dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
            hold_lock(home, int(dead.stdout), socket.gethostname(), datetime.now(UTC) - timedelta(minutes=5))
            with emu.lock:
                for file_id in orphans:
                    del emu.files[file_id]

    plan, lists, deletes = _reconcile_on_a_listing_begun_early(emu, another_run)
    assert plan.deleted == [] and plan.listed == 1 and deletes == 0
    assert lists == 1  # listed again


def test_each_delete_is_rechecked_and_404_is_success(provider_env, run, home: Path, tmp_path: Path) -> None:
    emu = provider_env("openai")
    baseline(run, "-p", "openai")
    became_active = emu.add_file("racing.txt", 3, created_at=HOUR_AGO)
    vanished = emu.add_file("vanished.txt", 4, created_at=HOUR_AGO)
    plain = emu.add_file("plain.txt", 5, created_at=HOUR_AGO)
    with Keeper() as keeper:
        [ours] = keeper.upload_files([write(tmp_path / "ours.txt", "ours")], provider="openai")
        acct = keeper.account(provider="openai")
        account_id = keeper.ledger.ensure_account(acct)

        def meanwhile() -> None:
            # another process adopts one orphan, and someone deletes another in the console
            from sqlalchemy import insert

            from filekeeper.schema import files

            with ledger_connection(home) as conn:
                conn.execute(
                    insert(files).values(
                        account_id=account_id,
                        file_id=became_active.id,
                        filename="racing.txt",
                        bytes=3,
                        purpose="assistants",
                        status="active",
                        created_at=datetime.now(UTC),
                    )
                )
            with emu.lock:
                del emu.files[vanished.id]

        remote = RacingProvider(keeper.connect(acct), meanwhile)
        report = reconcile(keeper.ledger, acct, account_id, remote, ReconcileOptions(apply=True))  # type: ignore[arg-type]
        remote.real.close()
    assert sorted(report.deleted) == sorted([vanished.id, plain.id])
    assert report.skipped == [(became_active.id, "became active in the ledger since the listing")]
    assert emulator_ids(emu) == {became_active.id, ours.id}
    [(detail,)] = ledger_rows(
        home, "SELECT detail FROM events WHERE file_id = ? AND action = 'reconcile_delete'", vanished.id
    )
    assert as_json(detail)["already_gone"] is True


class DeletingProvider:
    """The real adapter, whose deletes first run ``on_delete(self, n)`` (the n-th delete, from 1)."""

    def __init__(self, real: Any, on_delete: Any) -> None:
        self.real = real
        self.name = real.name
        self.on_delete = on_delete
        self.sent: list[str] = []
        self.lock = threading.Lock()

    def list_pages(self, **kwargs: Any) -> Iterator[Any]:
        yield from self.real.list_pages(**kwargs)

    def delete(self, file_id: str) -> bool:
        with self.lock:
            self.sent.append(file_id)
            n = len(self.sent)
        self.on_delete(self, n)
        return self.real.delete(file_id)

    def lists_purpose(self, purpose: str) -> bool:
        return self.real.lists_purpose(purpose)


def _adopt(home: Path, account_id: int, file_id: str) -> None:
    """Another process records ``file_id`` as its own active file."""
    from sqlalchemy import insert

    from filekeeper.schema import files

    with ledger_connection(home) as conn:
        conn.execute(
            insert(files).values(
                account_id=account_id,
                file_id=file_id,
                filename="adopted.txt",
                bytes=1,
                purpose="assistants",
                status="active",
                created_at=datetime.now(UTC),
            )
        )


def _reconcile_recording_unsent(
    home: Path, orphans: set[str], *, held: int, recorder: int
) -> tuple[Any, DeletingProvider, set[str]]:
    """An applying reconcile with two deletes in flight at most, in which the ``recorder``-th
    delete, before it goes, records every orphan not yet sent as another process's file, and the
    ``held``-th is held until then. Returns the plan, the remote and the orphans recorded."""
    adopted: set[str] = set()
    recorded = threading.Event()

    def on_delete(remote: DeletingProvider, n: int) -> None:
        if n == held:
            assert recorded.wait(timeout=30)
        if n == recorder:
            adopted.update(orphans - set(remote.sent))
            for file_id in adopted:
                _adopt(home, account_id, file_id)
            recorded.set()

    with Keeper() as keeper:
        acct = keeper.account(provider="openai")
        account_id = keeper.ledger.ensure_account(acct)
        remote = DeletingProvider(keeper.connect(acct), on_delete)
        try:
            options = ReconcileOptions(apply=True, concurrency=2)
            report = reconcile(keeper.ledger, acct, account_id, remote, options)  # type: ignore[arg-type]
        finally:
            remote.real.close()
    return report, remote, adopted


def test_a_file_recorded_while_the_deletes_run_is_not_deleted(provider_env, run, home: Path) -> None:
    """Each delete is re-checked right before it is sent, not once for all after the listing:
    orphans another process records while the first deletes are out are skipped."""
    emu = provider_env("openai")
    baseline(run, "-p", "openai")
    orphans = {emu.add_file(f"orphan{i}.txt", 10 + i, created_at=HOUR_AGO).id for i in range(8)}
    # The first two deletes are out at once, and nothing else is sent before the first returns.
    report, remote, adopted = _reconcile_recording_unsent(home, orphans, held=1, recorder=2)
    assert len(remote.sent) == 2 and len(adopted) == 6
    assert sorted(report.skipped) == sorted((f, "became active in the ledger since the listing") for f in adopted)
    assert emulator_ids(emu) == adopted


def test_a_delete_waiting_for_a_slot_is_re_checked_when_its_slot_comes(provider_env, run, home: Path) -> None:
    """No delete is re-checked ahead of its turn: one waiting for a free slot while another
    process records the file is not sent on the earlier look. (Re-checks read a batch ahead, up
    to 1 s old, let such deletes through: found trying the change as an unlucky user would.)"""
    emu = provider_env("openai")
    baseline(run, "-p", "openai")
    orphans = {emu.add_file(f"orphan{i}.txt", 10 + i, created_at=HOUR_AGO).id for i in range(4)}
    # The 2nd delete is held until the 3rd is out: when the 1st returns, one slot is free and the
    # 3rd goes; the 4th waits for a slot, and is recorded as another's meanwhile.
    report, remote, adopted = _reconcile_recording_unsent(home, orphans, held=2, recorder=3)
    assert len(remote.sent) == 3 and len(adopted) == 1
    assert report.skipped == [(f, "became active in the ledger since the listing") for f in adopted]
    assert emulator_ids(emu) == adopted


@pytest.mark.parametrize("meanwhile", ["recorded", "nothing"])
def test_a_delete_retried_after_a_429_is_re_checked_before_it_is_sent_again(
    provider_env, run, home: Path, meanwhile: str
) -> None:
    """A 429's Retry-After may put a minute between a delete's first attempt and its retry: if
    another process recorded the file meanwhile, the retry is not sent, and the plan says why."""
    emu = provider_env("openai")
    baseline(run, "-p", "openai")
    orphan = emu.add_file("orphan.txt", 10, created_at=HOUR_AGO).id
    emu.inject("DELETE", f"/files/{orphan}", status=429, headers={"Retry-After": "0"}, body={"error": {}})

    def on_delete(_remote: DeletingProvider, _n: int) -> None:
        if meanwhile == "recorded":  # after the loop's re-check, before the first attempt's 429
            _adopt(home, account_id, orphan)

    with Keeper() as keeper:
        acct = keeper.account(provider="openai")
        account_id = keeper.ledger.ensure_account(acct)
        remote = DeletingProvider(keeper.connect(acct), on_delete)
        try:
            report = reconcile(keeper.ledger, acct, account_id, remote, ReconcileOptions(apply=True))  # type: ignore[arg-type]
        finally:
            remote.real.close()
    if meanwhile == "nothing":
        assert report.deleted == [orphan] and report.skipped == [] and emu.count("DELETE") == 2
        return
    assert emu.count("DELETE") == 1 and orphan in emulator_ids(emu)
    assert report.deleted == [] and report.errors == []
    [(file_id, why)] = report.skipped
    assert file_id == orphan and why.startswith("not sent again after: ") and "429" in why
    assert why.endswith("became active in the ledger since the listing")
    # the first attempt's intent stays for the next run, which finds the file there: voided
    assert ledger_rows(home, "SELECT count(*) FROM delete_intents") == [(1,)]
    again = run("reconcile", "-p", "openai", "--apply", "--json")
    assert again.exit_code == 0 and again.json()["deleted"] == []
    assert ledger_rows(home, "SELECT count(*) FROM delete_intents") == [(0,)]
    assert ledger_rows(home, "SELECT status FROM files WHERE file_id = ?", orphan) == [("active",)]


# --- cron ---------------------------------------------------------------------------------------------


def test_quiet_when_nothing_to_do_and_exit_codes(provider_env, run, tmp_path: Path) -> None:
    emu = provider_env("openai")
    upload(run, tmp_path, "openai", "a.txt")
    clean = run("reconcile", "-p", "openai", "--apply", "--exit-code")
    assert (clean.exit_code, clean.stdout, clean.stderr) == (0, "", "")
    backdate_baseline()
    emu.add_file("orphan.txt", 3, created_at=HOUR_AGO)
    plan = run("reconcile", "-p", "openai", "--exit-code")
    assert plan.exit_code == 4 and "orphans" in plan.stdout and "plan only" in plan.stdout
    assert run("reconcile", "-p", "openai").exit_code == 0
    applied = run("reconcile", "-p", "openai", "--apply", "--exit-code")
    assert applied.exit_code == 4 and "deleted 1" in applied.stdout
    assert run("reconcile", "-p", "openai", "--apply", "--exit-code").exit_code == 0


def test_all_accounts(home: Path, emulators, run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = emulators("openai"), emulators("moonshot")
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("OPENAI_BASE_URL", a.url)
    write(
        home / "config.toml",
        f'[accounts.team]\nprovider = "moonshot"\napi_key_env = "TEAM_KEY"\nbase_url = "{b.url}"\n',
    )
    monkeypatch.setenv("TEAM_KEY", SECRET)
    upload(run, tmp_path, "openai", "ours.txt")
    assert run("upload", str(write(tmp_path / "team.txt", "team")), "--account", "team").exit_code == 0
    baseline(run, "--all")
    a.add_file("x.txt", 1, created_at=HOUR_AGO)
    b.add_file("y.txt", 2, created_at=HOUR_AGO)
    result = run("reconcile", "--all", "--apply", "--json")
    assert result.exit_code == 0, result.stderr
    assert {r["account"]: len(r["deleted"]) for r in result.json()} == {"openai": 1, "team": 1}
    assert run("reconcile", "--all", "-p", "openai").exit_code == 2
    # An account only the (shared) ledger knows, with no key on this host, is not ours to reconcile.
    monkeypatch.delenv("OPENAI_API_KEY")
    again = run("reconcile", "--all", "--apply", "--json")
    assert again.exit_code == 0, again.stderr
    assert [r["account"] for r in again.json()] == ["team"]


def test_reconcile_while_uploads_run_loses_nothing(home: Path, emulators, tmp_path: Path) -> None:
    """Cron every five minutes on an account being uploaded to: the two always end up agreeing."""
    emu = emulators("openai", latency=0.01)
    env = {**os.environ, "FILEKEEPER_HOME": str(home), KEY_VARS["openai"]: SECRET, URL_VARS["openai"]: emu.url}
    subprocess.run([sys.executable, "-m", "filekeeper", "db", "upgrade"], env=env, check=True, capture_output=True)
    procs = []
    for p in range(4):
        paths = [str(write(tmp_path / f"p{p}" / f"f{i}.txt", f"{p}-{i}")) for i in range(4)]
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "filekeeper", "upload", *paths, "-p", "openai"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    for _ in range(3):
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "filekeeper",
                    "reconcile",
                    "-p",
                    "openai",
                    "--apply",
                    "--wait",
                    "--accept-empty",
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    codes = [p.wait(timeout=120) for p in procs]
    assert codes == [0] * 7, [p.stderr.read() for p in procs if p.stderr]
    active = {i for (i,) in ledger_rows(home, "SELECT file_id FROM files WHERE status = 'active'")}
    assert len(active) == 16 and active == emulator_ids(emu)
    assert ledger_rows(home, "SELECT count(*) FROM files WHERE status != 'active'") == [(0,)]


def test_progress_on_a_terminal_only(provider_env, run, home: Path, tmp_path: Path) -> None:
    emu = provider_env("openai", page_size=2)
    baseline(run, "-p", "openai")
    for i in range(5):
        emu.add_file(f"o{i}.txt", 1, created_at=HOUR_AGO)
    env = {**os.environ}
    code, shown = run_on_terminal("reconcile", "-p", "openai", "--apply", env=env)
    assert code == 0
    assert "reconcile: listing" in shown and "reconcile: deleting 5/5" in shown
    piped = subprocess.run(
        [sys.executable, "-m", "filekeeper", "reconcile", "-p", "openai"], env=env, capture_output=True, text=True
    )
    assert "reconcile: listing" not in piped.stderr


def test_timestamps_are_utc(provider_env, run, home: Path) -> None:
    emu = provider_env("zai", ms_timestamps=True)
    created = int(datetime(2026, 1, 2, tzinfo=UTC).timestamp())
    emu.add_file("ms.pdf", 3, purpose="agent", created_at=created)
    [orphan] = run("reconcile", "-p", "zai", "--json").json()["unclaimed"]  # a ledger new to the account
    assert orphan["created_at"] == "2026-01-02T00:00:00Z"
    assert datetime.now(UTC) - timedelta(days=400) < datetime(2026, 1, 2, tzinfo=UTC)


@pytest.mark.parametrize("flavor", ["openai", "gemini"])
def test_a_reservation_never_takes_a_file_its_content_rules_out(
    flavor: str, provider_env, run, home: Path, tmp_path: Path
) -> None:
    emu = provider_env(flavor)
    write(home / "config.toml", "[http]\nbackoff_seconds = 0.01\n")
    baseline(run, "-p", flavor)
    emu.inject("POST", "/files", drop_response=True)  # never stored; the listing then unreadable
    emu.inject("GET", "/files", status=500, times=5)
    assert run("upload", str(write(tmp_path / "report.txt", "ours, never landed")), "-p", flavor).exit_code == 1
    if flavor == "openai":
        # As a kill in the middle of the body leaves it: reserved, its content never sent whole
        # (then no hash is noted), so it cannot have landed.
        ledger_sql(home, "UPDATE files SET sha256 = NULL")
    theirs = emu.add_file("report.txt", len("ours, never landed"))  # a teammate's, same name and size
    age_everything(home)
    result = run("reconcile", "-p", flavor, "--min-age", "0", "--apply", "--json").json()
    # Gemini's hash says it is not ours: failed. Without a hash, and our content never sent
    # whole, it cannot be proven ours: left pending, their file kept, neither taken nor deleted.
    expected = "failed" if flavor == "gemini" else "ambiguous"
    assert [p["outcome"] for p in result["pending"]] == [expected], result["pending"]
    if flavor == "gemini":  # not ours, proven: an unknown file after the baseline, an orphan like any other
        assert result["deleted"] == [theirs.id]
    else:
        assert result["deleted"] == [] and theirs.id in emulator_ids(emu)
    assert ledger_rows(home, "SELECT status FROM files WHERE filename = 'report.txt'") == [
        ("failed" if flavor == "gemini" else "pending",)
    ]
