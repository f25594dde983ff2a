"""Reconcile through every situation that once made it delete what it should keep, one after another.

Each scenario sets up a ledger and an emulator (over a real socket) the way a careless user, a
flaky provider or a hostile server would, runs `reconcile --apply` as cron would (sometimes twice,
sometimes with the flags an impatient user adds), and then checks the same three things:

- nothing the user owns was deleted: every file in the scenario's ``keep`` is still at the provider;
- each run exited as it should, and a failure said so on one line, without a traceback;
- once the provider answers honestly again, ledger == provider: the files the ledger expects
  there (active, unclaimed, generated) are exactly those the provider holds; and after a refusal,
  the ledger is exactly as it was.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SECRET, age_everything, baseline, files_count, ledger_rows, upload, write
from tests.emulator import MAIN, Emulator

HOUR_AGO = int(time.time()) - 7200
TEAMMATE = "sk-fk-teammate-77aa66bb55cc44dd33ee"


@dataclass
class Case:
    emu: Emulator
    #: (CLI arguments after `reconcile`, the exit code expected) for each run, in order
    runs: list[tuple[list[str], int]]
    #: provider file ids that must survive every run
    keep: set[str]
    #: whether the ledger must be exactly as before (every run refused)
    unchanged: bool = False
    #: something to do between the runs (the provider recovers, the user fixes the key)
    owner: str = MAIN
    extra: dict[str, Any] = field(default_factory=dict)


def _ours(run, tmp_path: Path, flavor: str, n: int = 3) -> set[str]:
    return {r["id"] for r in upload(run, tmp_path, flavor, *[f"ours{i}.txt" for i in range(n)])}


def wrong_key(provider_env, run, home, tmp_path, monkeypatch, emulators) -> Case:
    emu = provider_env("moonshot")
    ours = _ours(run, tmp_path, "moonshot")
    age_everything(home)
    emu.add_key(TEAMMATE, "teammate")
    theirs = {emu.add_file(f"t{i}.txt", 5, created_at=HOUR_AGO, owner="teammate").id for i in range(4)}
    monkeypatch.setenv("MOONSHOT_API_KEY", TEAMMATE)
    return Case(emu, [(["-p", "moonshot"], 1), (["-p", "moonshot", "--min-age", "0"], 1)], ours | theirs, True)


def wrong_url(provider_env, run, home, tmp_path, monkeypatch, emulators) -> Case:
    emu = provider_env("openai")
    ours = _ours(run, tmp_path, "openai")
    age_everything(home)
    elsewhere = emulators("openai")  # another organisation's endpoint that takes the same key
    theirs = {elsewhere.add_file(f"t{i}.txt", 5, created_at=HOUR_AGO).id for i in range(10)}
    monkeypatch.setenv("OPENAI_BASE_URL", elsewhere.url)
    case = Case(emu, [(["-p", "openai", "--max-delete", "100%"], 1)], ours, True)
    case.extra["elsewhere"] = (elsewhere, theirs)
    return case


def shared_identity(provider_env, run, home, tmp_path, monkeypatch, emulators) -> Case:
    emu = emulators("moonshot")
    write(
        home / "config.toml",
        f'[accounts.a]\nprovider = "moonshot"\napi_key_env = "A_KEY"\nbase_url = "{emu.url}"\n'
        f'[accounts.b]\nprovider = "moonshot"\napi_key_env = "B_KEY"\nbase_url = "{emu.url}"\n',
    )
    monkeypatch.setenv("A_KEY", SECRET)
    monkeypatch.setenv("B_KEY", SECRET)
    keep = set()
    for name in ("a", "b"):
        result = run("upload", str(write(tmp_path / f"{name}.txt", name)), "--account", name, "--json")
        keep |= {r["id"] for r in result.json()}
    age_everything(home)
    return Case(emu, [(["--all"], 2), (["--account", "a"], 2)], keep, True)


def new_home(provider_env, run, home, tmp_path, monkeypatch, emulators) -> Case:
    emu = provider_env("openai")
    theirs = {emu.add_file(f"t{i}.txt", 5, created_at=HOUR_AGO).id for i in range(30)}
    args = ["-p", "openai", "--min-age", "0", "--max-delete", "100%"]
    return Case(emu, [(args, 0), (args, 0), (args, 0)], theirs)


def hidden_by_the_listing(provider_env, run, home, tmp_path, monkeypatch, emulators) -> Case:
    emu = provider_env("xai")
    ours = _ours(run, tmp_path, "xai", 4)
    age_everything(home)
    emu.hidden.update(sorted(ours)[:3])  # most of them: the rail holds first; then each is retrieved
    return Case(emu, [(["-p", "xai"], 1), (["-p", "xai", "--accept-missing"], 0)], ours)


def truncated_page(provider_env, run, home, tmp_path, monkeypatch, emulators) -> Case:
    emu = provider_env("openai", page_size=2)
    ours = _ours(run, tmp_path, "openai", 5)
    age_everything(home)
    with emu.lock:
        first = [emu.file_object(f) for f in sorted(emu.files.values(), key=lambda f: (f.created_at, f.id))[:2]]
    # A page that ends the listing early: no has_more, the other three files never listed.
    emu.inject("GET", "/files", status=200, body={"object": "list", "data": first, "has_more": False})
    return Case(emu, [(["-p", "openai", "--accept-missing"], 0)], ours)


def cycling_listing(provider_env, run, home, tmp_path, monkeypatch, emulators) -> Case:
    emu = provider_env("xai", page_size=2, cycling_tokens=True)
    ours = _ours(run, tmp_path, "xai", 4)
    age_everything(home)
    emu.add_file("orphan.txt", 3, created_at=HOUR_AGO)
    return Case(emu, [(["-p", "xai"], 1), (["-p", "xai", "--wait"], 1)], ours, True)


def repeated_ids(provider_env, run, home, tmp_path, monkeypatch, emulators) -> Case:
    emu = provider_env("openai", page_size=2, inclusive_cursor=True)
    ours = _ours(run, tmp_path, "openai", 3)
    age_everything(home)
    stranger = emu.add_file("s.txt", 3, created_at=HOUR_AGO)
    return Case(emu, [(["-p", "openai"], 1), (["-p", "openai", "--adopt"], 1)], ours | {stranger.id}, True)


def provider_made(provider_env, run, home, tmp_path, monkeypatch, emulators) -> Case:
    emu = provider_env("openai")
    ours = _ours(run, tmp_path, "openai", 1)
    baseline(run, "-p", "openai")
    made = {
        emu.add_file(name, 9, purpose=purpose, created_at=int(time.time()) - 2 * 86400).id
        for name, purpose in (("out.jsonl", "batch_output"), ("results.csv", "fine-tune-results"))
    }
    return Case(emu, [(["-p", "openai", "--min-age", "0"], 0)] * 2, ours | made)


def retrieve_fails_then_recovers(provider_env, run, home, tmp_path, monkeypatch, emulators) -> Case:
    emu = provider_env("moonshot")
    write(home / "config.toml", "[http]\nattempts = 2\nbackoff_seconds = 0.01\n")
    ours = _ours(run, tmp_path, "moonshot", 4)
    age_everything(home)
    gone = sorted(ours)[0]
    with emu.lock:
        del emu.files[gone]
    emu.inject("GET", f"/files/{gone}", status=503, times=2)  # run 1 cannot get the proof: it keeps the file
    return Case(emu, [(["-p", "moonshot"], 0), (["-p", "moonshot"], 0)], ours - {gone})


def delete_refused_then_allowed(provider_env, run, home, tmp_path, monkeypatch, emulators) -> Case:
    emu = provider_env("openai")
    write(home / "config.toml", "[http]\nattempts = 2\nbackoff_seconds = 0.01\n")
    ours = _ours(run, tmp_path, "openai", 2)
    baseline(run, "-p", "openai")
    orphans = [emu.add_file(f"o{i}.txt", 1, created_at=HOUR_AGO) for i in range(3)]
    emu.inject("DELETE", f"/files/{orphans[0].id}", status=500, times=2)  # both of run 1's attempts
    return Case(emu, [(["-p", "openai"], 1), (["-p", "openai"], 0)], ours)


def delete_answer_lost(provider_env, run, home, tmp_path, monkeypatch, emulators) -> Case:
    emu = provider_env("openai")
    ours = _ours(run, tmp_path, "openai", 2)
    baseline(run, "-p", "openai")
    orphans = [emu.add_file(f"o{i}.txt", 1, created_at=HOUR_AGO) for i in range(3)]
    emu.inject("DELETE", f"/files/{orphans[0].id}", drop_response=True, after_store=True)
    return Case(emu, [(["-p", "openai"], 0)], ours)


def rate_limited(provider_env, run, home, tmp_path, monkeypatch, emulators) -> Case:
    emu = provider_env("zai")
    ours = _ours(run, tmp_path, "zai", 2)
    baseline(run, "-p", "zai")
    emu.add_file("o.pdf", 1, purpose="agent", created_at=HOUR_AGO)
    emu.inject("GET", "/files", status=429, headers={"Retry-After": "0"}, times=2)
    emu.inject("DELETE", "/files/", status=429, headers={"Retry-After": "0"}, times=1)
    return Case(emu, [(["-p", "zai"], 0), (["-p", "zai"], 0)], ours)


def flags_that_contradict(provider_env, run, home, tmp_path, monkeypatch, emulators) -> Case:
    emu = provider_env("openai")
    ours = _ours(run, tmp_path, "openai", 2)
    emu.add_file("o.txt", 1, created_at=HOUR_AGO)
    return Case(emu, [(["-p", "openai", "--adopt", "--delete-unclaimed"], 2)], ours, True)


SCENARIOS = {
    f.__name__: f
    for f in (
        wrong_key,
        wrong_url,
        shared_identity,
        new_home,
        hidden_by_the_listing,
        truncated_page,
        cycling_listing,
        repeated_ids,
        provider_made,
        retrieve_fails_then_recovers,
        delete_refused_then_allowed,
        delete_answer_lost,
        rate_limited,
        flags_that_contradict,
    )
}


def _ledger(home: Path) -> list[tuple[Any, ...]]:
    if files_count(home) == 0:
        return []
    return ledger_rows(home, "SELECT id, file_id, status, expires_at FROM files ORDER BY id")


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_reconcile_keeps_what_it_should(
    name: str, provider_env, run, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, emulators
) -> None:
    case = SCENARIOS[name](provider_env, run, home, tmp_path, monkeypatch, emulators)
    before = _ledger(home)
    for i, (args, code) in enumerate(case.runs):
        result = run("reconcile", *args, "--apply")
        assert result.exit_code == code, f"run {i + 1}: {result.stdout}{result.stderr}"
        assert "Traceback" not in result.stderr and "internal error" not in result.stderr
        if code:
            assert "filekeeper: error:" in result.stderr
        with case.emu.lock:
            present = set(case.emu.files)  # every account's, the teammate's too
        assert case.keep <= present, f"run {i + 1} deleted {sorted(case.keep - present)}"
    if "elsewhere" in case.extra:
        elsewhere, theirs = case.extra["elsewhere"]
        assert elsewhere.ids() == theirs
    if case.unchanged:
        assert _ledger(home) == before
        return
    query = "SELECT file_id FROM files WHERE status IN ('active', 'unclaimed', 'generated')"
    assert {i for (i,) in ledger_rows(home, query)} == case.emu.ids(case.owner)
    assert ledger_rows(home, "SELECT count(*) FROM delete_intents") == [(0,)]
