"""Reconcile never deletes what it should keep: each situation where it once did, over a real socket.

Each test here failed on main before the rails it names existed: another account's key, two
accounts that are one, a ledger that never saw the account, an absence nobody proved, files the
provider made, listings that cycle or repeat, a second run beside a live one, deletes cut off by
kill -9, SIGTERM or a dropped connection, and a plan that wrote to the ledger.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from filekeeper import Keeper, ReconcileOptions
from filekeeper.providers.base import LIST_AHEAD_PAGES
from tests.conftest import (
    KEY_VARS,
    SECRET,
    URL_VARS,
    actions,
    age_everything,
    as_json,
    backdate_baseline,
    baseline,
    hold_lock,
    ledger_rows,
    ledger_sql,
    upload,
    write,
)
from tests.emulator import MAIN

HOUR_AGO = int(time.time()) - 7200
DAY = 86400
TEAMMATE = "sk-fk-teammate-0a9b8c7d6e5f4a3b2c1d"
NEW_KEY = "sk-fk-rotated-1f2e3d4c5b6a7f8e9d0c"


def statuses(home: Path) -> dict[str, str]:
    """file id -> status of every ledger row that has a provider id."""
    return dict(ledger_rows(home, "SELECT file_id, status FROM files WHERE file_id IS NOT NULL"))


def reconcile_actions(home: Path) -> list[str]:
    return [a for a in actions(home) if a.startswith("reconcile_") and a != "reconcile_abandoned"]


def agree(home: Path, emu, owner: str = MAIN) -> None:
    """Ledger == provider: the rows the ledger expects at the provider are exactly what it holds."""
    query = "SELECT file_id FROM files WHERE status IN ('active', 'unclaimed', 'generated')"
    expected = {i for (i,) in ledger_rows(home, query)}
    assert expected == emu.ids(owner)


# --- 1. identity ------------------------------------------------------------------------------------


def test_another_accounts_key_changes_nothing_and_a_rotated_key_is_proven(
    provider_env, run, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    emu = provider_env("moonshot")
    ours = {r["id"] for r in upload(run, tmp_path, "moonshot", "a.txt", "b.txt", "c.txt")}
    age_everything(home)
    emu.add_key(TEAMMATE, "teammate")
    theirs = {emu.add_file(f"t{i}.txt", 10 + i, created_at=HOUR_AGO, owner="teammate").id for i in range(3)}
    before = (statuses(home), actions(home))

    monkeypatch.setenv("MOONSHOT_API_KEY", TEAMMATE)  # a teammate's valid key, by mistake
    wrong = run("reconcile", "-p", "moonshot", "--apply")
    assert wrong.exit_code == 1, wrong.stdout + wrong.stderr
    assert "this API key" in wrong.stderr and "was never shown to reach this account" in wrong.stderr
    assert "shows 0 of the 3 files" in wrong.stderr
    assert "--trust-key" in wrong.stderr and "MOONSHOT_API_KEY" in wrong.stderr
    assert TEAMMATE not in wrong.stderr
    assert emu.ids("teammate") == theirs and emu.ids() == ours
    assert statuses(home) == before[0] and reconcile_actions(home) == []
    assert "account_changed" not in actions(home)  # the key is not recorded as the account's
    assert ledger_rows(home, "SELECT status FROM reconcile_runs") == [("aborted",)]

    monkeypatch.setenv("MOONSHOT_API_KEY", SECRET)  # back on our own key: nothing of ours is an orphan
    back = run("reconcile", "-p", "moonshot", "--apply", "--json")
    assert back.exit_code == 0, back.stderr
    assert back.json()["deleted"] == [] and back.json()["missing"] == []
    assert emu.ids() == ours and set(statuses(home).values()) == {"active"}

    emu.add_key(NEW_KEY, MAIN)  # the same account's new key: the listing proves it
    monkeypatch.setenv("MOONSHOT_API_KEY", NEW_KEY)
    rotated = run("reconcile", "-p", "moonshot", "--apply", "--json")
    assert rotated.exit_code == 0, rotated.stderr
    assert rotated.json()["key"] == "rotated"
    [(detail,)] = ledger_rows(home, "SELECT detail FROM events WHERE action = 'key_rotated'")
    assert as_json(detail)["proven_by"] == "listing"
    again = run("reconcile", "-p", "moonshot", "--apply", "--json").json()
    assert again["key"] == "known" and actions(home).count("key_rotated") == 1
    assert emu.ids() == ours


def test_after_a_wrong_key_on_the_accounts_first_command_the_right_one_is_trusted_once(
    provider_env, run, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wrong key on an account's very first command (401) is its first key all the same: the
    ledger cannot tell which key put which file there, so accepting the next key by itself would
    let a teammate's in too (the case below). The right key's first reconcile is refused, saying
    so and what to do; --trust-key once, and it is known."""
    emu = provider_env("openai")
    monkeypatch.setenv("OPENAI_API_KEY", TEAMMATE)  # valid nowhere: every request refused
    refused = run("upload", str(write(tmp_path / "a.txt", "a")), "-p", "openai")
    assert refused.exit_code == 1 and "401" in refused.stderr
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    ours = {r["id"] for r in upload(run, tmp_path, "openai", "b.txt", "c.txt")}
    age_everything(home)
    plan = run("reconcile", "-p", "openai", "--apply")
    assert plan.exit_code == 1 and "--trust-key" in plan.stderr and "Nothing was changed" in plan.stderr
    trusted = run("reconcile", "-p", "openai", "--apply", "--trust-key")
    assert trusted.exit_code == 0, trusted.stderr
    assert "a new API key or URL for this account, accepted: --trust-key" in trusted.stdout  # said, though no work
    assert run("reconcile", "-p", "openai", "--apply", "--json").json()["key"] == "known"
    assert emu.ids() == ours and set(statuses(home).values()) == {"active"}


def test_a_teammates_key_that_uploaded_through_the_account_cannot_take_it_over(
    provider_env, run, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The account's first command used our key and never reached the provider (refused by quota);
    a CI job with a teammate's key uploaded through it; we uploaded too. The teammate's key, whose
    listing shows none of our files, is refused, and nothing of theirs or ours is deleted."""
    emu = provider_env("openai")
    write(home / "config.toml", "[providers.openai]\nmax_file_bytes = 100\n")
    big = run("upload", str(write(tmp_path / "big.txt", "x" * 200)), "-p", "openai")
    assert big.exit_code == 3, big.stderr
    emu.add_key(TEAMMATE, "teammate")
    monkeypatch.setenv("OPENAI_API_KEY", TEAMMATE)
    theirs = {r["id"] for r in upload(run, tmp_path, "openai", "ci1.txt", "ci2.txt")}
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    ours = {r["id"] for r in upload(run, tmp_path, "openai", "m1.txt")}
    age_everything(home)
    monkeypatch.setenv("OPENAI_API_KEY", TEAMMATE)
    wrong = run("reconcile", "-p", "openai", "--apply")
    assert wrong.exit_code == 1 and "was never shown to reach this account" in wrong.stderr
    emu.add_file("team1.txt", 5, created_at=HOUR_AGO, owner="teammate")
    again = run("reconcile", "-p", "openai", "--apply", "--min-age", "0")
    assert again.exit_code == 1 and "was never shown to reach this account" in again.stderr
    assert theirs < emu.ids("teammate") and emu.ids() == ours
    assert ledger_rows(home, "SELECT count(*) FROM reconcile_runs WHERE status = 'finished'") == [(0,)]


@pytest.mark.parametrize("then", ["deleted", "reconciled empty"])
def test_a_key_after_one_that_reached_the_account_must_still_prove_itself(
    provider_env, run, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, then: str
) -> None:
    """A key the account was used with before that reached the provider (a file it uploaded, deleted
    since; an applied listing of the account, empty) makes any later one prove itself."""
    emu = provider_env("openai")
    if then == "deleted":
        [a] = upload(run, tmp_path, "openai", "a.txt")
        assert run("delete", a["id"], "-p", "openai").exit_code == 0
    else:
        done = run("reconcile", "-p", "openai", "--apply", "--json")
        assert done.exit_code == 0, done.stderr
        assert done.json()["listed"] == 0 and ledger_rows(home, "SELECT count(*) FROM files") == [(0,)]
    assert emu.ids() == set()
    emu.add_key(TEAMMATE, "teammate")
    theirs = {emu.add_file(f"t{i}.txt", 10 + i, created_at=HOUR_AGO, owner="teammate").id for i in range(3)}
    monkeypatch.setenv("OPENAI_API_KEY", TEAMMATE)
    wrong = run("reconcile", "-p", "openai", "--apply")
    assert wrong.exit_code == 1 and "was never shown to reach this account" in wrong.stderr
    assert emu.ids("teammate") == theirs


def test_trust_key_accepts_a_new_key_that_cannot_prove_itself(
    provider_env, run, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    emu = provider_env("openai")
    [ours] = upload(run, tmp_path, "openai", "a.txt")
    with emu.lock:
        del emu.files[ours["id"]]  # gone: the new key's listing cannot show it
    emu.add_key(NEW_KEY, MAIN)
    monkeypatch.setenv("OPENAI_API_KEY", NEW_KEY)
    refused = run("reconcile", "-p", "openai", "--apply", "--min-age", "0")
    assert refused.exit_code == 1 and "--trust-key" in refused.stderr
    trusted = run("reconcile", "-p", "openai", "--apply", "--min-age", "0", "--trust-key", "--accept-empty", "--json")
    assert trusted.exit_code == 0, trusted.stderr
    assert trusted.json()["key"] == "trusted"
    assert statuses(home) == {ours["id"]: "missing"}


def test_two_accounts_that_are_one_identity_are_refused(
    home: Path, emulators, run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    emu = emulators("moonshot")
    write(
        home / "config.toml",
        f'[accounts.team-a]\nprovider = "moonshot"\napi_key_env = "TEAM_A_KEY"\nbase_url = "{emu.url}"\n'
        f'[accounts.team-b]\nprovider = "moonshot"\napi_key_env = "TEAM_B_KEY"\nbase_url = "{emu.url}"\n',
    )
    monkeypatch.setenv("TEAM_A_KEY", SECRET)  # one org key, shared by two teams
    monkeypatch.setenv("TEAM_B_KEY", SECRET)
    for account in ("team-a", "team-b"):
        path = write(tmp_path / f"{account}.txt", account)
        assert run("upload", str(path), "--account", account).exit_code == 0
    age_everything(home)
    held = set(emu.files)
    before = statuses(home)
    result = run("reconcile", "--all", "--apply")
    assert result.exit_code == 2, result.stdout + result.stderr
    assert "accounts 'team-a' and 'team-b' are one provider account" in result.stderr
    assert "accounts 'team-b' and 'team-a' are one provider account" in result.stderr
    one = run("reconcile", "--account", "team-a", "--apply")
    assert one.exit_code == 2 and "'team-b'" in one.stderr
    assert set(emu.files) == held and statuses(home) == before and reconcile_actions(home) == []


def test_a_ledger_that_never_saw_the_account_deletes_nothing(provider_env, run, home: Path, tmp_path: Path) -> None:
    emu = provider_env("openai")
    theirs = {emu.add_file(f"t{i}.txt", 10, created_at=HOUR_AGO).id for i in range(50)}
    for _ in range(2):  # the README's cron line, run with another FILEKEEPER_HOME, twice
        result = run("reconcile", "-p", "openai", "--apply", "--max-delete", "50", "--json")
        assert result.exit_code == 0, result.stderr
        body = result.json()
        assert body["deleted"] == [] and body["orphans"] == []
        assert {u["id"] for u in body["unclaimed"]} == theirs
        assert emu.ids() == theirs
    assert set(statuses(home).values()) == {"unclaimed"} and len(statuses(home)) == 50
    assert actions(home).count("reconcile_unclaimed") == 50  # recorded once each
    assert run("usage", "-p", "openai", "--json").json()[0]["files"] == 50  # they hold storage

    [ours] = upload(run, tmp_path, "openai", "ours.txt")  # now the ledger tracks the account
    backdate_baseline()  # and days pass
    stranger = emu.add_file("stranger.txt", 3, created_at=HOUR_AGO)
    later = run("reconcile", "-p", "openai", "--apply", "--json").json()
    assert later["deleted"] == [stranger.id]  # a new unknown file is an orphan; the unclaimed stay
    assert emu.ids() == theirs | {ours["id"]}

    gone = run("reconcile", "-p", "openai", "--apply", "--delete-unclaimed", "--json").json()
    assert set(gone["deleted"]) == theirs and emu.ids() == {ours["id"]}
    assert set(statuses(home).values()) == {"active", "deleted"}


def test_adopting_unclaimed_files_makes_them_ours(provider_env, run, home: Path) -> None:
    emu = provider_env("zai")
    found = emu.add_file("found.pdf", 1234, purpose="agent", created_at=HOUR_AGO)
    assert run("reconcile", "-p", "zai", "--apply").exit_code == 0
    assert statuses(home) == {found.id: "unclaimed"}
    adopted = run("reconcile", "-p", "zai", "--apply", "--adopt", "--json").json()
    assert adopted["adopted"] == [found.id] and statuses(home) == {found.id: "active"}
    again = run("reconcile", "-p", "zai", "--apply", "--adopt", "--json").json()
    assert again["adopted"] == [] and actions(home).count("reconcile_adopt") == 1
    [(expires,)] = ledger_rows(home, "SELECT expires_at FROM files")
    left = _as_datetime(expires).replace(tzinfo=UTC) - datetime.now(UTC)  # the retention policy's, from adoption
    assert timedelta(days=179) < left <= timedelta(days=180)


def _as_datetime(value: Any) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


@pytest.mark.sqlite_only
@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_an_empty_or_truncated_ledger_is_an_error_and_left_as_found(
    damage: str, provider_env, run, home: Path, tmp_path: Path
) -> None:
    emu = provider_env("openai")
    upload(run, tmp_path, "openai", "a.txt")
    orphan = emu.add_file("o.txt", 3, created_at=HOUR_AGO)
    ledger = home / "ledger.db"
    data = ledger.read_bytes()
    ledger.write_bytes(b"" if damage == "empty" else data[: len(data) // 2])
    for name in ("ledger.db-wal", "ledger.db-shm"):
        (home / name).unlink(missing_ok=True)
    left = ledger.read_bytes()
    for args in (("reconcile", "-p", "openai", "--apply"), ("ls",), ("usage",)):
        result = run(*args)
        assert result.exit_code == 1, result.stdout + result.stderr
        assert ("is empty (0 bytes)" if damage == "empty" else "is truncated") in result.stderr
        assert "Traceback" not in result.stderr
    assert ledger.read_bytes() == left
    assert orphan.id in emu.ids()


# --- 2. absence must be proven ----------------------------------------------------------------------


def test_a_file_the_listing_hides_keeps_counting_and_is_not_deleted_later(
    provider_env, run, home: Path, tmp_path: Path
) -> None:
    emu = provider_env("moonshot")
    write(home / "config.toml", "[providers.moonshot]\nmax_files = 4\n")
    records = upload(run, tmp_path, "moonshot", "a.txt", "b.txt", "c.txt", "d.txt")
    age_everything(home)
    hidden = records[0]["id"]
    emu.hidden.add(hidden)  # a lagging list endpoint, or a proxy that cut the page short
    result = run("reconcile", "-p", "moonshot", "--apply", "--json")
    assert result.exit_code == 0, result.stderr
    body = result.json()
    assert body["missing"] == [] and [u["id"] for u in body["unconfirmed"]] == [hidden]
    assert "still has it" in body["unconfirmed"][0]["reason"]
    assert statuses(home)[hidden] == "active"
    refused = run("upload", str(write(tmp_path / "e.txt", "e")), "-p", "moonshot")
    assert refused.exit_code == 3  # 4 of 4 still held: the quota is not over-sold
    emu.hidden.clear()  # listed again: neither an orphan nor deleted
    later = run("reconcile", "-p", "moonshot", "--apply", "--json").json()
    assert later["deleted"] == [] and later["orphans"] == []
    assert hidden in emu.ids()


def test_without_a_retrieve_a_second_listing_confirms_an_absence(provider_env, run, home: Path, tmp_path: Path) -> None:
    emu = provider_env("zai")
    a, b, c = upload(run, tmp_path, "zai", "a.pdf", "b.pdf", "c.pdf")
    age_everything(home)
    with emu.lock:
        listed = [emu.file_object(emu.files[r["id"]]) for r in (b, c)]
    # One truncated page: no has_more, one file short. The second listing is whole.
    emu.inject("GET", "/files", status=200, body={"object": "list", "data": listed, "has_more": False})
    result = run("reconcile", "-p", "zai", "--apply", "--json").json()
    assert [u["id"] for u in result["unconfirmed"]] == [a["id"]] and result["missing"] == []
    assert statuses(home)[a["id"]] == "active"
    with emu.lock:
        del emu.files[a["id"]]  # really gone: both listings agree
    gone = run("reconcile", "-p", "zai", "--apply", "--json").json()
    assert [m["id"] for m in gone["missing"]] == [a["id"]]


def test_a_missing_file_listed_again_is_restored_not_deleted(provider_env, run, home: Path, tmp_path: Path) -> None:
    emu = provider_env("openai")
    a, _b = upload(run, tmp_path, "openai", "a.txt", "b.txt")
    age_everything(home)
    ledger_sql(home, "UPDATE files SET status = 'missing' WHERE file_id = ?", a["id"])  # an earlier run's mistake
    result = run("reconcile", "-p", "openai", "--apply", "--json").json()
    assert [r["id"] for r in result["reappeared"]] == [a["id"]]
    assert result["orphans"] == [] and result["deleted"] == []
    assert statuses(home)[a["id"]] == "active" and a["id"] in emu.ids()
    assert "reconcile_reappeared" in actions(home)


def test_most_files_missing_is_refused_until_accepted(provider_env, run, home: Path, tmp_path: Path) -> None:
    emu = provider_env("openai")
    records = upload(run, tmp_path, "openai", "a.txt", "b.txt", "c.txt", "d.txt")
    age_everything(home)
    with emu.lock:
        for r in records[:3]:
            del emu.files[r["id"]]
    before = statuses(home)
    refused = run("reconcile", "-p", "openai", "--apply")
    assert refused.exit_code == 1, refused.stdout + refused.stderr
    assert "3 of the 4 files the ledger expects" in refused.stderr and "--accept-missing" in refused.stderr
    assert statuses(home) == before and reconcile_actions(home) == []
    accepted = run("reconcile", "-p", "openai", "--apply", "--accept-missing", "--json").json()
    assert sorted(m["id"] for m in accepted["missing"]) == sorted(r["id"] for r in records[:3])


def test_files_the_provider_expired_on_schedule_do_not_trip_the_rail(
    provider_env, run, home: Path, tmp_path: Path
) -> None:
    emu = provider_env("zai")  # Z.AI drops files at 180 days by itself
    records = upload(run, tmp_path, "zai", "a.pdf", "b.pdf", "c.pdf", "d.pdf")
    age_everything(home)
    past = datetime.now(UTC) - timedelta(days=1)
    from sqlalchemy import update

    from filekeeper.schema import files
    from tests.conftest import ledger_connection

    with ledger_connection(home) as conn:
        conn.execute(update(files).where(files.c.file_id.in_([r["id"] for r in records[:3]])).values(expires_at=past))
    with emu.lock:
        for r in records[:3]:
            del emu.files[r["id"]]
    result = run("reconcile", "-p", "zai", "--apply", "--json")
    assert result.exit_code == 0, result.stderr
    assert result.json()["missing"] == [] and len(result.json()["expired"]) == 3
    assert sorted(statuses(home).values()) == ["active", "expired", "expired", "expired"]


# --- 3. files the provider made ---------------------------------------------------------------------


def test_provider_made_files_are_kept_for_their_own_retention(provider_env, run, home: Path, tmp_path: Path) -> None:
    emu = provider_env("openai")
    [ours] = upload(run, tmp_path, "openai", "batch-input.jsonl")
    baseline(run, "-p", "openai")
    now = int(time.time())
    output = emu.add_file("batch_out.jsonl", 700, purpose="batch_output", created_at=now - 2 * DAY)
    old = emu.add_file("old_results.csv", 50, purpose="fine-tune-results", created_at=now - 31 * DAY)
    plan = run("reconcile", "-p", "openai", "--json").json()
    assert {g["id"] for g in plan["generated"]} == {output.id, old.id} and plan["orphans"] == []
    first = run("reconcile", "-p", "openai", "--apply", "--json").json()
    assert first["deleted"] == [] and statuses(home)[output.id] == "generated"
    assert run("usage", "-p", "openai", "--json").json()[0]["bytes"] == ours["bytes"] + 750
    # 31 days old when found, but kept 30 days from then: a first reconcile deletes nothing it found.
    found = {r["id"]: r for r in run("ls", "-p", "openai", "--json").json()}
    kept_until = datetime.fromisoformat(found[old.id]["expires_at"])
    assert timedelta(days=29) < kept_until - datetime.now(UTC) <= timedelta(days=30)
    second = run("reconcile", "-p", "openai", "--apply", "--json").json()
    assert second["deleted"] == [] and emu.ids() == {ours["id"], output.id, old.id}
    past_retention(home, old.id)
    third = run("reconcile", "-p", "openai", "--apply", "--json").json()
    assert third["deleted"] == [old.id] and emu.ids() == {ours["id"], output.id}
    report = run("report", "-p", "openai", "--json").json()
    assert [g["id"] for g in report["accounts"][0]["generated"]] == [output.id]
    text = run("reconcile", "-p", "openai").stdout  # nothing to do now: quiet
    assert text == ""

    write(home / "config.toml", "[providers.openai]\ngenerated_retention_days = 1\n")
    newer = emu.add_file("batch_out2.jsonl", 9, purpose="batch_output", created_at=now - 2 * DAY)
    assert "kept 1d from now" in run("reconcile", "-p", "openai").stdout
    run("reconcile", "-p", "openai", "--apply")
    found = {r["id"]: r for r in run("ls", "-p", "openai", "--json").json()}
    assert datetime.fromisoformat(found[newer.id]["expires_at"]) - datetime.now(UTC) <= timedelta(days=1)
    past_retention(home, newer.id)
    assert run("reconcile", "-p", "openai", "--apply", "--json").json()["deleted"] == [newer.id]


def past_retention(home: Path, file_id: str) -> None:
    from sqlalchemy import update

    from filekeeper.schema import files
    from tests.conftest import ledger_connection

    with ledger_connection(home) as conn:
        conn.execute(
            update(files).where(files.c.file_id == file_id).values(expires_at=datetime.now(UTC) - timedelta(hours=1))
        )


# --- 4. listings that cannot be trusted --------------------------------------------------------------


def test_a_listing_that_cycles_ends_the_run_and_frees_the_lock(provider_env, run, home: Path, tmp_path: Path) -> None:
    emu = provider_env("xai", page_size=2, cycling_tokens=True)
    upload(run, tmp_path, "xai", "a.txt", "b.txt", "c.txt", "d.txt")
    age_everything(home)
    before = statuses(home)
    lists_before = emu.count("GET", "/files")
    result = run("reconcile", "-p", "xai", "--apply")
    assert result.exit_code == 1, result.stdout + result.stderr
    assert "listed file" in result.stderr and "twice" in result.stderr
    # Page one, page two, page one again: stop; the listing's thread may have fetched a few ahead.
    assert 3 <= emu.count("GET", "/files") - lists_before <= 3 + LIST_AHEAD_PAGES + 1
    assert statuses(home) == before and reconcile_actions(home) == []
    assert ledger_rows(home, "SELECT status FROM reconcile_runs") == [("failed",)]
    again = run("reconcile", "-p", "xai", "--apply")  # no --wait: the lock was released
    assert again.exit_code == 1 and "another reconcile" not in again.stderr


def test_a_file_listed_on_two_pages_ends_the_run(provider_env, run, home: Path, tmp_path: Path) -> None:
    emu = provider_env("openai", page_size=2, inclusive_cursor=True)
    upload(run, tmp_path, "openai", "a.txt", "b.txt", "c.txt")
    age_everything(home)
    orphan = emu.add_file("o.txt", 3, created_at=HOUR_AGO)
    before = statuses(home)
    for args in (("--apply",), ("--apply", "--adopt")):
        result = run("reconcile", "-p", "openai", *args)
        assert result.exit_code == 1 and "twice" in result.stderr
    assert statuses(home) == before and orphan.id in emu.ids()
    assert ledger_rows(home, "SELECT count(*) FROM files WHERE expires_at IS NULL") == [(0,)]


# --- 5. one applying run at a time, every delete on record --------------------------------------------


def test_a_live_holder_is_never_taken_over_however_old_its_heartbeat(
    provider_env, run, home: Path, tmp_path: Path
) -> None:
    provider_env("openai")
    upload(run, tmp_path, "openai", "a.txt")
    now = datetime.now(UTC)  # a run of this (live) process whose heartbeat stalled hours ago
    hold_lock(home, os.getpid(), socket.gethostname(), heartbeat=now - timedelta(hours=3), started=now)
    busy = run("reconcile", "-p", "openai", "--apply")
    assert busy.exit_code == 1 and "another reconcile of this account is running" in busy.stderr
    assert ledger_rows(home, "SELECT status FROM reconcile_runs") == [("running",)]


def test_the_heartbeat_is_written_while_deleting(
    provider_env, run, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import filekeeper.reconcile as rec

    monkeypatch.setattr(rec, "HEARTBEAT_EVERY", 0.0)
    emu = provider_env("openai")
    baseline(run, "-p", "openai")
    for i in range(12):
        emu.add_file(f"o{i}.txt", 1, created_at=HOUR_AGO)
    beats: list[Any] = []
    with Keeper() as keeper:
        [ours] = keeper.upload_files([write(tmp_path / "ours.txt", "ours")], provider="openai")
        acct = keeper.account(provider="openai")
        account_id = keeper.ledger.ensure_account(acct)
        remote = keeper.connect(acct)

        class Watching:
            retrieve_proves_absence = True

            def __getattr__(self, name: str) -> Any:
                return getattr(remote, name)

            def delete(self, file_id: str) -> bool:
                beats.extend(ledger_rows(home, "SELECT heartbeat_at FROM reconcile_runs WHERE status = 'running'"))
                return remote.delete(file_id)

        plan = rec.reconcile(
            keeper.ledger,
            acct,
            account_id,
            Watching(),
            ReconcileOptions(apply=True, concurrency=1),  # type: ignore[arg-type]
        )
        remote.close()
    assert len(plan.deleted) == 12 and emu.ids() == {ours.id}
    stamps = [_as_datetime(b) for (b,) in beats]
    assert len(set(stamps)) >= 10 and stamps == sorted(stamps)  # a fresh beat between deletes


def _reconcile_process(home: Path, emu, *extra: str) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "FILEKEEPER_HOME": str(home),
        KEY_VARS["openai"]: SECRET,
        URL_VARS["openai"]: emu.url,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "filekeeper", "reconcile", "-p", "openai", "--apply", "--json", *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _when(condition: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def _deleted_events(home: Path) -> list[str]:
    return [
        i
        for (i,) in ledger_rows(
            home, "SELECT file_id FROM events WHERE action IN ('reconcile_delete', 'reconcile_expire') ORDER BY id"
        )
    ]


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=["kill-9", "sigterm", "sigint"])
def test_every_delete_of_an_interrupted_run_is_on_record(
    how: signal.Signals, provider_env, run, home: Path, tmp_path: Path
) -> None:
    emu = provider_env("openai", latency=0.02)
    upload(run, tmp_path, "openai", "ours.txt")
    baseline(run, "-p", "openai")
    orphans = {emu.add_file(f"o{i}.txt", 1, created_at=HOUR_AGO).id for i in range(300)}
    proc = _reconcile_process(home, emu, "--concurrency", "4", "--max-delete", "300")
    _when(lambda: emu.count("DELETE") >= 40)
    proc.send_signal(how)
    out, err = proc.communicate(timeout=60)
    deleted = orphans - emu.ids()
    assert 40 <= len(deleted) < 300
    if how == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
        # Cron's next run, minutes later (the dead run's heartbeat has gone quiet), finds the
        # deletes the dead one sent but never recorded.
        ledger_sql(home, "UPDATE reconcile_runs SET heartbeat_at = ?", datetime.now(UTC) - timedelta(minutes=5))
        settled = run("reconcile", "-p", "openai", "--max-delete", "300", "--apply", "--min-age", "0", "--json")
        assert settled.exit_code == 0, settled.stderr
        runs = [s for (s,) in ledger_rows(home, "SELECT status FROM reconcile_runs ORDER BY id")]
        assert runs == ["done", "abandoned", "done"]  # the baseline, the killed run, the one that settled it
        assert orphans.isdisjoint(emu.ids())
        assert sorted(_deleted_events(home)) == sorted(orphans)
    else:
        assert proc.returncode == 130, err
        doc = json.loads(out)
        assert doc["interrupted"] is True and set(doc["deleted"]) == deleted
        # what was never sent is said, file by file: the plan accounts for every orphan
        unsent = {s["id"]: s["reason"] for s in doc["skipped"]}
        assert unsent == dict.fromkeys(orphans - deleted, "not sent: interrupted")
        assert ledger_rows(home, "SELECT status FROM reconcile_runs ORDER BY id") == [("done",), ("interrupted",)]
        assert sorted(_deleted_events(home)) == sorted(deleted)  # every delete sent, and only those
        assert ledger_rows(home, "SELECT count(*) FROM delete_intents") == [(0,)]
    assert len(_deleted_events(home)) == len(set(_deleted_events(home)))  # never recorded twice
    assert ledger_rows(home, "SELECT count(*) FROM delete_intents") == [(0,)]


def test_a_run_interrupted_past_its_graceful_stop_says_its_deletes_had_begun(
    provider_env, run, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A third signal lands while the deletes in flight are waited for: KeyboardInterrupt leaves
    the delete loop. The run row must not say it stopped before its deletes."""
    from filekeeper import reconcile as reconcile_module

    emu = provider_env("openai")
    upload(run, tmp_path, "openai", "ours.txt")
    baseline(run, "-p", "openai")
    orphans = {emu.add_file(f"o{i}.txt", 1, created_at=HOUR_AGO).id for i in range(5)}
    real = reconcile_module._delete_all

    def deletes_then_interrupted(*args: Any, **kwargs: Any) -> None:
        real(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(reconcile_module, "_delete_all", deletes_then_interrupted)
    with Keeper() as keeper, pytest.raises(KeyboardInterrupt):
        keeper.reconcile(provider="openai", options=ReconcileOptions(apply=True, min_age=timedelta(0)))
    assert orphans.isdisjoint(emu.ids())
    [(status, error)] = ledger_rows(home, "SELECT status, error FROM reconcile_runs WHERE id > 1")
    assert status == "interrupted" and error.startswith("interrupted during its deletes (5 answered)")


def test_a_delete_cut_off_from_the_ledger_is_settled_by_the_next_run(
    provider_env, run, home: Path, tmp_path: Path, backend: str
) -> None:
    if backend != "postgresql":
        pytest.skip("about PostgreSQL connections")
    from tests.test_postgres import kill_connection_when

    emu = provider_env("openai")
    upload(run, tmp_path, "openai", "ours.txt")
    baseline(run, "-p", "openai")
    orphans = {emu.add_file(f"o{i}.txt", 1, created_at=HOUR_AGO).id for i in range(120)}
    with Keeper() as keeper:
        killed = kill_connection_when(keeper, "INSERT INTO events")  # the first batch of outcomes
        with pytest.raises(Exception, match="ledger error"):
            keeper.reconcile(provider="openai", options=ReconcileOptions(apply=True, max_delete=200))
        assert killed
    deleted = orphans - emu.ids()
    assert deleted and ledger_rows(home, "SELECT count(*) FROM delete_intents")[0][0] >= len(deleted)
    settled = run("reconcile", "-p", "openai", "--apply", "--max-delete", "200", "--json")
    assert settled.exit_code == 0, settled.stderr
    assert orphans.isdisjoint(emu.ids()) and sorted(_deleted_events(home)) == sorted(orphans)
    assert ledger_rows(home, "SELECT count(*) FROM delete_intents") == [(0,)]


def test_a_plain_delete_killed_before_its_record_is_settled(provider_env, run, home: Path, tmp_path: Path) -> None:
    emu = provider_env("openai")
    [a] = upload(run, tmp_path, "openai", "a.txt")
    age_everything(home)
    from filekeeper.config import load_settings
    from filekeeper.ledger import open_ledger

    # What `filekeeper delete` leaves when killed between the request and its record.
    ledger = open_ledger(load_settings())
    try:
        with ledger.write() as w:
            w.add_intents(1, [(a["id"], w.ledger_id_of(1, a["id"]), "delete")], run_id=None)
    finally:
        ledger.close()
    ledger_sql(home, "UPDATE delete_intents SET at = ?", datetime.now(UTC) - timedelta(hours=1))
    with emu.lock:
        del emu.files[a["id"]]
    result = run("reconcile", "-p", "openai", "--apply", "--json").json()
    assert result["missing"] == [] and [i["id"] for i in result["intents_settled"]] == [a["id"]]
    assert statuses(home) == {a["id"]: "deleted"}
    [(detail,)] = ledger_rows(home, "SELECT detail FROM events WHERE action = 'delete'")
    assert as_json(detail)["settled_after_interrupt"] is True


def test_a_plan_writes_nothing(provider_env, run, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    emu = provider_env("openai")
    emu.add_file("theirs.txt", 3, created_at=HOUR_AGO)
    plan = run("reconcile", "-p", "openai", "--json")
    assert plan.exit_code == 0 and len(plan.json()["unclaimed"]) == 1
    assert ledger_rows(home, "SELECT count(*) FROM accounts") == [(0,)] and actions(home) == []
    upload(run, tmp_path, "openai", "a.txt")
    age_everything(home)
    before = (actions(home), ledger_rows(home, "SELECT * FROM accounts"))
    emu.add_key(NEW_KEY, MAIN)
    monkeypatch.setenv("OPENAI_API_KEY", NEW_KEY)  # a new key: a plan shows it but records nothing
    assert run("reconcile", "-p", "openai", "--json").json()["key"] == "rotated"
    assert (actions(home), ledger_rows(home, "SELECT * FROM accounts")) == before


# --- found by an outside attempt on the rails above -----------------------------------------------


def test_an_upload_before_the_first_reconcile_does_not_make_the_rest_orphans(
    provider_env, run, home: Path, tmp_path: Path
) -> None:
    emu = provider_env("openai")
    theirs = {emu.add_file(f"t{i}.txt", 5, created_at=HOUR_AGO).id for i in range(5)}
    [ours] = upload(run, tmp_path, "openai", "new.txt")  # cron in a new FILEKEEPER_HOME uploads first
    age_everything(home)
    result = run("reconcile", "-p", "openai", "--apply", "--json").json()
    assert result["deleted"] == [] and {u["id"] for u in result["unclaimed"]} == theirs
    assert emu.ids() == theirs | {ours["id"]}
    later = run("reconcile", "-p", "openai", "--apply", "--json").json()
    assert later["deleted"] == [] and emu.ids() == theirs | {ours["id"]}


def test_files_uploaded_with_a_wrong_key_do_not_prove_it(
    provider_env, run, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    emu = provider_env("openai")
    ours = {r["id"] for r in upload(run, tmp_path, "openai", "a.txt", "b.txt")}
    baseline(run, "-p", "openai")
    emu.add_key(TEAMMATE, "teammate")
    theirs = {emu.add_file(f"t{i}.txt", 5, created_at=HOUR_AGO, owner="teammate").id for i in range(6)}
    monkeypatch.setenv("OPENAI_API_KEY", TEAMMATE)  # CI uploads with the teammate's key by mistake
    via_wrong_key = {r["id"] for r in upload(run, tmp_path, "openai", "c.txt", "d.txt")}
    age_everything(home)
    result = run("reconcile", "-p", "openai", "--apply")
    assert result.exit_code == 1 and "--trust-key" in result.stderr, result.stdout + result.stderr
    assert "shows 0 of the 2 files" in result.stderr  # only the files recorded before this key count
    assert emu.ids("teammate") == theirs | via_wrong_key and emu.ids() == ours
    assert set(statuses(home).values()) == {"active"}


def test_one_endpoint_spelled_two_ways_is_one_identity(
    home: Path, emulators, run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    emu = emulators("openai")
    port = emu.url.split(":")[2].split("/")[0]
    write(
        home / "config.toml",
        f'[accounts.prod]\nprovider = "openai"\napi_key_env = "PROD_KEY"\nbase_url = "http://127.0.0.1:{port}/v1"\n'
        f'[accounts.ci]\nprovider = "openai"\napi_key_env = "CI_KEY"\nbase_url = "http://LOCALHOST:{port}/v1/"\n',
    )
    monkeypatch.setenv("PROD_KEY", SECRET)
    monkeypatch.setenv("CI_KEY", SECRET)
    assert run("upload", str(write(tmp_path / "p.txt", "prod")), "--account", "prod").exit_code == 0
    result = run("reconcile", "--all", "--apply")
    assert result.exit_code == 2 and "are one provider account" in result.stderr
    assert len(emu.ids()) == 1


def test_two_keys_of_one_provider_account_are_caught_by_their_files(
    home: Path, emulators, run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    emu = emulators("openai")
    emu.add_key(NEW_KEY, MAIN)  # a second project key of the same account
    write(
        home / "config.toml",
        f'[accounts.prod]\nprovider = "openai"\napi_key_env = "PROD_KEY"\nbase_url = "{emu.url}"\n'
        f'[accounts.ci]\nprovider = "openai"\napi_key_env = "CI_KEY"\nbase_url = "{emu.url}"\n',
    )
    monkeypatch.setenv("PROD_KEY", SECRET)
    monkeypatch.setenv("CI_KEY", NEW_KEY)
    for name in ("prod", "ci"):
        assert run("upload", str(write(tmp_path / f"{name}.txt", name)), "--account", name).exit_code == 0
    age_everything(home)
    held = emu.ids()
    result = run("reconcile", "--all", "--apply", "--min-age", "0")
    assert result.exit_code == 2, result.stdout + result.stderr
    assert "reach one provider account" in result.stderr and "'prod'" in result.stderr and "'ci'" in result.stderr
    assert emu.ids() == held and set(statuses(home).values()) == {"active"}


def test_a_new_base_url_must_show_the_accounts_files(
    provider_env, emulators, run, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider_env("openai")
    upload(run, tmp_path, "openai", "a.txt", "b.txt", "c.txt")
    baseline(run, "-p", "openai")
    age_everything(home, hours=0.1)  # minutes old: younger than --min-age, older than a list's lag
    elsewhere = emulators("openai")  # another server that takes the same key
    theirs = {elsewhere.add_file(f"t{i}.txt", 5, created_at=HOUR_AGO).id for i in range(10)}
    monkeypatch.setenv("OPENAI_BASE_URL", elsewhere.url)
    result = run("reconcile", "-p", "openai", "--apply", "--max-delete", "100%")
    assert result.exit_code == 1 and "this base URL" in result.stderr, result.stdout + result.stderr
    assert elsewhere.ids() == theirs


def test_generated_retention_zero_keeps_them_for_ever(provider_env, run, home: Path, tmp_path: Path) -> None:
    emu = provider_env("openai")
    write(home / "config.toml", "[providers.openai]\ngenerated_retention_days = 0\n")
    upload(run, tmp_path, "openai", "in.jsonl")
    baseline(run, "-p", "openai")
    made = {emu.add_file(f"out{i}.jsonl", 9, purpose="batch_output", created_at=HOUR_AGO).id for i in range(3)}
    for _ in range(2):
        assert run("reconcile", "-p", "openai", "--apply", "--json").json()["deleted"] == []
    assert made <= emu.ids()
    assert ledger_rows(home, "SELECT count(*) FROM files WHERE status = 'generated' AND expires_at IS NULL") == [(3,)]


def test_adopting_old_files_does_not_hand_them_to_the_next_run_expired(
    provider_env, run, home: Path, tmp_path: Path
) -> None:
    emu = provider_env("openai")
    old = int(time.time()) - 200 * DAY
    found = {emu.add_file(f"f{i}.txt", 5, created_at=old).id for i in range(4)}
    assert run("reconcile", "-p", "openai", "--apply").exit_code == 0  # recorded as unclaimed
    adopt = run("reconcile", "-p", "openai", "--apply", "--adopt", "--exit-code")
    assert adopt.exit_code == 4 and "adopted 4" in adopt.stdout  # it did something, and says so
    after = run("reconcile", "-p", "openai", "--apply", "--json").json()
    assert after["deleted"] == [] and after["expired"] == [] and found == emu.ids()


def test_delete_unclaimed_is_planned_and_reported(provider_env, run, home: Path, tmp_path: Path) -> None:
    emu = provider_env("openai")
    for i in range(4):
        emu.add_file(f"t{i}.txt", 5, created_at=HOUR_AGO)
    assert run("reconcile", "-p", "openai", "--apply").exit_code == 0
    plan = run("reconcile", "-p", "openai", "--delete-unclaimed")
    assert "4 deletion(s) at most" in plan.stdout, plan.stdout
    applied = run("reconcile", "-p", "openai", "--apply", "--delete-unclaimed", "--exit-code")
    assert applied.exit_code == 4 and "deleted 4" in applied.stdout
    assert emu.ids() == set()
    adopt_plan = run("reconcile", "-p", "openai", "--adopt", "--json").json()
    assert adopt_plan["to_delete"] == 0


def test_a_delete_answered_with_something_not_json_is_still_a_delete(
    provider_env, run, home: Path, tmp_path: Path
) -> None:
    emu = provider_env("openai")
    baseline(run, "-p", "openai")
    orphan = emu.add_file("o.txt", 3, created_at=HOUR_AGO)
    emu.inject("DELETE", f"/files/{orphan.id}", status=200, body="OK", after_store=True)
    result = run("reconcile", "-p", "openai", "--apply", "--json")
    assert result.exit_code == 0, result.stderr
    assert result.json()["deleted"] == [orphan.id] and orphan.id not in emu.ids()
    assert _deleted_events(home) == [orphan.id]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-delete", "²%"], "--max-delete takes a whole number"),
        (["--max-delete", "250%"], "--max-delete takes a whole number"),
        (["--min-age", "99999999999d"], "longer than anything filekeeper keeps"),
        (["--min-age", "999999999d"], "longer than anything filekeeper keeps"),
    ],
)
def test_bad_reconcile_options_are_usage_errors(args: list[str], message: str, provider_env, run) -> None:
    provider_env("openai")
    result = run("reconcile", "-p", "openai", *args)
    assert result.exit_code == 2 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_impossible_creation_times_from_the_provider_are_no_times(provider_env, run, home: Path) -> None:
    emu = provider_env("openai")
    baseline(run, "-p", "openai")
    far = emu.add_file("far.txt", 3, created_at=10**20)
    emu.add_file("ok.txt", 3, created_at=HOUR_AGO)
    result = run("reconcile", "-p", "openai", "--apply", "--json")
    assert result.exit_code == 0, result.stderr
    body = result.json()
    assert {"id": far.id, "reason": "the provider gave no creation time"} in body["skipped"]
    assert far.id in emu.ids() and len(body["deleted"]) == 1


def test_json_says_which_account_failed_and_why(
    provider_env, run, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    emu = provider_env("openai")
    upload(run, tmp_path, "openai", "a.txt")
    emu.inject("GET", "/files", status=401, body=emu.error_body(401, "bad key"), times=20)
    one = run("reconcile", "-p", "openai", "--apply", "--json")
    assert one.exit_code == 1
    doc = one.json()
    assert (doc["account"], doc["applied"], doc["exit_code"]) == ("openai", False, 1) and "bad key" in doc["error"]
    many = run("reconcile", "--all", "--json")
    assert many.exit_code == 1 and [d["account"] for d in many.json()] == ["openai"]
    assert "error" in many.json()[0]


def test_a_plan_sees_through_a_dead_runs_journal(provider_env, run, home: Path, tmp_path: Path) -> None:
    emu = provider_env("openai")
    [a] = upload(run, tmp_path, "openai", "a.txt")
    age_everything(home)
    from filekeeper.config import load_settings
    from filekeeper.ledger import open_ledger

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    long_ago = datetime.now(UTC) - timedelta(minutes=10)
    hold_lock(home, dead.pid, socket.gethostname(), heartbeat=long_ago, started=long_ago)
    ledger = open_ledger(load_settings())
    try:
        with ledger.write() as w:  # the dead run had sent this delete, and died before recording it
            w.add_intents(1, [(a["id"], w.ledger_id_of(1, a["id"]), "expired")], run_id=1)
    finally:
        ledger.close()
    with emu.lock:
        del emu.files[a["id"]]
    plan = run("reconcile", "-p", "openai", "--json").json()
    assert plan["missing"] == [] and [i["id"] for i in plan["intents_settled"]] == [a["id"]]


def test_a_file_made_before_the_first_listing_is_never_an_orphan_later(
    provider_env, run, home: Path, tmp_path: Path
) -> None:
    emu = provider_env("openai")
    upload(run, tmp_path, "openai", "ours.txt")
    now = int(time.time())
    young = emu.add_file("teammate-young.txt", 5, created_at=now - 1800)  # younger than --min-age then
    hidden = emu.add_file("teammate-hidden.txt", 6, created_at=now - 86400)
    emu.hidden.add(hidden.id)  # left out of that one listing (a lagging index)
    first = run("reconcile", "-p", "openai", "--apply", "--json").json()  # the baseline
    assert first["deleted"] == [] and [y["id"] for y in first["young"]] == [young.id]
    emu.hidden.clear()
    # Later, with a shorter --min-age: the young one is old enough now, and was made before the baseline.
    second = run("reconcile", "-p", "openai", "--apply", "--min-age", "10m", "--json").json()
    assert second["orphans"] == [] and second["deleted"] == []
    assert sorted(u["id"] for u in second["unclaimed"]) == sorted([young.id, hidden.id])
    assert {young.id, hidden.id} <= emu.ids()
    assert statuses(home)[young.id] == statuses(home)[hidden.id] == "unclaimed"
    # Provider times are whole seconds: a file made in the baseline's own second counts as before it.
    ledger_sql(home, "UPDATE accounts SET baselined_at = ?", datetime.now(UTC) - timedelta(minutes=1))
    made_after = emu.add_file("after.txt", 7)  # after the baseline: an orphan, as before
    ledger_sql(home, "UPDATE files SET created_at = ?", datetime.now(UTC) - timedelta(hours=2))
    third = run("reconcile", "-p", "openai", "--apply", "--min-age", "0", "--json").json()
    assert third["deleted"] == [made_after.id] and {young.id, hidden.id} <= emu.ids()


def test_a_provider_failing_every_delete_stops_the_sending_and_says_what_was_not_sent(
    provider_env, run, home: Path, tmp_path: Path
) -> None:
    """Once GIVE_UP_AFTER deletes in a row have failed (each after its retries), no more are
    sent: a provider gone down mid-run would cost every remaining delete its whole retry budget
    (449 error lines and two minutes in a helper's attempt). The rest are listed as not sent,
    and the next run, with the provider back, deletes them."""
    from filekeeper.reconcile import GIVE_UP_AFTER

    emu = provider_env("openai")
    write(home / "config.toml", "[http]\nattempts = 1\nbackoff_seconds = 0.01\n")
    upload(run, tmp_path, "openai", "ours.txt")
    baseline(run, "-p", "openai")
    orphans = {emu.add_file(f"o{i}.txt", 1, created_at=HOUR_AGO).id for i in range(40)}
    emu.inject("DELETE", "/files/", status=503, times=GIVE_UP_AFTER + 1)
    failed = run("reconcile", "-p", "openai", "--apply", "--concurrency", "2", "--json")
    assert failed.exit_code == 1, failed.stderr
    plan = failed.json()
    sent = emu.count("DELETE")
    assert GIVE_UP_AFTER <= sent <= GIVE_UP_AFTER + 1  # the one in flight when the 8th failed
    assert len(plan["errors"]) == sent and not plan["deleted"]
    not_sent = {s["id"] for s in plan["skipped"]}
    assert len(not_sent) == 40 - sent and not_sent <= orphans
    assert {s["reason"].split(" (")[0] for s in plan["skipped"]} == {f"not sent: {sent} deletes in a row failed"}
    assert emu.ids() >= orphans  # nothing deleted
    left = GIVE_UP_AFTER + 1 - sent  # a fault not spent fails the next run's first delete
    again = run("reconcile", "-p", "openai", "--apply", "--json")
    assert again.exit_code == (1 if left else 0) and len(again.json()["errors"]) == left, again.stderr
    if left:
        assert run("reconcile", "-p", "openai", "--apply").exit_code == 0
    assert orphans.isdisjoint(emu.ids())
    assert ledger_rows(home, "SELECT count(*) FROM delete_intents") == [(0,)]
