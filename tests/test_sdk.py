"""The official OpenAI SDK with ``filekeeper.http_client()``: its uploads and deletes recorded.

Each scenario (:mod:`tests.sdk_scenarios`) runs as a process with the SDK a user has: openai 3.x
on httpx2 (the test dependency), and openai 2.x on httpx, installed into a directory of its own
put first on PYTHONPATH (``FILEKEEPER_TEST_OPENAI2`` names one; otherwise it is installed once
per run, and the tests skip, saying why, where no package index can be reached). The SDK talks
to the emulator over a real socket.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SECRET, ledger_rows, write

OPENAI2 = "openai>=2.0,<3"
FLAVORS = ("moonshot", "zai", "xai", "openai", "deepseek")


@pytest.fixture(scope="session")
def openai2_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    named = os.environ.get("FILEKEEPER_TEST_OPENAI2")
    if named:
        return named
    target = tmp_path_factory.mktemp("openai2")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--target",
            str(target),
            OPENAI2,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        pytest.skip(f"could not install {OPENAI2} to test it: {done.stderr.strip().splitlines()[-1:]}")
    return str(target)


@pytest.fixture(params=["openai3", "openai2"])
def sdk(request: pytest.FixtureRequest) -> dict[str, str]:
    """The environment that gives a process one SDK: 3.x as installed, or 2.x put first."""
    if request.param == "openai3":
        return {}
    path = request.getfixturevalue("openai2_path")
    return {"PYTHONPATH": os.pathsep.join([path, *filter(None, [os.environ.get("PYTHONPATH")])])}


def scenario(name: str, flavor: str, base_url: str, work: Path, sdk: dict[str, str], **env_vars: str) -> dict[str, Any]:
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, **sdk, **env_vars}
    env["PYTHONPATH"] = os.pathsep.join([*filter(None, [env.get("PYTHONPATH")]), str(root)])
    done = subprocess.run(
        [sys.executable, "-m", "tests.sdk_scenarios", name, flavor, base_url, str(work)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=root,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def rows(home: Path) -> list[tuple[Any, ...]]:
    return ledger_rows(home, "SELECT filename, status, file_id FROM files ORDER BY id")


def uploads_seen(emu: Any) -> int:
    return emu.count("POST", "/files")


@pytest.mark.parametrize("flavor", FLAVORS)
def test_uploads_and_deletes_are_recorded(flavor: str, sdk, provider_env, home: Path, tmp_path: Path, run) -> None:
    emu = provider_env(flavor)
    out = scenario("upload_and_delete", flavor, emu.url, tmp_path, sdk)
    assert out["http"] == ("httpx" if sdk else "httpx2") and out["sdk"].startswith("2." if sdk else "3.")
    file_id = out["uploaded"]["id"]
    assert out["listed"] == [file_id] and out["deleted"] is True and emu.files == {}
    assert rows(home) == [("a.txt", "deleted", file_id)]
    events = ledger_rows(home, "SELECT action, actor, detail FROM events ORDER BY id")
    assert [e[0] for e in events if e[0] != "account_added"] == ["reserve", "upload", "delete"]
    reserve = next(json.loads(e[2]) if isinstance(e[2], str) else e[2] for e in events if e[0] == "reserve")
    assert reserve["source"] == "openai-sdk" and reserve["bytes"] == len(b"hello from the sdk\n")
    # An id neither the ledger nor the provider knows: the provider's own 404, nothing recorded.
    assert out["unknown"]["status"] == 404 and out["unknown"]["error"] == "NotFoundError"
    assert ledger_rows(home, "SELECT count(*) FROM files") == [(1,)]
    assert ledger_rows(home, "SELECT count(*) FROM delete_intents") == [(0,)]
    assert run("ls", "--status", "all", "--json").json()[0]["id"] == file_id


def test_an_openai_compatible_account_from_config_works_the_same(
    sdk, emulators, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    emu = emulators("compatible")
    monkeypatch.setenv("LOCAL_LLM_KEY", SECRET)
    write(
        home / "config.toml",
        f'[accounts.local]\nprovider = "compatible"\nbase_url = "{emu.url}"\napi_key_env = "LOCAL_LLM_KEY"\n',
    )
    out = scenario("upload_and_delete", "account:local", emu.url, tmp_path, sdk)
    file_id = out["uploaded"]["id"]
    assert out["deleted"] is True and emu.files == {} and out["unknown"]["status"] == 404
    assert rows(home) == [("a.txt", "deleted", file_id)]
    assert ledger_rows(home, "SELECT name, provider FROM accounts") == [("local", "compatible")]


@pytest.mark.parametrize("flavor", ["moonshot", "openai"])
def test_over_quota_is_refused_before_a_byte_is_sent(
    flavor: str, sdk, provider_env, home: Path, tmp_path: Path
) -> None:
    emu = provider_env(flavor)
    write(home / "config.toml", f"[providers.{flavor}]\nmax_files = 1\n")
    out = scenario("refused", flavor, emu.url, tmp_path, sdk)
    second = out["second"]
    assert second["error"] == "BadRequestError" and second["status"] == 400
    assert "max_files: 1 of 1 used" in second["message"] and "nothing was sent" in second["message"]
    assert second["should_retry"] == "false"
    assert uploads_seen(emu) == 1 and list(emu.files) == [out["first"]["id"]]  # never sent, never retried
    assert rows(home) == [("one.txt", "active", out["first"]["id"])]
    assert "refuse" in [a for (a,) in ledger_rows(home, "SELECT action FROM events")]


def test_a_lost_answer_is_found_in_the_listing(sdk, provider_env, home: Path, tmp_path: Path) -> None:
    emu = provider_env("moonshot")
    emu.inject("POST", "/files", drop_response=True, after_store=True)
    out = scenario("upload", "moonshot", emu.url, tmp_path, sdk)
    [stored] = emu.files
    assert out["uploaded"]["id"] == stored and uploads_seen(emu) == 1  # the SDK never needed to retry
    assert rows(home) == [("b.txt", "active", stored)]


def test_an_sdk_retry_after_a_lost_answer_neither_reserves_twice_nor_sends_a_copy(
    sdk, provider_env, home: Path, tmp_path: Path
) -> None:
    emu = provider_env("openai")
    write(home / "config.toml", "[http]\nattempts = 2\nbackoff_seconds = 0.01\n")
    # Stored, the answer lost, and the listing unreadable just then: the fate is unknown, the SDK retries.
    emu.inject("POST", "/files", drop_response=True, after_store=True)
    emu.inject("GET", "/files", status=500, times=2)
    out = scenario("upload", "openai", emu.url, tmp_path, sdk)
    [stored] = emu.files
    assert out.get("uploaded", {}).get("id") == stored, out
    assert uploads_seen(emu) == 1  # the retry settled the first attempt, and sent nothing
    assert rows(home) == [("b.txt", "active", stored)]
    retries = [
        r for r in emu.requests if r.method == "POST" and r.headers.get("x-stainless-retry-count") not in (None, "0")
    ]
    assert retries == []  # it never reached the provider: filekeeper answered it from the listing


def test_an_sdk_retry_after_a_5xx_makes_one_copy_and_one_active_row(
    sdk, provider_env, home: Path, tmp_path: Path
) -> None:
    emu = provider_env("xai")
    emu.inject("POST", "/files", status=503)  # refused before storing: the SDK retries
    out = scenario("upload", "xai", emu.url, tmp_path, sdk)
    [stored] = emu.files
    assert out["uploaded"]["id"] == stored and uploads_seen(emu) == 2
    statuses = [(name, status) for name, status, _ in rows(home)]
    assert statuses == [("b.txt", "failed"), ("b.txt", "active")]
    assert rows(home)[1][2] == stored


def test_a_stream_of_unknown_size_is_refused_before_sending(sdk, provider_env, home: Path, tmp_path: Path, run) -> None:
    emu = provider_env("moonshot")
    out = scenario("unsized", "moonshot", emu.url, tmp_path, sdk)
    for name in ("pipe", "reader"):
        assert out[name]["status"] == 400 and "size cannot be known before sending" in out[name]["message"], out
        assert out[name]["should_retry"] == "false"
    assert uploads_seen(emu) == 0 and run("ls", "--status", "all", "--json").json() == []


def test_the_client_takes_the_usual_keyword_arguments(provider_env) -> None:
    import filekeeper
    from filekeeper.sdk import library

    provider_env("moonshot")
    client = filekeeper.http_client(provider="moonshot", timeout=7.5, headers={"x-team": "ml"}, follow_redirects=True)
    try:
        assert isinstance(client, library().Client) and library().__name__ == "httpx2"
        assert client.timeout.read == 7.5 and client.headers["x-team"] == "ml" and client.follow_redirects
    finally:
        client.close()


def test_expires_after_becomes_the_rows_expiry(sdk, provider_env, home: Path, tmp_path: Path, run) -> None:
    from datetime import UTC, datetime

    emu = provider_env("openai")
    out = scenario("expires", "openai", emu.url, tmp_path, sdk)
    [record] = run("ls", "--json").json()
    assert record["id"] == out["uploaded"]["id"] and record["purpose"] == "batch"
    left = datetime.fromisoformat(record["expires_at"].replace("Z", "+00:00")) - datetime.now(UTC)
    assert 7000 < left.total_seconds() <= 7200
    assert emu.files[record["id"]].expires_at is not None  # the provider was asked too


def test_the_async_client_records_uploads_refuses_and_deletes(sdk, provider_env, home: Path, tmp_path: Path) -> None:
    emu = provider_env("moonshot")
    write(home / "config.toml", "[providers.moonshot]\nmax_files = 2\n")
    out = scenario("async_upload_and_delete", "moonshot", emu.url, tmp_path, sdk)
    made = {f["id"] for f in out["uploaded"]}
    assert len(made) == 2 and out["third"]["status"] == 400 and "max_files: 2 of 2 used" in out["third"]["message"]
    assert out["deleted"] is True and uploads_seen(emu) == 2
    assert sorted(status for _, status, _ in rows(home)) == ["active", "deleted"]
    assert {file_id for _, _, file_id in rows(home)} == made


def test_a_client_for_a_provider_the_sdk_cannot_upload_to_is_refused_at_once(provider_env) -> None:
    import filekeeper
    from filekeeper.errors import UsageError

    provider_env("gemini")
    with pytest.raises(UsageError, match="not OpenAI-shaped"):
        filekeeper.http_client(provider="gemini")


def test_an_sdk_pointed_elsewhere_than_the_account_is_refused_and_nothing_sent(
    provider_env, emulators, home: Path
) -> None:
    import openai

    import filekeeper

    provider_env("moonshot")
    emu = emulators("moonshot")  # another server: not the account the client records
    client = openai.OpenAI(base_url=emu.url, api_key=SECRET, http_client=filekeeper.http_client(provider="moonshot"))
    try:
        with pytest.raises(openai.BadRequestError, match="records account 'moonshot'") as refused:
            client.files.create(file=("a.txt", b"a"), purpose="file-extract")
        assert refused.value.response.headers["x-should-retry"] == "false"
        assert f":{emu.url.split(':')[2].split('/')[0]}" in str(refused.value)  # the port it really sent to
        assert "$MOONSHOT_BASE_URL" in str(refused.value)
        # What is not an upload or a delete passes through, wherever it goes.
        assert client.files.list().data == []
    finally:
        client.close()
    assert uploads_seen(emu) == 0 and emu.count("GET", "/files") == 1


def test_a_base_url_beside_the_accounts_is_refused_not_sent_untracked(
    sdk, provider_env, home: Path, tmp_path: Path
) -> None:
    emu = provider_env("deepseek")  # the account at the root; the provider also answers under /v1
    out = scenario("upload", "deepseek", emu.url + "/v1", tmp_path, sdk)
    assert out["status"] == 400 and "records account 'deepseek'" in out["message"], out
    assert out["should_retry"] == "false" and uploads_seen(emu) == 0 and emu.files == {}


def test_another_accounts_key_in_the_sdk_is_refused_before_sending(
    sdk, provider_env, home: Path, tmp_path: Path
) -> None:
    emu = provider_env("moonshot")
    emu.add_key("sk-teammate", "teammate")
    out = scenario("upload", "moonshot", emu.url, tmp_path, sdk, SDK_KEY="sk-teammate")
    assert out["status"] == 400 and "another API key than account 'moonshot'" in out["message"], out
    assert "MOONSHOT_API_KEY" in out["message"] and "sk-teammate" not in out["message"]
    assert uploads_seen(emu) == 0 and emu.files == {}


@pytest.mark.parametrize("fault", ["lost", "500"])
def test_an_sdk_retry_of_a_delete_that_went_through_is_a_success_recorded_once(
    fault: str, sdk, provider_env, home: Path, tmp_path: Path, run
) -> None:
    emu = provider_env("openai")
    # Deleted, and the answer lost (or a 500): the SDK sends the delete again and meets a 404.
    if fault == "lost":
        emu.inject("DELETE", "/files/", drop_response=True, after_store=True)
    else:
        emu.inject("DELETE", "/files/", status=500, after_store=True)
    out = scenario("delete", "openai", emu.url, tmp_path, sdk)
    assert out["deleted"] is True, out
    assert emu.files == {} and rows(home) == [("d.txt", "deleted", out["uploaded"]["id"])]
    assert ledger_rows(home, "SELECT count(*) FROM delete_intents") == [(0,)]
    deletes = ledger_rows(home, "SELECT count(*) FROM events WHERE action = 'delete'")
    assert deletes == [(1,)]
    assert run("reconcile", "-p", "openai", "--min-age", "0", "--json").json()["intents_settled"] == []


def test_an_expiry_of_zero_or_less_is_refused_before_sending(sdk, provider_env, home: Path, tmp_path: Path) -> None:
    emu = provider_env("moonshot")
    out = scenario("bad_expiry", "moonshot", emu.url, tmp_path, sdk)
    for seconds in ("0", "-5"):
        assert out[seconds]["status"] == 400 and "above zero" in out[seconds]["message"], out
    assert uploads_seen(emu) == 0
