"""Upload, ls, usage and delete against each provider's emulator, over a real socket."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from filekeeper import Keeper, ProviderError
from tests.conftest import (
    KEY_VARS,
    PROVIDERS,
    SECRET,
    URL_VARS,
    actions,
    as_json,
    files_count,
    ledger_dump,
    ledger_rows,
    run_on_terminal,
    run_process,
    write,
)

RECORD_KEYS = {
    "id",
    "provider",
    "account",
    "filename",
    "bytes",
    "sha256",
    "purpose",
    "status",
    "created_at",
    "expires_at",
    "deleted_at",
    "ledger_id",
    "reused",
}
DEFAULT_PURPOSE = {
    "moonshot": "file-extract",
    "zai": "agent",
    "xai": "assistants",
    "openai": "assistants",
    "deepseek": "user_data",
    "anthropic": "",
    "gemini": "",
}


@pytest.mark.parametrize("flavor", PROVIDERS)
def test_a_new_user_uploads_lists_and_deletes(flavor: str, home: Path, emulators, tmp_path: Path) -> None:
    """The issue's 'done when', as separate processes: upload, ls, usage, delete, all in the events."""
    emu = emulators(flavor)
    env = {"FILEKEEPER_HOME": str(home), KEY_VARS[flavor]: SECRET, URL_VARS[flavor]: emu.url}
    doc = write(tmp_path / "report, final.txt", "quarterly numbers\n" * 100)

    up = run_process("upload", str(doc), "--provider", flavor, "--json", env=env)
    assert up.returncode == 0, up.stderr
    [record] = json.loads(up.stdout)
    assert set(record) == RECORD_KEYS | {"path", "outcome", "evicted"}
    assert (record["path"], record["outcome"], record["evicted"]) == (str(doc), "uploaded", [])
    assert record["status"] == "active" and record["provider"] == flavor and record["account"] == flavor
    assert record["bytes"] == doc.stat().st_size and record["filename"] == "report, final.txt"
    assert record["purpose"] == DEFAULT_PURPOSE[flavor]
    assert record["created_at"].endswith("Z") and record["expires_at"].endswith("Z")
    with emu.lock:
        assert list(emu.files) == [record["id"]]
        assert emu.files[record["id"]].sha256 == record["sha256"]

    ls = run_process("ls", "--provider", flavor, "--json", env=env)
    assert [r["id"] for r in json.loads(ls.stdout)] == [record["id"]]
    human = run_process("ls", env=env)
    assert record["id"] in human.stdout and "report, final.txt" in human.stdout

    usage = run_process("usage", "--json", env=env)
    [row] = json.loads(usage.stdout)
    assert (row["account"], row["files"], row["bytes"]) == (flavor, 1, doc.stat().st_size)
    assert set(row["limits"]) == {
        "max_files",
        "max_total_bytes",
        "max_file_bytes",
        "retention_days",
        "by_purpose",
        "by_format",
    }
    assert row["by_purpose"][DEFAULT_PURPOSE[flavor]] == {"files": 1, "bytes": doc.stat().st_size}

    gone = run_process("delete", record["id"], "--provider", flavor, "--json", env=env)
    assert gone.returncode == 0, gone.stderr
    [deleted] = json.loads(gone.stdout)
    assert deleted["status"] == "deleted" and deleted["deleted_at"] and deleted["already_gone"] is False
    with emu.lock:
        assert emu.files == {}
    assert json.loads(run_process("ls", "--json", env=env).stdout) == []
    assert json.loads(run_process("usage", "--json", env=env).stdout)[0]["files"] == 0
    assert actions(home) == ["account_added", "reserve", "upload", "delete"]
    events = ledger_rows(home, "SELECT file_id, actor, pid, detail FROM events WHERE action != 'account_added'")
    assert all(file_id == record["id"] for file_id, *_ in events[1:])
    assert all("@" in actor and pid > 0 for _, actor, pid, _ in events)


def test_pending_is_written_before_the_request_and_failed_after_a_refusal(
    provider_env, run, tmp_path: Path, home: Path
) -> None:
    emu = provider_env("moonshot", max_files=0)
    doc = write(tmp_path / "a.txt", "hello")
    result = run("upload", str(doc), "-p", "moonshot")
    assert result.exit_code == 1
    assert "exceeded the max file count" in result.stderr and "a.txt" in result.stderr
    assert ledger_rows(home, "SELECT status, file_id FROM files") == [("failed", None)]
    assert actions(home) == ["account_added", "reserve", "upload_failed"]
    assert emu.count("POST", "/files") == 1


def test_an_unsettled_lost_response_leaves_the_reservation_pending(
    provider_env, run, tmp_path: Path, home: Path
) -> None:
    emu = provider_env("openai")
    write(home / "config.toml", "[http]\nbackoff_seconds = 0.01\n")
    emu.inject("POST", "/files", drop_response=True)
    emu.inject("GET", "/files", status=500, times=20)
    result = run("upload", str(write(tmp_path / "a.txt", "hello")), "-p", "openai")
    assert result.exit_code == 1
    assert "stays pending" in result.stderr
    # The reservation was written before the request went out, and nothing pretends it failed.
    assert ledger_rows(home, "SELECT status FROM files") == [("pending",)]
    usage = run("usage", "--json", "-p", "openai").json()
    assert usage[0]["files"] == 1


@pytest.mark.parametrize("flavor", PROVIDERS)
def test_a_response_lost_after_the_file_was_stored_is_adopted_not_duplicated(
    flavor: str, provider_env, run, tmp_path: Path, home: Path
) -> None:
    emu = provider_env(flavor)
    emu.inject("POST", "/files", drop_response=True, after_store=True)
    result = run("upload", str(write(tmp_path / "a.txt", "hello world")), "-p", flavor, "--json")
    assert result.exit_code == 0, result.stderr
    [record] = result.json()
    with emu.lock:
        assert list(emu.files) == [record["id"]]  # one copy, and it is the one the ledger holds
    assert emu.count("POST", "/files") == 1
    assert ledger_rows(home, "SELECT status FROM files") == [("active",)]
    [(detail,)] = ledger_rows(home, "SELECT detail FROM events WHERE action = 'upload'")
    assert "adopted_after" in as_json(detail)


def test_a_response_lost_before_the_file_was_stored_is_sent_again(provider_env, run, tmp_path: Path) -> None:
    emu = provider_env("zai")
    emu.inject("POST", "/files", drop_response=True)
    result = run("upload", str(write(tmp_path / "a.txt", "hello world")), "-p", "zai", "--json")
    assert result.exit_code == 0, result.stderr
    assert emu.count("POST", "/files") == 2
    with emu.lock:
        assert len(emu.files) == 1


def test_429_with_retry_after_is_waited_out(provider_env, run, tmp_path: Path) -> None:
    emu = provider_env("moonshot")
    emu.inject(
        "POST",
        "/files",
        status=429,
        headers={"retry-after-ms": "20"},
        body=emu.error_body(429, "rate limit reached", type_="rate_limit_reached_error"),
        times=2,
    )
    result = run("upload", str(write(tmp_path / "a.txt", "hi there")), "-p", "moonshot")
    assert result.exit_code == 0, result.stderr
    assert emu.count("POST", "/files") == 3


def test_an_exhausted_balance_fails_at_once(provider_env, run, tmp_path: Path, home: Path) -> None:
    emu = provider_env("zai")
    emu.inject("POST", "/files", status=429, body=emu.error_body(429, "balance exhausted", code="1113"), times=5)
    result = run("upload", str(write(tmp_path / "a.txt", "hi there")), "-p", "zai")
    assert result.exit_code == 1
    assert "balance exhausted" in result.stderr
    assert emu.count("POST", "/files") == 1
    assert ledger_rows(home, "SELECT status FROM files") == [("failed",)]


def test_several_paths_upload_concurrently_each_recorded(provider_env, run, tmp_path: Path, home: Path) -> None:
    emu = provider_env("xai")
    paths = [str(write(tmp_path / f"doc{i}.md", f"# doc {i}\n" * (i + 1))) for i in range(8)]
    result = run("upload", *paths, "-p", "xai", "--json", "--concurrency", "4")
    assert result.exit_code == 0, result.stderr
    records = result.json()
    assert [r["filename"] for r in records] == [f"doc{i}.md" for i in range(8)]
    with emu.lock:
        assert sorted(emu.files) == sorted(r["id"] for r in records)
    assert ledger_rows(home, "SELECT count(*) FROM files WHERE status = 'active'") == [(8,)]
    assert actions(home).count("reserve") == 8 and actions(home).count("upload") == 8


def test_one_failure_among_several_uploads_is_reported_and_the_rest_land(
    provider_env, run, tmp_path: Path, home: Path
) -> None:
    emu = provider_env("openai")
    emu.inject("POST", "/files", status=400, body=emu.error_body(400, "unsupported file"))
    paths = [str(write(tmp_path / f"d{i}.txt", "x" * (i + 1))) for i in range(3)]
    result = run("upload", *paths, "-p", "openai", "--json", "--concurrency", "1")
    assert result.exit_code == 1
    outcomes = [(r["path"], r["outcome"]) for r in result.json()]
    assert outcomes == [(paths[0], "failed"), (paths[1], "uploaded"), (paths[2], "uploaded")]
    assert "unsupported file" in result.json()[0]["error"] and "unsupported file" in result.stderr
    assert result.json()[0]["status"] == "failed" and result.json()[0]["id"] is None
    assert sorted(s for (s,) in ledger_rows(home, "SELECT status FROM files")) == ["active", "active", "failed"]
    with emu.lock:
        assert len(emu.files) == 2


def test_json_mode_prints_only_json(provider_env, run, tmp_path: Path) -> None:
    provider_env("moonshot")
    doc = write(tmp_path / "a.txt", "x")
    for args in (["upload", str(doc), "-p", "moonshot", "--json"], ["ls", "--json"], ["usage", "--json"]):
        result = run(*args)
        assert result.exit_code == 0
        assert isinstance(json.loads(result.stdout), list)
        assert "[" not in result.stderr  # no progress bar either


def test_delete_of_a_file_the_provider_no_longer_has_succeeds(provider_env, run, home: Path, tmp_path: Path) -> None:
    emu = provider_env("openai")
    [record] = run("upload", str(write(tmp_path / "a.txt", "a")), "-p", "openai", "--json").json()
    with emu.lock:
        del emu.files[record["id"]]  # someone used the console
    result = run("delete", record["id"], "-p", "openai", "--json")
    assert result.exit_code == 0, result.stderr
    [doc] = result.json()
    assert (doc["id"], doc["status"], doc["already_gone"], doc["known"]) == (record["id"], "deleted", True, True)
    [(detail,)] = ledger_rows(home, "SELECT detail FROM events WHERE action = 'delete'")
    assert as_json(detail)["already_gone"] is True


def test_delete_failure_exits_1_and_leaves_the_row_active(provider_env, run, tmp_path: Path, home: Path) -> None:
    emu = provider_env("moonshot")
    [record] = run("upload", str(write(tmp_path / "a.txt", "x")), "-p", "moonshot", "--json").json()
    emu.inject("DELETE", "/files", status=403, body=emu.error_body(403, "forbidden"))
    result = run("delete", record["id"], "-p", "moonshot")
    assert result.exit_code == 1 and "forbidden" in result.stderr
    assert ledger_rows(home, "SELECT status FROM files") == [("active",)]


def test_a_configured_account_uses_its_own_key_variable(
    home: Path, emulators, run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    emu = emulators("moonshot")
    write(
        home / "config.toml",
        f'[accounts.team-b]\nprovider = "moonshot"\napi_key_env = "TEAM_B_KEY"\n'
        f'base_url = "{emu.url}"\nmax_files = 200\n',
    )
    missing = run("upload", str(write(tmp_path / "a.txt", "x")), "--account", "team-b")
    assert missing.exit_code == 2 and "set the environment variable TEAM_B_KEY" in missing.stderr
    monkeypatch.setenv("TEAM_B_KEY", SECRET)
    result = run("upload", str(tmp_path / "a.txt"), "--account", "team-b", "--json")
    assert result.exit_code == 0, result.stderr
    assert result.json()[0]["account"] == "team-b"
    [usage] = run("usage", "--account", "team-b", "--json").json()
    assert usage["limits"]["max_files"] == 200 and usage["files"] == 1
    [(fingerprint,)] = ledger_rows(home, "SELECT key_fingerprint FROM accounts")
    assert fingerprint.startswith("sha256:") and len(fingerprint) == 19


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing", "no such file"),
        ("directory", "is a directory"),
        ("empty", "is empty"),
    ],
)
def test_bad_paths_are_refused_before_anything_is_reserved_or_sent(
    setup: str, message: str, provider_env, run, tmp_path: Path, home: Path
) -> None:
    emu = provider_env("moonshot")
    good = write(tmp_path / "good.txt", "fine")
    bad = {"missing": tmp_path / "nope.txt", "directory": tmp_path, "empty": write(tmp_path / "e.txt", b"")}[setup]
    result = run("upload", str(good), str(bad), "-p", "moonshot")
    assert result.exit_code == 2
    assert message in result.stderr and result.stderr.count("\n") == 1
    assert emu.count("POST") == 0
    assert files_count(home) == 0


def test_unknown_provider_and_missing_key(run, home: Path, tmp_path: Path) -> None:
    doc = write(tmp_path / "a.txt", "x")
    unknown = run("upload", str(doc), "--provider", "acme")
    assert unknown.exit_code == 2 and "unknown provider 'acme'" in unknown.stderr
    missing = run("upload", str(doc), "--provider", "xai")
    assert missing.exit_code == 2 and "set the environment variable XAI_API_KEY" in missing.stderr
    neither = run("upload", str(doc))
    assert neither.exit_code == 2 and "--provider NAME or --account NAME" in neither.stderr
    assert "Traceback" not in unknown.stderr + missing.stderr + neither.stderr


def test_an_unreachable_provider_is_an_operational_failure(
    home: Path, run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")  # discard port: nothing listens
    write(home / "config.toml", "[http]\nattempts = 3\nbackoff_seconds = 0.01\n")
    result = run("upload", str(write(tmp_path / "a.txt", "x")), "-p", "openai")
    assert result.exit_code == 1 and "cannot reach 127.0.0.1" in result.stderr
    assert ledger_rows(home, "SELECT status FROM files") == [("failed",)]
    [(detail,)] = ledger_rows(home, "SELECT detail FROM events WHERE action = 'upload_failed'")
    assert "cannot reach" in as_json(detail)["error"]


def test_the_api_key_is_never_written_anywhere(home: Path, emulators, tmp_path: Path) -> None:
    emu = emulators("openai", api_key="the-right-key-is-different")
    env = {"FILEKEEPER_HOME": str(home), "OPENAI_API_KEY": SECRET, "OPENAI_BASE_URL": emu.url}
    doc = write(tmp_path / "a.txt", "hello")
    # The emulator answers 401 and echoes the key it was given, as real providers do.
    outputs = [run_process("--verbose", "upload", str(doc), "-p", "openai", env=env)]
    assert outputs[0].returncode == 1
    assert "[redacted]" in outputs[0].stderr and "check OPENAI_API_KEY" in outputs[0].stderr
    emu2 = emulators("openai", api_key=SECRET)
    env["OPENAI_BASE_URL"] = emu2.url
    outputs.append(run_process("--verbose", "upload", str(doc), "-p", "openai", "--json", env=env))
    outputs.append(run_process("--verbose", "ls", "--status", "all", env=env))
    outputs.append(run_process("--verbose", "usage", env=env))
    outputs.append(run_process("--verbose", "delete", "file-nope", "-p", "openai", env=env))
    assert [o.returncode for o in outputs] == [1, 0, 0, 0, 1]  # the last: no such file
    for out in outputs:
        assert SECRET not in out.stdout and SECRET not in out.stderr
    assert "HTTP Request" in outputs[1].stderr  # --verbose did log the requests
    dump = ledger_dump(home) + b"".join(p.read_bytes() for p in home.rglob("*") if p.is_file())
    assert len(dump) > 1000 and SECRET.encode() not in dump


def test_progress_bar_on_a_terminal_only(home: Path, emulators, tmp_path: Path) -> None:
    emu = emulators("moonshot")
    env = {**os.environ, "FILEKEEPER_HOME": str(home), "MOONSHOT_API_KEY": SECRET, "MOONSHOT_BASE_URL": emu.url}
    doc = write(tmp_path / "big.txt", os.urandom(3_000_000))
    code, tty_err = run_on_terminal("upload", str(doc), "-p", "moonshot", env=env)
    assert code == 0
    assert "uploading [" in tty_err and "3.0 MB / 3.0 MB" in tty_err and "/s" in tty_err and "left" in tty_err
    piped = run_process("upload", str(doc), "-p", "moonshot", env=env)
    assert piped.returncode == 0 and "uploading [" not in piped.stderr


def test_library_api(home: Path, provider_env, tmp_path: Path) -> None:
    emu = provider_env("xai")
    doc = write(tmp_path / "a.json", '{"a": 1}')
    with Keeper() as keeper:
        [record] = keeper.upload_files([doc], provider="xai")
        assert record.status == "active" and record.id in emu.files
        assert [r.id for r in keeper.files(provider="xai")] == [record.id]
        [usage] = keeper.usage(provider="xai")
        assert (usage.files, usage.bytes) == (1, doc.stat().st_size)
        [deleted] = keeper.delete([record.id], provider="xai")
        assert deleted.record is not None and deleted.record.status == "deleted"
        emu.inject("POST", "/files", status=400, body=emu.error_body(400, "nope"))
        with pytest.raises(ProviderError, match="nope"):
            keeper.upload_files([doc], provider="xai")


@pytest.mark.parametrize("flavor", PROVIDERS)
def test_retrieve_and_list_over_the_socket(flavor: str, provider_env, tmp_path: Path) -> None:
    """Every adapter against its emulator: retrieve (Z.AI via its listing) and a multi-page list."""
    from filekeeper import load_settings
    from filekeeper.errors import FileNotFoundAtProvider
    from filekeeper.providers import connect

    emu = provider_env(flavor, page_size=7)
    seeded = [emu.add_file(f"seed{i}.txt", 100 + i, purpose=DEFAULT_PURPOSE[flavor]) for i in range(30)]
    remote = connect(load_settings().resolve(provider=flavor))
    try:
        assert sorted(f.id for f in remote.list_files()) == sorted(f.id for f in seeded)
        got = remote.retrieve(seeded[17].id)
        assert (got.id, got.filename, got.bytes) == (seeded[17].id, "seed17.txt", 117)
        if flavor == "gemini":
            # Gemini answers 403 for a file that does not exist, as for one of another project:
            # that proves nothing gone, so it is no FileNotFoundAtProvider.
            with pytest.raises(ProviderError, match="may not exist") as denied:
                remote.retrieve("no-such-file")
            assert denied.value.status == 403 and not isinstance(denied.value, FileNotFoundAtProvider)
        elif flavor == "zai":
            # No retrieve, and a listing of four purposes of seven: absence there proves nothing.
            with pytest.raises(ProviderError, match="cannot tell") as unknown:
                remote.retrieve("no-such-file")
            assert not isinstance(unknown.value, FileNotFoundAtProvider)
        else:
            with pytest.raises(FileNotFoundAtProvider):
                remote.retrieve("no-such-file")
    finally:
        remote.close()
    pages = emu.count("GET", "/files")
    assert pages >= (2 if flavor == "moonshot" else 5)  # moonshot: one page per listing, twice for zai's lookup
