"""Each provider's own shape, over a real socket to its emulator: Anthropic's headers and pages,
Gemini's two-step upload, ``{}`` listings, 403s and 48-hour expiry, DeepSeek's profile, Z.AI's
per-purpose listing and limits, OpenAI's batch expiry, xAI's 50 MB, and ``x-should-retry``;
then what every provider must do alike: wait out a 429 as asked, reconcile orphans, refuse an
unknown id."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from filekeeper import load_settings
from filekeeper.errors import FileNotFoundAtProvider, IncompleteListing, ProviderError
from filekeeper.providers import ADAPTERS, Provider, connect
from filekeeper.providers._http import HTTP, RetryPolicy
from tests.conftest import (
    PROVIDERS,
    SECRET,
    actions,
    age_everything,
    baseline,
    files_count,
    ledger_rows,
    ledger_sql,
    upload,
    write,
)
from tests.emulator import ANTHROPIC_BETA, ANTHROPIC_VERSION, GEMINI_LIFETIME, Emulator

HOUR_AGO = int(time.time()) - 7200
FAST = "[http]\nbackoff_seconds = 0.01\n"


def adapter(flavor: str, sleeps: list[float] | None = None) -> Provider:
    """The adapter a command would use for the provider's implicit account, recording its waits."""
    account = load_settings().resolve(provider=flavor)
    return connect(account, sleep=(sleeps.append if sleeps is not None else lambda _s: None))


def near(when: str | datetime | None, expected: datetime, slack: float = 120) -> bool:
    assert when is not None
    moment = datetime.fromisoformat(when.replace("Z", "+00:00")) if isinstance(when, str) else when
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return abs((moment - expected).total_seconds()) <= slack


# --- what every provider does alike ------------------------------------------------------------------


@pytest.mark.parametrize("flavor", PROVIDERS)
def test_a_429_is_waited_out_as_retry_after_says(flavor: str, provider_env, tmp_path: Path) -> None:
    emu = provider_env(flavor)
    emu.add_file("there.txt", 5)
    emu.inject("GET", "/files", status=429, headers={"Retry-After": "7"})
    emu.inject("POST", "/files", status=429, headers={"Retry-After": "3"})
    sleeps: list[float] = []
    remote = adapter(flavor, sleeps)
    try:
        assert [f.filename for f in remote.list_files()] == ["there.txt"]
        up = remote.upload(write(tmp_path / "new.txt", "new"), purpose=ADAPTERS[flavor].profile.default_purpose)
    finally:
        remote.close()
    assert sleeps == [7.0, 3.0]
    assert emu.count("POST", "/files") == 2  # refused once, stored once: one copy
    assert sorted(f.filename for f in emu.files.values()) == ["new.txt", "there.txt"] and up.remote.id in emu.files


@pytest.mark.parametrize("flavor", PROVIDERS)
def test_reconcile_deletes_orphans_and_keeps_ours(flavor: str, provider_env, run, tmp_path: Path) -> None:
    emu = provider_env(flavor, page_size=2)
    baseline(run, "-p", flavor)
    orphans = [emu.add_file(f"orphan{i}.txt", 10 + i, created_at=HOUR_AGO) for i in range(3)]
    [ours] = run("upload", str(write(tmp_path / "ours.txt", "ours")), "-p", flavor, "--json").json()
    plan = run("reconcile", "-p", flavor, "--json").json()
    assert sorted(o["id"] for o in plan["orphans"]) == sorted(o.id for o in orphans)
    assert plan["missing"] == plan["unconfirmed"] == []
    applied = run("reconcile", "-p", flavor, "--apply", "--json")
    assert applied.exit_code == 0, applied.stderr
    assert sorted(applied.json()["deleted"]) == sorted(o.id for o in orphans)
    assert set(emu.files) == {ours["id"]}
    assert run("reconcile", "-p", flavor, "--exit-code").exit_code == 0  # nothing left to do


@pytest.mark.parametrize("flavor", PROVIDERS)
def test_deleting_an_id_nobody_knows_is_an_error_and_leaves_no_trace(flavor: str, provider_env, run, home) -> None:
    emu = provider_env(flavor)
    bogus = "files/nosuchfile" if flavor == "gemini" else "file-nosuch"
    result = run("delete", bogus, "-p", flavor)
    assert result.exit_code == 1
    assert bogus in result.stderr and "Traceback" not in result.stderr
    assert files_count(home) == 0
    assert emu.count("DELETE") == 1


# --- Anthropic ---------------------------------------------------------------------------------------


def test_anthropic_is_called_with_its_key_header_version_and_beta(provider_env, run, tmp_path: Path) -> None:
    emu = provider_env("anthropic")
    [record] = run("upload", str(write(tmp_path / "a.pdf", "%PDF")), "-p", "anthropic", "--json").json()
    assert record["purpose"] == "" and record["id"].startswith("file_")
    assert run("ls", "-p", "anthropic", "--json").json()[0]["id"] == record["id"]
    assert run("delete", record["id"], "-p", "anthropic").exit_code == 0
    for r in emu.requests:
        assert r.headers["x-api-key"] == SECRET and "authorization" not in r.headers
        assert r.headers["anthropic-version"] == ANTHROPIC_VERSION
        assert ANTHROPIC_BETA in r.headers["anthropic-beta"]
    [post] = [r for r in emu.requests if r.method == "POST"]
    assert post.form == {}  # no purpose: its files have none
    refused = run("upload", str(write(tmp_path / "b.pdf", "%PDF")), "-p", "anthropic", "--purpose", "batch")
    assert refused.exit_code == 2 and "have no purpose" in refused.stderr


def test_anthropic_pages_newest_first_and_keeps_its_tools_files(provider_env, run, tmp_path: Path) -> None:
    emu = provider_env("anthropic", page_size=3)
    baseline(run, "-p", "anthropic")
    made = [emu.add_file(f"out{i}.png", 10, created_at=HOUR_AGO + i, generated=True) for i in range(4)]
    stray = [emu.add_file(f"stray{i}.txt", 10, created_at=HOUR_AGO + 10 + i) for i in range(4)]
    remote = adapter("anthropic")
    try:
        listed = list(remote.list_files())
    finally:
        remote.close()
    assert [f.id for f in listed] == [f.id for f in reversed(made + stray)]  # newest first, every page
    assert all(f.generated for f in listed[4:]) and not any(f.generated for f in listed[:4])
    assert listed[0].created_at == datetime.fromtimestamp(HOUR_AGO + 13, UTC)
    applied = run("reconcile", "-p", "anthropic", "--apply", "--json").json()
    assert sorted(applied["deleted"]) == sorted(f.id for f in stray)
    assert sorted(g["id"] for g in applied["generated"]) == sorted(f.id for f in made)
    assert set(emu.files) == {f.id for f in made}  # what its tools wrote is never an orphan


def test_anthropic_ga_listing_shape_is_read_too() -> None:
    """Without the beta header the API answers ``{data, next_page}``: a proxy that drops the header
    must not make the listing stop after one page."""
    pages = {None: (["file_a", "file_b"], "page_2"), "page_2": (["file_c"], None)}

    def handler(request: httpx.Request) -> httpx.Response:
        ids, token = pages[request.url.params.get("page")]
        data = [
            {"id": i, "filename": f"{i}.txt", "size_bytes": 3, "created_at": "2026-11-30T10:00:00.123456789Z"}
            for i in ids
        ]
        return httpx.Response(200, json={"data": data, "next_page": token})

    http = HTTP("anthropic", "https://api.example.test", "k", transport=httpx.MockTransport(handler))
    listed = list(ADAPTERS["anthropic"](http).list_files())
    assert [f.id for f in listed] == ["file_a", "file_b", "file_c"]
    assert listed[0].created_at == datetime(2026, 11, 30, 10, 0, 0, 123456, UTC) and listed[0].bytes == 3


def test_anthropic_overloaded_529_is_retried_and_a_spend_cap_429_is_not() -> None:
    calls: list[str] = []
    answers = iter(
        [
            httpx.Response(529, json={"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
            httpx.Response(200, json={"data": [], "has_more": False}),
            httpx.Response(
                429,
                json={
                    "type": "error",
                    "error": {
                        "type": "rate_limit_error",
                        "message": "You have reached your spend limit",
                        "details": {"error_code": "enforced_spend_limit_reached"},
                    },
                },
            ),
        ]
    )

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.method)
        return next(answers)

    http = HTTP(
        "anthropic",
        "https://api.example.test",
        "k",
        transport=httpx.MockTransport(handler),
        retry=RetryPolicy(attempts=4),
        sleep=lambda _s: None,
    )
    remote = ADAPTERS["anthropic"](http)
    assert list(remote.list_files()) == []
    assert calls == ["GET", "GET"]
    with pytest.raises(IncompleteListing, match="spend limit"):
        list(remote.list_files())
    assert calls == ["GET", "GET", "GET"]  # the spend cap is not waited out


# --- Gemini ------------------------------------------------------------------------------------------


def test_gemini_uploads_in_two_steps_and_records_its_expiry_and_hash(provider_env, run, tmp_path: Path) -> None:
    emu = provider_env("gemini", keep_content=True)
    doc = write(tmp_path / "notes.txt", "forty-eight hours\n" * 1000)
    [record] = run("upload", str(doc), "-p", "gemini", "--json").json()
    assert record["id"].startswith("files/") and record["purpose"] == ""
    stored = emu.files[record["id"]]
    assert stored.content == doc.read_bytes() and stored.filename == "notes.txt"
    assert near(record["expires_at"], datetime.fromtimestamp(stored.created_at + GEMINI_LIFETIME, UTC), 2)
    start, send = [r for r in emu.requests if r.method == "POST"]
    assert start.rel == "/upload/files" and start.headers["x-goog-upload-command"] == "start"
    assert start.headers["x-goog-upload-header-content-length"] == str(doc.stat().st_size)
    assert send.rel == "/files" and send.headers["x-goog-upload-command"] == "upload, finalize"
    assert send.headers["x-goog-upload-offset"] == "0" and "upload_id" in send.query
    assert all(r.headers.get("x-goog-api-key") == SECRET for r in emu.requests if r.rel != "/files")
    remote = adapter("gemini")
    try:
        [listed] = remote.list_files()
    finally:
        remote.close()
    assert listed.sha256 == record["sha256"]  # its base64 hash, read as the hex digest it encodes
    usage = run("usage", "-p", "gemini").stdout
    assert "48h" in usage or "2d" in usage


@pytest.mark.parametrize("step", ["/upload/files", "/files"])
def test_gemini_a_lost_answer_at_either_step_makes_no_untracked_copy(
    step: str, provider_env, run, tmp_path: Path, home: Path
) -> None:
    emu = provider_env("gemini")
    emu.inject("POST", step, drop_response=True, after_store=True)
    result = run("upload", str(write(tmp_path / "a.txt", "hello world")), "-p", "gemini", "--json")
    assert result.exit_code == 0, result.stderr
    [record] = result.json()
    assert list(emu.files) == [record["id"]]  # one copy, the one the ledger holds
    assert emu.count("POST", "/files") == 1  # the bytes went once: a lost start is just started again
    assert ledger_rows(home, "SELECT status, file_id FROM files") == [("active", record["id"])]


def test_gemini_an_empty_project_lists_as_nothing_and_pages_by_token(provider_env, run) -> None:
    emu = provider_env("gemini", page_size=4)
    raw = httpx.get(f"{emu.url}/v1beta/files", headers={"x-goog-api-key": SECRET})
    assert raw.status_code == 200 and raw.json() == {}
    remote = adapter("gemini")
    try:
        assert list(remote.list_files()) == []
        seeded = {emu.add_file(f"f{i}.txt", 10 + i).id for i in range(9)}
        assert {f.id for f in remote.list_files()} == seeded
    finally:
        remote.close()
    tokens = [r.query.get("pageToken") for r in emu.requests if r.method == "GET"]
    assert tokens[-3] is None and all(tokens[-2:])  # three pages: 4, 4, 1
    assert run("reconcile", "-p", "gemini", "--apply", "--min-age", "0").exit_code == 0


def test_gemini_a_missing_file_is_403_which_proves_nothing_gone(provider_env, run, tmp_path: Path) -> None:
    emu = provider_env("gemini")
    baseline(run, "-p", "gemini")
    [record] = run("upload", str(write(tmp_path / "a.txt", "a")), "-p", "gemini", "--json").json()
    emu.hidden.add(record["id"])  # a listing that leaves it out; the file is there
    ledger_sql(Path(load_settings().home), "UPDATE files SET created_at = ?", datetime.now(UTC) - timedelta(hours=2))
    plan = run("reconcile", "-p", "gemini", "--json", "--accept-missing", "--accept-empty").json()
    # Its retrieve finds it: kept. (Had it answered 403, a second listing would have decided.)
    assert plan["missing"] == [] and [u["id"] for u in plan["unconfirmed"]] == [record["id"]]
    with emu.lock:
        del emu.files[record["id"]]  # gone for real, before its 48 hours
    plan = run("reconcile", "-p", "gemini", "--json", "--accept-missing", "--accept-empty").json()
    assert [m["id"] for m in plan["missing"]] == [record["id"]] and plan["unconfirmed"] == []
    relists = [r for r in emu.requests if r.method == "GET" and r.rel == "/files"]
    assert len(relists) == 4  # two listings per run: the 403 was not taken for proof
    remote = adapter("gemini")
    try:
        with pytest.raises(ProviderError) as denied:
            remote.retrieve("files/gone123")
        assert denied.value.status == 403 and not isinstance(denied.value, FileNotFoundAtProvider)
        with pytest.raises(FileNotFoundAtProvider):
            remote.retrieve("../../v1/models")  # not a name Gemini gives: nothing is sent
    finally:
        remote.close()
    assert all(".." not in r.path for r in emu.requests)


def test_gemini_files_past_their_48_hours_hold_no_quota_and_expire_quietly(
    provider_env, run, tmp_path: Path, home: Path
) -> None:
    emu = provider_env("gemini")
    write(home / "config.toml", "[providers.gemini]\nmax_files = 2\n")
    baseline(run, "-p", "gemini")
    first = run("upload", str(write(tmp_path / "a.txt", "a")), str(write(tmp_path / "b.txt", "b")), "-p", "gemini")
    assert first.exit_code == 0, first.stderr
    full = run("check", str(write(tmp_path / "c.txt", "c")), "-p", "gemini")
    assert full.exit_code == 3
    # Two days later: Google has deleted both, filekeeper has not run since.
    past = datetime.now(UTC) - timedelta(hours=1)
    ledger_sql(home, "UPDATE files SET expires_at = ?, provider_expires_at = ?, created_at = ?", past, past, past)
    with emu.lock:
        for f in emu.files.values():
            f.expires_at = int(past.timestamp())
    assert run("usage", "-p", "gemini", "--json").json()[0]["files"] == 0
    assert run("upload", str(tmp_path / "c.txt"), "-p", "gemini").exit_code == 0  # room again
    plan = run("reconcile", "-p", "gemini", "--apply", "--json")
    assert plan.exit_code == 0, plan.stderr  # no "most files missing": they aged out
    body = plan.json()
    assert len(body["expired"]) == 2 and body["missing"] == [] and body["deleted"] == []
    statuses = ledger_rows(home, "SELECT filename, status FROM files ORDER BY filename")
    assert statuses == [("a.txt", "expired"), ("b.txt", "expired"), ("c.txt", "active")]


def test_gemini_deleting_a_file_google_already_expired_records_it_expired(
    provider_env, run, tmp_path: Path, home: Path
) -> None:
    emu = provider_env("gemini")
    [record] = run("upload", str(write(tmp_path / "a.txt", "a")), "-p", "gemini", "--json").json()
    fresh = run("delete", "files/neverwas", "-p", "gemini")
    assert fresh.exit_code == 1 and "may not exist" in fresh.stderr
    past = datetime.now(UTC) - timedelta(minutes=5)
    ledger_sql(home, "UPDATE files SET expires_at = ?, provider_expires_at = ?", past, past)
    with emu.lock:
        emu.files[record["id"]].expires_at = int(past.timestamp())
    result = run("delete", record["id"], "-p", "gemini", "--json")
    assert result.exit_code == 0, result.stderr
    [gone] = result.json()
    assert gone["status"] == "expired" and gone["already_gone"] is True
    assert actions(home)[-1] == "found_expired"
    assert ledger_rows(home, "SELECT count(*) FROM delete_intents") == [(0,)]


def test_gemini_reads_google_api_key_too_but_not_two_different_keys(
    provider_env, run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider_env("gemini")
    monkeypatch.delenv("GEMINI_API_KEY")
    monkeypatch.setenv("GOOGLE_API_KEY", SECRET)
    assert run("upload", str(write(tmp_path / "a.txt", "a")), "-p", "gemini").exit_code == 0
    monkeypatch.setenv("GEMINI_API_KEY", "another-key-of-another-project")
    both = run("upload", str(write(tmp_path / "b.txt", "b")), "-p", "gemini")
    assert both.exit_code == 2
    assert "GEMINI_API_KEY and GOOGLE_API_KEY are both set" in both.stderr
    assert SECRET not in both.stderr and "another-key" not in both.stderr
    monkeypatch.delenv("GEMINI_API_KEY")
    monkeypatch.delenv("GOOGLE_API_KEY")
    missing = run("upload", str(tmp_path / "b.txt"), "-p", "gemini")
    assert missing.exit_code == 2 and "GEMINI_API_KEY or GOOGLE_API_KEY" in missing.stderr


def test_gemini_a_wrong_key_is_named(provider_env, run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    provider_env("gemini")
    monkeypatch.setenv("GEMINI_API_KEY", "AIza-wrong-key-0123456789")
    result = run("upload", str(write(tmp_path / "a.txt", "a")), "-p", "gemini")
    assert result.exit_code == 1
    assert "API key not valid" in result.stderr and "check GEMINI_API_KEY" in result.stderr
    assert "AIza-wrong-key" not in result.stderr
    monkeypatch.delenv("GEMINI_API_KEY")
    monkeypatch.setenv("GOOGLE_API_KEY", "AIza-wrong-key-0123456789")
    result = run("upload", str(tmp_path / "a.txt"), "-p", "gemini")
    assert result.exit_code == 1 and "check GOOGLE_API_KEY" in result.stderr  # the variable it came from
    doctor = run("doctor", "--json").json()
    [gemini] = [a for a in doctor["accounts"] if a["provider"] == "gemini"]
    assert gemini["api_key_env_used"] == "GOOGLE_API_KEY" and gemini["provider_expiry_seconds"] == {"*": 48 * 3600}
    text = run("doctor").stdout
    assert "GOOGLE_API_KEY: set" in text and "the provider's own expiry (below) comes first" in text


# --- DeepSeek ----------------------------------------------------------------------------------------


def test_deepseek_is_one_profile_over_the_openai_family(provider_env, run, tmp_path: Path) -> None:
    from filekeeper.providers.deepseek import DeepSeek
    from filekeeper.providers.openai import OpenAIShaped

    assert DeepSeek.__bases__ == (OpenAIShaped,)
    emu = provider_env("deepseek")
    [record] = run("upload", str(write(tmp_path / "scan.png", "png")), "-p", "deepseek", "--ttl", "2h", "--json").json()
    assert record["purpose"] == "user_data" and record["id"].startswith("file-api-")
    [post] = [r for r in emu.requests if r.method == "POST"]
    # purpose first (the emulator, like DeepSeek, refuses it after the file), then the expiry
    assert list(post.form) == ["purpose", "expires_after[anchor]", "expires_after[seconds]"]
    assert emu.files[record["id"]].expires_at == emu.files[record["id"]].created_at + 7200
    big_text = tmp_path / "book.txt"
    with big_text.open("wb") as f:
        f.truncate(33 * 2**20)
    refused = run("check", str(big_text), "-p", "deepseek", "--json")
    assert refused.exit_code == 3
    [v] = refused.json()["violations"]
    assert v["limit"] == "max_file_bytes" and v["max"] == 32 * 2**20 and "per .txt file" in v["message"]
    wrong = run("check", str(big_text), "-p", "deepseek", "--purpose", "assistants")
    assert wrong.exit_code == 2 and "text_recognition" in wrong.stderr


# --- Z.AI --------------------------------------------------------------------------------------------


def test_zai_is_listed_once_per_purpose_and_sees_everything(provider_env, run, tmp_path: Path) -> None:
    emu = provider_env("zai", page_size=2)
    baseline(run, "-p", "zai")
    for purpose in ("agent", "batch", "file-extract"):
        name = f"{purpose}.jsonl" if purpose == "batch" else f"{purpose}.txt"
        result = run("upload", str(write(tmp_path / name, purpose)), "-p", "zai", "--purpose", purpose)
        assert result.exit_code == 0, result.stderr
    orphan = emu.add_file("orphan.pdf", 3, purpose="code-interpreter", created_at=HOUR_AGO)
    plan = run("reconcile", "-p", "zai", "--json").json()
    assert plan["listed"] == 4 and [o["id"] for o in plan["orphans"]] == [orphan.id]
    assert plan["missing"] == plan["unconfirmed"] == []
    purposes = {r.query.get("purpose") for r in emu.requests if r.method == "GET"}
    assert purposes >= {"agent", "batch", "file-extract", "code-interpreter"}


def test_zai_files_of_a_purpose_its_list_cannot_show_are_never_called_missing(
    provider_env, run, tmp_path: Path, home: Path
) -> None:
    provider_env("zai")
    baseline(run, "-p", "zai")
    voice = run("upload", str(write(tmp_path / "v.mp3", "voice")), "-p", "zai", "--purpose", "voice-clone-input")
    assert voice.exit_code == 0, voice.stderr
    ledger_sql(home, "UPDATE files SET created_at = ?", datetime.now(UTC) - timedelta(hours=2))
    for _ in range(2):
        result = run("reconcile", "-p", "zai", "--apply", "--json")
        assert result.exit_code == 0, result.stderr
        assert result.json()["missing"] == []
    assert ledger_rows(home, "SELECT status FROM files") == [("active",)]


def test_zai_limits_are_per_purpose_in_check_upload_evict_and_usage(
    provider_env, run, tmp_path: Path, home: Path
) -> None:
    emu = provider_env("zai")
    write(home / "config.toml", "[providers.zai.purpose_limits.agent]\nmax_files = 1\n")
    assert run("upload", str(write(tmp_path / "old.jsonl", "b")), "-p", "zai", "--purpose", "batch").exit_code == 0
    assert run("upload", str(write(tmp_path / "a.txt", "a")), "-p", "zai").exit_code == 0
    refused = run("upload", str(write(tmp_path / "b.txt", "b")), "-p", "zai", "--json")
    assert refused.exit_code == 3
    [check] = [run("check", str(tmp_path / "b.txt"), "-p", "zai", "--json").json()]
    [v] = check["violations"]
    assert (v["limit"], v["purpose"], v["current"], v["max"]) == ("max_files", "agent", 1, 1)
    assert run("upload", str(write(tmp_path / "c.jsonl", "c")), "-p", "zai", "--purpose", "batch").exit_code == 0
    usage = run("usage", "-p", "zai", "--json").json()[0]
    assert usage["files"] == 3 and usage["by_purpose"]["agent"] == {"files": 1, "bytes": 1}
    assert usage["limits"]["by_purpose"]["agent"]["max_files"] == 1
    assert usage["by_purpose"]["batch"]["files"] == 2
    assert "  agent" in run("usage", "-p", "zai").stdout
    # Evicting the oldest to make room for an agent file takes the agent file, not the older batch one.
    evicted = run("upload", str(tmp_path / "b.txt"), "-p", "zai", "--evict", "oldest", "--json")
    assert evicted.exit_code == 0, evicted.stderr
    [result] = evicted.json()
    assert [e["filename"] for e in result["evicted"]] == ["a.txt"]
    assert sorted(f.filename for f in emu.files.values()) == ["b.txt", "c.jsonl", "old.jsonl"]
    big = tmp_path / "big.pdf"
    with big.open("wb") as f:
        f.truncate(60 * 10**6)
    too_big = run("check", str(big), "-p", "zai", "--purpose", "file-extract", "--json")
    assert too_big.exit_code == 3 and "of purpose file-extract is 50.0 MB" in too_big.json()["violations"][0]["message"]


# --- OpenAI and xAI ----------------------------------------------------------------------------------


def test_openai_batch_files_expire_after_30_days_unless_told(provider_env, run, tmp_path: Path, home: Path) -> None:
    provider_env("openai")
    batch = write(tmp_path / "in.jsonl", '{"custom_id": "1"}\n')
    [record] = run("upload", str(batch), "-p", "openai", "--purpose", "batch", "--json").json()
    assert near(record["expires_at"], datetime.now(UTC) + timedelta(days=30))
    [other] = run("upload", str(write(tmp_path / "a.txt", "a")), "-p", "openai", "--json").json()
    assert near(other["expires_at"], datetime.now(UTC) + timedelta(days=180))
    [(provider_expiry,)] = ledger_rows(home, "SELECT provider_expires_at FROM files WHERE file_id = ?", record["id"])
    assert near(provider_expiry, datetime.now(UTC) + timedelta(days=30))
    big = tmp_path / "big.jsonl"
    with big.open("wb") as f:
        f.truncate(201 * 10**6)
    refused = run("check", str(big), "-p", "openai", "--purpose", "batch", "--json")
    assert refused.exit_code == 3 and refused.json()["violations"][0]["max"] == 200 * 10**6
    assert run("check", str(big), "-p", "openai", "--purpose", "assistants").exit_code == 0


def test_xai_files_over_48_mb_are_refused_before_sending_and_a_413_is_told(
    provider_env, run, tmp_path: Path, home: Path
) -> None:
    emu = provider_env("xai")
    big = tmp_path / "big.txt"
    with big.open("wb") as f:
        f.truncate(49 * 10**6)
    assert run("check", str(big), "-p", "xai").exit_code == 3
    write(home / "config.toml", '[providers.xai]\nmax_file_bytes = "60MB"\n')
    with big.open("r+b") as f:
        f.truncate(51 * 10**6)
    result = run("upload", str(big), "-p", "xai")
    assert result.exit_code == 1 and "too large" in result.stderr and "HTTP 413" in result.stderr
    assert emu.files == {} and ledger_rows(home, "SELECT status FROM files") == [("failed",)]


# --- x-should-retry ----------------------------------------------------------------------------------


def test_x_should_retry_overrides_the_status(provider_env, home: Path) -> None:
    emu = provider_env("openai")
    emu.inject("GET", "/files", status=503, headers={"x-should-retry": "false"})
    remote = adapter("openai")
    try:
        with pytest.raises(IncompleteListing, match="Emulated fault"):
            list(remote.list_files())
        assert emu.count("GET", "/files") == 1  # told not to: not retried
        emu.inject("GET", "/files", status=400, headers={"x-should-retry": "true"})
        assert list(remote.list_files()) == []
        assert emu.count("GET", "/files") == 3  # told to: retried though a 400
    finally:
        remote.close()


def test_x_should_retry_true_never_resends_an_upload_whose_fate_is_unknown(provider_env, tmp_path: Path) -> None:
    emu = provider_env("openai")
    emu.inject("POST", "/files", status=500, headers={"x-should-retry": "true"}, after_store=True)
    remote = adapter("openai")
    try:
        from filekeeper.errors import ResponseLost

        with pytest.raises(ResponseLost):
            remote.upload(write(tmp_path / "a.txt", "a"), purpose="assistants")
    finally:
        remote.close()
    assert emu.count("POST", "/files") == 1 and len(emu.files) == 1  # the caller looks before sending again


def test_every_flavor_serves_its_own_error_envelope() -> None:
    shapes: dict[str, Any] = {}
    for flavor in ("anthropic", "gemini"):
        with Emulator(flavor) as emu:
            shapes[flavor] = emu.error_body(404, "nope")
    assert shapes["anthropic"]["type"] == "error" and shapes["anthropic"]["error"]["type"] == "not_found_error"
    assert shapes["gemini"] == {"error": {"code": 404, "message": "nope", "status": "NOT_FOUND"}}


# --- what an outside attempt found ---------------------------------------------------------------------


def test_zai_a_twin_its_listing_cannot_show_is_not_called_missing(provider_env, run, tmp_path: Path, home) -> None:
    emu = provider_env("zai")
    voice = write(tmp_path / "v.mp3", "voice")
    first = run("upload", str(voice), "-p", "zai", "--purpose", "voice-clone-input", "--json")
    assert first.exit_code == 0, first.stderr
    again = run("upload", str(voice), "-p", "zai", "--purpose", "voice-clone-input", "--json")
    assert again.exit_code == 0, again.stderr
    # Z.AI cannot say whether the first is still there (no retrieve, and its purpose is not listed):
    # it is not reused, and not marked missing either.
    rows = ledger_rows(home, "SELECT file_id, status FROM files ORDER BY id")
    assert rows == [(first.json()[0]["id"], "active"), (again.json()[0]["id"], "active")]
    assert "missing" not in actions(home) and len(emu.files) == 2


def test_zai_a_lost_answer_for_a_purpose_it_cannot_list_is_never_sent_again(
    provider_env, run, tmp_path: Path, home: Path
) -> None:
    emu = provider_env("zai")
    baseline(run, "-p", "zai")
    voice = write(tmp_path / "v.mp3", "voice")
    emu.inject("POST", "/files", drop_response=True, after_store=True)
    lost = run("upload", str(voice), "-p", "zai", "--purpose", "voice-clone-input")
    assert lost.exit_code == 1 and "does not list files of purpose 'voice-clone-input'" in lost.stderr
    assert len(emu.files) == 1 and emu.count("POST", "/files") == 1  # sent once: it landed, unseen
    assert ledger_rows(home, "SELECT status FROM files") == [("pending",)]
    again = run("upload", str(voice), "-p", "zai", "--purpose", "voice-clone-input")
    assert again.exit_code == 1 and "nothing was sent" in again.stderr
    assert len(emu.files) == 1 and emu.count("POST", "/files") == 1
    ledger_sql(home, "UPDATE files SET created_at = ?", datetime.now(UTC) - timedelta(hours=2))
    plan = run("reconcile", "-p", "zai", "--json").json()
    assert [(p["outcome"], p["filename"]) for p in plan["pending"]] == [("unknowable", "v.mp3")]
    text = run("reconcile", "-p", "zai").stdout
    assert "its purpose is not listed" in text
    assert run("reconcile", "-p", "zai", "--apply").exit_code == 0
    assert ledger_rows(home, "SELECT status FROM files") == [("pending",)]  # never failed on no evidence


def test_zai_an_expired_file_its_listing_cannot_show_is_deleted_all_the_same(
    provider_env, run, tmp_path: Path, home: Path
) -> None:
    emu = provider_env("zai")
    baseline(run, "-p", "zai")
    [kept] = upload(run, tmp_path, "zai", "kept.txt")
    voice = run("upload", str(write(tmp_path / "v.mp3", "voice")), "-p", "zai", "--purpose", "voice-clone-input")
    [record] = run("ls", "-p", "zai", "--purpose", "voice-clone-input", "--json").json()
    assert voice.exit_code == 0 and record["id"] in emu.files
    ledger_sql(home, "UPDATE files SET expires_at = ? WHERE purpose = 'voice-clone-input'", datetime.now(UTC))
    result = run("reconcile", "-p", "zai", "--apply", "--json")
    assert result.exit_code == 0, result.stderr
    assert result.json()["deleted"] == [record["id"]] and set(emu.files) == {kept["id"]}
    assert ledger_rows(home, "SELECT filename, status FROM files ORDER BY id") == [
        ("kept.txt", "active"),
        ("v.mp3", "expired"),
    ]


def test_gemini_ids_are_taken_without_their_files_prefix(provider_env, run, tmp_path: Path, home: Path) -> None:
    emu = provider_env("gemini")
    [record] = run("upload", str(write(tmp_path / "a.txt", "a")), "-p", "gemini", "--json").json()
    short = record["id"].removeprefix("files/")
    assert record["id"].startswith("files/") and short != record["id"]
    shown = run("show", short)
    assert shown.exit_code == 0 and record["id"] in shown.stdout
    gone = run("delete", short, "--json")  # no --provider: found in the ledger as files/…
    assert gone.exit_code == 0, gone.stderr
    assert gone.json()[0]["id"] == record["id"] and emu.files == {}
    assert ledger_rows(home, "SELECT file_id, status FROM files") == [(record["id"], "deleted")]
    [other] = run("upload", str(write(tmp_path / "b.txt", "b")), "-p", "gemini", "--json").json()
    assert run("delete", other["id"].removeprefix("files/"), "-p", "gemini").exit_code == 0
    assert emu.files == {} and ledger_rows(home, "SELECT count(*) FROM files WHERE status = 'deleted'") == [(2,)]


def test_gemini_files_google_expired_read_as_expired_before_any_reconcile(
    provider_env, run, tmp_path: Path, home: Path
) -> None:
    provider_env("gemini")
    upload(run, tmp_path, "gemini", "old.txt", "new.txt")
    past = datetime.now(UTC) - timedelta(hours=1)
    ledger_sql(home, "UPDATE files SET provider_expires_at = ?, expires_at = ? WHERE filename = 'old.txt'", past, past)
    assert [r["filename"] for r in run("ls", "--json").json()] == ["new.txt"]  # holds no quota: not listed
    every = {r["filename"]: r["status"] for r in run("ls", "--status", "all", "--json").json()}
    assert every == {"old.txt": "expired", "new.txt": "active"}
    assert [r["filename"] for r in run("ls", "--status", "expired", "--json").json()] == ["old.txt"]
    assert [r["filename"] for r in run("ls", "--status", "active", "--json").json()] == ["new.txt"]
    [account] = run("report", "-p", "gemini", "--json").json()["accounts"]
    assert account["statuses"]["expired"] == 1 and account["statuses"]["active"] == 1 and account["files"] == 1
    assert [f["filename"] for f in account["largest"]] == ["new.txt"]
    assert ledger_rows(home, "SELECT status FROM files ORDER BY id") == [("active",), ("active",)]  # a reader only


def test_purpose_limits_for_a_purpose_the_provider_has_not_are_refused(provider_env, run, home: Path) -> None:
    provider_env("zai")
    write(home / "config.toml", "[providers.zai.purpose_limits.agnet]\nmax_files = 5\n")
    result = run("usage", "-p", "zai")
    assert result.exit_code == 2 and "no purpose 'agnet'" in result.stderr and "agent" in result.stderr
    write(home / "config.toml", "[providers.gemini.purpose_limits.batch]\nmax_files = 5\n")
    result = run("usage", "-p", "gemini")
    assert result.exit_code == 2 and "its files have no purpose" in result.stderr
    write(home / "config.toml", "[providers.zai.purpose_limits.agent]\nmax_files = 5\n")
    assert run("usage", "-p", "zai").exit_code == 0


@pytest.mark.parametrize("flavor", ["gemini", "openai"])
def test_a_file_stored_but_failed_in_processing_is_recorded_and_told(
    flavor: str, provider_env, run, tmp_path: Path, home: Path
) -> None:
    emu = provider_env(flavor)
    emu.failing.add("broken.txt")
    result = run("upload", str(write(tmp_path / "broken.txt", "x")), "-p", flavor)
    assert result.exit_code == 1 and "could not process it" in result.stderr
    [stored] = emu.files
    assert ledger_rows(home, "SELECT file_id, status FROM files") == [(stored, "active")]  # it holds quota
    assert f"filekeeper delete {stored}" in result.stderr


@pytest.mark.parametrize("stored", [True, False], ids=["after-store", "before-store"])
def test_gemini_a_finalize_whose_session_is_gone_is_looked_for_not_failed(
    stored: bool, provider_env, run, tmp_path: Path, home: Path
) -> None:
    emu = provider_env("gemini")
    # A 404 at finalize says the session is gone, which it also is when it finished: not "no such file".
    emu.inject("POST", "/files", status=404, after_store=stored)
    result = run("upload", str(write(tmp_path / "a.txt", "a")), "-p", "gemini", "--json")
    assert result.exit_code == 0, result.stderr
    [record] = result.json()
    assert list(emu.files) == [record["id"]]  # one copy, found in the listing or sent again
    assert emu.count("POST", "/files") == (1 if stored else 2)
    assert ledger_rows(home, "SELECT status, file_id FROM files") == [("active", record["id"])]


def test_gemini_an_error_answered_as_a_success_is_no_empty_page(provider_env, run, tmp_path: Path) -> None:
    emu = provider_env("gemini")
    baseline(run, "-p", "gemini")
    upload(run, tmp_path, "gemini", "a.txt")
    emu.inject("GET", "/files", status=200, body={"error": {"code": 500, "message": "backend", "status": "INTERNAL"}})
    remote = adapter("gemini")
    try:
        with pytest.raises(IncompleteListing):
            list(remote.list_files())
    finally:
        remote.close()


def test_a_file_uploaded_a_moment_ago_and_not_listed_yet_is_shown_held_back(
    provider_env, run, tmp_path: Path, home: Path
) -> None:
    emu = provider_env("openai")
    baseline(run, "-p", "openai")
    upload(run, tmp_path, "openai", "listed.txt")
    age_everything(home)
    [record] = upload(run, tmp_path, "openai", "fresh.txt")
    emu.hidden.add(record["id"])  # a list endpoint a moment behind the upload
    plan = run("reconcile", "-p", "openai", "--json").json()
    assert [t["id"] for t in plan["not_yet_listed"]] == [record["id"]] and plan["missing"] == []
    assert run("reconcile", "-p", "openai").stdout == ""  # nothing to do: quiet for cron, as with young orphans
    emu.add_file("orphan.txt", 3, created_at=HOUR_AGO)
    text = run("reconcile", "-p", "openai").stdout  # with work to show, what is held back is shown too
    assert "held back (1)" in text and "not listed yet: kept" in text and record["id"] in text
    assert run("reconcile", "-p", "openai", "--apply").exit_code == 0
    assert ledger_rows(home, "SELECT status FROM files") == [("active",), ("active",)]


@pytest.mark.parametrize("value", [1, "yes", "true"])
def test_a_has_more_neither_true_nor_false_is_no_end_of_listing(value: Any, provider_env, run, tmp_path: Path) -> None:
    emu = provider_env("openai")
    stored = emu.add_file("a.txt", 3)
    emu.inject(
        "GET", "/files", status=200, body={"object": "list", "data": [emu.file_object(stored)], "has_more": value}
    )
    remote = adapter("openai")
    try:
        with pytest.raises(IncompleteListing, match="neither true nor false"):
            list(remote.list_files())
    finally:
        remote.close()


def test_a_provider_filename_with_a_nul_is_kept_readable_and_reconcile_goes_on(
    provider_env, run, tmp_path: Path, home: Path
) -> None:
    emu = provider_env("openai")
    baseline(run, "-p", "openai")
    planted = emu.add_file("evil\x00name.txt", 4, created_at=HOUR_AGO)
    result = run("reconcile", "-p", "openai", "--adopt", "--apply", "--json")  # PostgreSQL text holds no NUL
    assert result.exit_code == 0, result.stderr
    assert result.json()["adopted"] == [planted.id]
    [row] = ledger_rows(home, "SELECT filename FROM files")
    assert row == ("evil\N{REPLACEMENT CHARACTER}name.txt",)
