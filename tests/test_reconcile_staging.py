"""The staged listing: a reconcile that diffs in the ledger gives the plan it always gave, whatever
the page size, however its categories are read back, and never trusts a listing that did not end."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from filekeeper import Keeper
from filekeeper import reconcile_plan as rp
from filekeeper.errors import IncompleteListing, LedgerError
from filekeeper.ledger import Stage
from filekeeper.providers import RemoteFile
from tests.conftest import age_everything, baseline, emulator_ids, ledger_rows, ledger_sql, upload, write
from tests.test_reconcile import HOUR_AGO, first_page_then_fail


def _account(provider_env, run, home: Path, tmp_path: Path) -> Any:
    """An openai account with something in every category a plan can show."""
    emu = provider_env("openai")
    kept = upload(run, tmp_path, "openai", *(f"keep{i}.txt" for i in range(6)))
    baseline(run, "-p", "openai")
    age_everything(home)
    for i in range(7):
        emu.add_file(f"orphan{i}.txt", 10 + i, created_at=HOUR_AGO - i)
    emu.add_file("young.txt", 5, created_at=int(time.time()) - 600)  # its age reads "10m" throughout
    emu.add_file("result.jsonl", 99, purpose="batch_output", created_at=HOUR_AGO)
    with emu.lock:
        del emu.files[kept[0]["id"]]  # missing, once a retrieve proves it
        emu.files[kept[1]["id"]].filename = "renamed.txt"  # drift
    past = datetime.now(UTC) - timedelta(days=1)
    ledger_sql(home, "UPDATE files SET expires_at = ? WHERE file_id = ?", past.replace(tzinfo=None), kept[2]["id"])
    return emu, kept


def _plan(run, *args: str) -> tuple[Any, str]:
    as_json = run("reconcile", "-p", "openai", "--json", *args)
    assert as_json.exit_code == 0, as_json.stderr
    text = run("reconcile", "-p", "openai", *args)
    assert text.exit_code == 0, text.stderr
    return as_json.json(), text.stdout


def test_the_plan_is_the_same_in_one_page_or_many(provider_env, run, home: Path, tmp_path: Path, monkeypatch) -> None:
    emu, kept = _account(provider_env, run, home, tmp_path)
    one_page, one_text = _plan(run)
    assert one_page["listed"] == 6 - 1 + 7 + 2 and len(one_page["orphans"]) == 7
    assert [m["id"] for m in one_page["missing"]] == [kept[0]["id"]]
    assert [d["id"] for d in one_page["drift"]] == [kept[1]["id"]]
    assert [e["id"] for e in one_page["expired"]] == [kept[2]["id"]]
    assert len(one_page["generated"]) == 1 and len(one_page["young"]) == 1
    emu.page_size = 1  # a request per file
    assert _plan(run) == (one_page, one_text)
    # Every staged category read back a few rows at a time, and none read into memory.
    monkeypatch.setattr(Stage, "CHUNK", 2)
    monkeypatch.setattr(rp, "DETACH_AT", 0)
    emu.page_size = 3
    assert _plan(run) == (one_page, one_text)
    assert _plan(run, "--adopt") != (one_page, one_text)  # the comparison can tell plans apart


def test_apply_over_many_pages_deletes_exactly_the_orphans(
    provider_env, run, home: Path, tmp_path: Path, monkeypatch
) -> None:
    emu, kept = _account(provider_env, run, home, tmp_path)
    orphans = sorted(o["id"] for o in _plan(run)[0]["orphans"])
    monkeypatch.setattr(Stage, "CHUNK", 2)
    monkeypatch.setattr(rp, "DETACH_AT", 0)
    emu.page_size = 2
    applied = run("reconcile", "-p", "openai", "--apply", "--json")
    assert applied.exit_code == 0, applied.stderr
    body = applied.json()
    assert sorted(body["deleted"]) == sorted([*orphans, kept[2]["id"]])  # and the expired file
    assert not set(orphans) & emulator_ids(emu) and kept[3]["id"] in emulator_ids(emu)
    assert _plan(run)[0]["orphans"] == []


def _staging_tables(home: Path) -> int:
    """TEMP staging tables any session of the database still holds (PostgreSQL shows them all)."""
    if not os.environ.get("FILEKEEPER_DATABASE_URL"):
        return 0  # SQLite keeps a connection's TEMP tables out of every other connection's sight
    return ledger_rows(home, "SELECT count(*) FROM pg_class WHERE relname LIKE 'fk_listed_%'")[0][0]


def test_an_interrupted_listing_leaves_nothing_a_later_run_trusts(
    provider_env, run, home: Path, tmp_path: Path
) -> None:
    emu = provider_env("openai", page_size=2)
    write(home / "config.toml", "[http]\nbackoff_seconds = 0.01\nattempts = 2\n")
    upload(run, tmp_path, "openai", "a.txt", "b.txt", "c.txt")
    baseline(run, "-p", "openai")
    age_everything(home)
    orphans = {emu.add_file(f"orphan{i}.txt", 5, created_at=HOUR_AGO).id for i in range(3)}
    first_page_then_fail(emu)
    with Keeper() as keeper:
        with pytest.raises(IncompleteListing, match="listing failed after 1 page"):
            keeper.reconcile(provider="openai")
        assert _staging_tables(home) == 0
        with emu.lock:
            emu._faults.clear()
        # The same ledger, likely the same connections: the next run lists all over again.
        plan = keeper.reconcile(provider="openai")
        assert plan.listed == 6 and {o.id for o in plan.orphans} == orphans
        plan.close()
        assert _staging_tables(home) == 0
    assert emulator_ids(emu) >= orphans


def _remote(file_id: str) -> RemoteFile:
    return RemoteFile(file_id, f"{file_id}.txt", 1, datetime.now(UTC), "assistants", "processed", None)


def test_a_stage_is_read_only_once_its_listing_is_complete_and_only_by_its_run(home: Path) -> None:
    with Keeper() as keeper, Keeper() as other:
        first = keeper.ledger.stage(None, "openai")
        second = keeper.ledger.stage(None, "openai")  # another run of this process
        third = other.ledger.stage(None, "openai")  # another process, or another machine
        try:
            assert first.add_page([_remote("file-a"), _remote("file-b")]) is None
            with pytest.raises(LedgerError, match="did not complete"):
                first.seqs_of(["file-a"])
            with pytest.raises(LedgerError, match="did not complete"):
                next(first.candidates(datetime.now(UTC)))
            # The same file in two runs' listings is no repeat: each sees its own listing only.
            assert second.add_page([_remote("file-b")]) is None
            assert third.add_page([_remote("file-c")]) is None
            assert first.add_page([_remote("file-d"), _remote("file-a")]) == "file-a"  # listed twice
            for stage in (first, second, third):
                stage.finish()
            assert first.seqs_of(["file-a", "file-b", "file-c", "file-d"]) == {"file-a": 0, "file-b": 1}
            assert second.seqs_of(["file-a", "file-b", "file-c"]) == {"file-b": 0}
            assert third.seqs_of(["file-a", "file-b", "file-c"]) == {"file-c": 0}
            assert (first.listed, second.listed, third.listed) == (2, 1, 1)
        finally:
            for stage in (first, second, third):
                stage.close()
        with pytest.raises(LedgerError, match="closed"):
            first.seqs_of(["file-a"])
