"""Every input and every failure a user can cause outside reconcile: handled, recorded, told truthfully.

After each command here the ledger equals the provider, the quota counts what really exists, and
the output (text and --json) says what happened: never "internal error", never a traceback.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from filekeeper import FileChanged, Keeper
from tests.conftest import (
    KEY_VARS,
    SECRET,
    URL_VARS,
    actions,
    age_everything,
    baseline,
    ledger_rows,
    ledger_sql,
    upload,
    write,
)

HOUR_AGO = int(time.time()) - 7200
ESC = "\x1b"


def statuses(home: Path) -> dict[str, str]:
    return dict(ledger_rows(home, "SELECT file_id, status FROM files WHERE file_id IS NOT NULL"))


def agree(home: Path, emu) -> None:
    """Ledger == provider: what the ledger expects there is exactly what it holds."""
    query = "SELECT file_id FROM files WHERE status IN ('active', 'unclaimed', 'generated')"
    assert {i for (i,) in ledger_rows(home, query)} == emu.ids()


def no_traceback(result: Any) -> None:
    text = result.stdout + result.stderr
    assert "Traceback" not in text and "internal error" not in text, text


# --- upload: what is reused must be alive ------------------------------------------------------------


def test_a_reused_file_must_live_as_long_as_asked(provider_env, run, home: Path, tmp_path: Path) -> None:
    provider_env("openai")
    doc = write(tmp_path / "data.jsonl", "{}\n" * 10)
    [first] = run("upload", str(doc), "-p", "openai", "--ttl", "2h", "--json").json()
    # Three hours later: the first copy has expired (the provider dropped it, or is about to).
    ledger_sql(
        home, "UPDATE files SET expires_at = ? WHERE file_id = ?", datetime.now(UTC) - timedelta(hours=1), first["id"]
    )
    [second] = run("upload", str(doc), "-p", "openai", "--ttl", "30d", "--json").json()
    assert second["outcome"] == "uploaded" and second["id"] != first["id"]
    [again] = run("upload", str(doc), "-p", "openai", "--ttl", "7d", "--json").json()
    assert (again["outcome"], again["id"]) == ("reused", second["id"])  # lives 30 days: long enough
    [longer] = run("upload", str(doc), "-p", "openai", "--ttl", "31d", "--json").json()
    assert longer["outcome"] == "uploaded" and longer["id"] not in (first["id"], second["id"])  # 30d is too short


def test_a_twin_deleted_behind_our_back_is_not_handed_out(provider_env, run, home: Path, tmp_path: Path) -> None:
    emu = provider_env("moonshot")
    doc = write(tmp_path / "a.pdf", "the same content")
    [first] = run("upload", str(doc), "-p", "moonshot", "--json").json()
    with emu.lock:
        del emu.files[first["id"]]  # someone used the console
    [second] = run("upload", str(doc), "-p", "moonshot", "--json").json()
    assert second["outcome"] == "uploaded" and second["id"] != first["id"] and second["id"] in emu.ids()
    assert statuses(home) == {first["id"]: "missing", second["id"]: "active"}
    assert "found_missing" in actions(home)
    agree(home, emu)


def test_the_same_file_again_with_a_wrong_key_says_the_key_is_wrong(
    provider_env, run, home: Path, tmp_path: Path, monkeypatch
) -> None:
    """The twin's check at the provider was refused (401) and taken for "cannot tell", so the file
    was to be uploaded anew: in a full account that was a refusal "by quota" (exit 3), and with
    room a new reservation sent only to be refused. The key is wrong: said so, nothing changed."""
    emu = provider_env("openai")
    write(home / "config.toml", "[providers.openai]\nmax_files = 1\n")
    doc = write(tmp_path / "a.txt", "the same content")
    [first] = run("upload", str(doc), "-p", "openai", "--json").json()
    before = ledger_rows(home, "SELECT id, status, file_id FROM files")
    events = actions(home)
    monkeypatch.setenv(KEY_VARS["openai"], "sk-someone-elses")
    again = run("upload", str(doc), "-p", "openai")
    assert again.exit_code == 1, again.stderr
    assert "HTTP 401" in again.stderr and "refused by quota" not in again.stderr
    assert "sk-someone-elses" not in again.stderr
    assert ledger_rows(home, "SELECT id, status, file_id FROM files") == before
    # No reservation, no refusal, no file found gone; only the key in use noted, as on any command.
    assert [a for a in actions(home) if a != "account_changed"] == events
    assert emu.ids() == {first["id"]} and emu.count("POST", "/files") == 1


def test_rerunning_after_a_crash_reuses_the_file_that_landed(provider_env, run, home: Path, tmp_path: Path) -> None:
    emu = provider_env("openai")
    write(home / "config.toml", "[http]\nattempts = 2\nbackoff_seconds = 0.01\n")
    doc = write(tmp_path / "big.jsonl", "x" * 5000)
    # The upload lands, its answer is lost, and the listing that would find it fails too: as if
    # the process had died right after sending.
    emu.inject("POST", "/files", drop_response=True, after_store=True)
    emu.inject("GET", "/files", status=500, times=2)
    crashed = run("upload", str(doc), "-p", "openai", "--json")
    assert crashed.exit_code == 1 and crashed.json()[0]["status"] == "pending"
    [landed] = emu.ids()
    rerun = run("upload", str(doc), "-p", "openai", "--json")
    assert rerun.exit_code == 0, rerun.stderr
    [result] = rerun.json()
    assert (result["outcome"], result["id"]) == ("reused", landed)
    assert emu.count("POST", "/files") == 1  # no second copy was sent
    assert statuses(home) == {landed: "active"}
    agree(home, emu)


@pytest.mark.parametrize("change", ["grow", "shrink"])
def test_a_file_that_changes_while_it_is_sent(change: str, provider_env, home: Path, tmp_path: Path) -> None:
    emu = provider_env("openai")
    moving = write(tmp_path / "moving.log", "x" * (3 << 20))
    steady = write(tmp_path / "steady.txt", "steady")
    touched = []

    def on_progress(_delta: int) -> None:
        if not touched:  # the first chunk is on its way: the file changes under the upload
            touched.append(True)
            if change == "grow":
                with moving.open("ab") as f:
                    f.write(b"more lines\n" * 1000)
            else:
                os.truncate(moving, 1 << 20)

    with Keeper() as keeper:
        first, second = keeper.upload([moving, steady], provider="openai", concurrency=1, on_progress=on_progress)
    assert isinstance(first.error, FileChanged) and ("grew" if change == "grow" else "shrank") in str(first.error)
    assert first.row is not None and first.row.status == "failed"
    assert second.ok and second.record is not None and second.record.status == "active"
    assert emu.ids() == {second.record.id}  # the half-sent file was not stored
    assert run_json_statuses(home) == ["active", "failed"]
    agree(home, emu)


def sigint_as_usual() -> None:
    """In the child, before Python starts: Ctrl-C's default, even when the tests themselves run in
    the background, whose jobs inherit SIGINT ignored (and Python then installs no handler)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_json_statuses(home: Path) -> list[str]:
    return sorted(s for (s,) in ledger_rows(home, "SELECT status FROM files"))


def test_a_provider_that_answers_with_a_file_it_had_is_a_reuse(provider_env, run, home: Path, tmp_path: Path) -> None:
    emu = provider_env("openai", dedupe_content=True)
    doc = write(tmp_path / "a.txt", "content the server has seen")
    [first] = run("upload", str(doc), "-p", "openai", "--json").json()
    forced = run("upload", str(doc), "-p", "openai", "--force", "--json")
    assert forced.exit_code == 0, forced.stderr
    no_traceback(forced)
    [again] = forced.json()
    assert (again["outcome"], again["id"]) == ("reused", first["id"])
    assert run_json_statuses(home) == ["active", "failed"]  # the reservation holds no quota
    assert run("usage", "-p", "openai", "--json").json()[0]["files"] == 1
    agree(home, emu)


def test_ctrl_c_cancels_an_upload_in_flight(home: Path, emulators, tmp_path: Path) -> None:
    emu = emulators("openai", body_delay=0.05)  # 256 KiB every 50 ms: a 16 MiB body takes seconds
    small = write(tmp_path / "small.txt", "small")
    big = write(tmp_path / "big.bin", os.urandom(16 << 20))
    env = {**os.environ, "FILEKEEPER_HOME": str(home), KEY_VARS["openai"]: SECRET, URL_VARS["openai"]: emu.url}
    proc = subprocess.Popen(
        [sys.executable, "-m", "filekeeper", "upload", str(small), str(big), "-p", "openai", "--concurrency", "2"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=sigint_as_usual,
    )
    deadline = time.monotonic() + 60
    while not (len(emu.ids()) == 1 and len(ledger_rows_safe(home)) == 2):  # small landed, big on its way
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.01)
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert time.monotonic() - started < 5  # it did not wait for the rest of the body
    assert proc.returncode == 130, err
    [landed] = emu.ids()
    assert landed in out and "small.txt" in out  # what was uploaded is printed
    assert "cancelled" in err and "big.bin" in err
    assert sorted(ledger_rows(home, "SELECT filename, status FROM files")) == [
        ("big.bin", "failed"),
        ("small.txt", "active"),
    ]
    agree(home, emu)


def ledger_rows_safe(home: Path) -> list[tuple[Any, ...]]:
    """The files rows, or none before the ledger exists (without creating an empty SQLite file)."""
    if not os.environ.get("FILEKEEPER_DATABASE_URL") and not (home / "ledger.db").exists():
        return []
    try:
        return ledger_rows(home, "SELECT status FROM files")
    except Exception:  # created, but its tables not yet
        return []


# --- upload: evictions are deletes, and are said ------------------------------------------------------


def _full_of_expired(run, home: Path, tmp_path: Path) -> list[dict[str, Any]]:
    write(home / "config.toml", "[providers.openai]\nmax_files = 2\n[http]\nattempts = 2\nbackoff_seconds = 0.01\n")
    old = upload(run, tmp_path, "openai", "old1.txt", "old2.txt")
    ledger_sql(home, "UPDATE files SET expires_at = ?", datetime.now(UTC) - timedelta(days=1))
    return old


def test_evictions_are_reported_when_the_upload_then_fails(provider_env, run, home: Path, tmp_path: Path) -> None:
    emu = provider_env("openai")
    old = _full_of_expired(run, home, tmp_path)
    emu.inject("POST", "/files", status=400, body=emu.error_body(400, "unsupported file"))
    result = run("upload", str(write(tmp_path / "new.txt", "new")), "-p", "openai", "--evict", "expired", "--json")
    assert result.exit_code == 1
    [doc] = result.json()
    assert doc["outcome"] == "failed" and "unsupported file" in doc["error"]
    assert [e["id"] for e in doc["evicted"]] == [old[0]["id"]]  # the delete happened: it is said
    assert f"evicted {old[0]['id']}" in result.stderr
    agree(home, emu)


@pytest.mark.parametrize("fault", ["refused", "answer lost", "5xx but done"])
def test_the_ledger_follows_each_eviction_failure(fault: str, provider_env, run, home: Path, tmp_path: Path) -> None:
    emu = provider_env("openai")
    old = _full_of_expired(run, home, tmp_path)
    victim = old[0]["id"]
    if fault == "refused":
        emu.inject("DELETE", f"/files/{victim}", status=403, body=emu.error_body(403, "not yours"))
    elif fault == "answer lost":
        emu.inject("DELETE", f"/files/{victim}", drop_response=True, after_store=True)
    else:
        emu.inject("DELETE", f"/files/{victim}", status=500, after_store=True, times=2)
    result = run("upload", str(write(tmp_path / "new.txt", "new")), "-p", "openai", "--evict", "expired", "--json")
    no_traceback(result)
    [doc] = result.json()
    if fault == "refused":
        assert result.exit_code == 1 and doc["outcome"] == "failed" and doc["evicted"] == []
        assert statuses(home)[victim] == "active" and victim in emu.ids()
    else:
        assert result.exit_code == 0, result.stderr
        assert doc["outcome"] == "uploaded" and [e["id"] for e in doc["evicted"]] == [victim]
        assert victim not in emu.ids()
    agree(home, emu)


# --- delete -----------------------------------------------------------------------------------------


def test_deleting_an_id_nobody_knows_is_an_error_and_leaves_no_trace(provider_env, run, home: Path) -> None:
    provider_env("openai")
    run("usage")
    before = actions(home)
    result = run("delete", "file-doesnotexist", "-p", "openai")
    assert result.exit_code == 1 and "no such file file-doesnotexist" in result.stderr
    assert "already gone" not in result.stdout + result.stderr
    assert actions(home) == before
    for blank in ("", "  ", " x", "a\nb"):
        bad = run("delete", blank, "-p", "openai")
        assert bad.exit_code == 2 and "is not a file id" in bad.stderr
    assert actions(home) == before


def test_a_route_404_is_not_already_gone(provider_env, run, home: Path, tmp_path: Path, monkeypatch) -> None:
    emu = provider_env("openai")
    [a] = upload(run, tmp_path, "openai", "a.txt")
    monkeypatch.setenv("OPENAI_BASE_URL", emu.url + "/wrong")  # a wrong base URL: every route is unknown
    result = run("delete", a["id"], "-p", "openai")
    assert result.exit_code == 1 and "is the base URL right?" in result.stderr
    assert statuses(home) == {a["id"]: "active"} and a["id"] in emu.ids()


def test_delete_finds_the_account_in_the_ledger(provider_env, run, home: Path, tmp_path: Path) -> None:
    emu = provider_env("openai")
    provider_env("moonshot")
    a, b = upload(run, tmp_path, "openai", "a.txt", "b.txt")
    wrong = run("delete", a["id"], "-p", "moonshot")
    assert wrong.exit_code == 2 and "recorded under account 'openai'" in wrong.stderr
    assert a["id"] in emu.ids() and statuses(home)[a["id"]] == "active"
    both = run("delete", a["id"], "file-unknown", "--json")  # one unknown id: nothing is deleted
    assert both.exit_code == 2 and "not in the ledger" in both.stderr and a["id"] in emu.ids()
    done = run("delete", a["id"], b["id"], "--json")
    assert done.exit_code == 0, done.stderr
    assert [(d["id"], d["status"], d["account"]) for d in done.json()] == [
        (a["id"], "deleted", "openai"),
        (b["id"], "deleted", "openai"),
    ]
    again = run("delete", a["id"], "--json")  # the same input twice
    assert again.exit_code == 0 and again.json()[0]["already_gone"] is True
    assert actions(home).count("delete") == 2
    agree(home, emu)


# --- settings and the ledger file ----------------------------------------------------------------------


def test_a_named_config_that_does_not_exist_is_an_error(run, home: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FILEKEEPER_CONFIG", str(tmp_path / "confg.toml"))  # a typo in a cron line
    result = run("usage")
    assert result.exit_code == 2 and "FILEKEEPER_CONFIG names" in result.stderr and "confg.toml" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["upload", "{doc}", "-p", "openai", "--ttl", "99999999999d"], "longer than anything filekeeper keeps"),
        (["check", "{doc}", "-p", "openai", "--ttl", "99999999d"], "longer than anything filekeeper keeps"),
    ],
)
def test_numbers_out_of_range_are_usage_errors(args, message, provider_env, run, tmp_path: Path) -> None:
    provider_env("openai")
    doc = str(write(tmp_path / "a.txt", "a"))
    result = run(*[doc if a == "{doc}" else a for a in args])
    assert result.exit_code == 2 and message in result.stderr
    no_traceback(result)


def test_an_api_key_no_header_can_carry(provider_env, run, tmp_path: Path, monkeypatch) -> None:
    provider_env("openai")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-clé-ünïcode-secret")
    result = run("upload", str(write(tmp_path / "a.txt", "a")), "-p", "openai")
    assert result.exit_code == 2 and "OPENAI_API_KEY" in result.stderr
    assert "ünïcode" not in result.stderr
    no_traceback(result)


def test_credentials_in_a_base_url_are_refused(provider_env, run, home: Path, tmp_path: Path, monkeypatch) -> None:
    emu = provider_env("openai")
    monkeypatch.setenv("OPENAI_BASE_URL", emu.url.replace("http://", "http://me:hunter2pass@"))
    result = run("upload", str(write(tmp_path / "a.txt", "a")), "-p", "openai")
    assert result.exit_code == 2 and "must not carry credentials" in result.stderr
    assert "hunter2pass" not in result.stderr and emu.count("*") == 0


@pytest.mark.sqlite_only
def test_the_ledger_is_its_owners_only(provider_env, run, home: Path, tmp_path: Path) -> None:
    provider_env("openai")
    upload(run, tmp_path, "openai", "a.txt")
    assert home.stat().st_mode & 0o777 == 0o700
    for name in ("ledger.db", "ledger.db-wal", "ledger.db-shm"):
        if (home / name).exists():
            assert (home / name).stat().st_mode & 0o777 == 0o600, name


def test_a_dropped_connection_anywhere_is_one_line(provider_env, run, home: Path, tmp_path: Path, backend) -> None:
    if backend != "postgresql":
        pytest.skip("about PostgreSQL connections")
    from sqlalchemy import create_engine, text

    provider_env("openai")
    upload(run, tmp_path, "openai", *[f"f{i}.txt" for i in range(3)])

    admin = create_engine(os.environ["FILEKEEPER_DATABASE_URL"])

    def drop_this(conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if " files" in statement:  # a network drop, or a server restart, right before this read
            pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
            with admin.connect() as a:
                a.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})

    from sqlalchemy import event

    from filekeeper import ledger as ledger_module

    real = ledger_module.open_ledger

    def opened_then_dropped(settings: Any, **kw: Any) -> Any:
        led = real(settings, **kw)
        event.listen(led.engine, "before_cursor_execute", drop_this)
        return led

    ledger_module.open_ledger = opened_then_dropped  # Keeper imports it from there, when it opens the ledger
    try:
        for args in (("ls",), ("usage",), ("report", "--format", "csv")):
            result = run(*args)
            assert result.exit_code == 1, (args, result.stdout, result.stderr)
            assert result.stderr.startswith("filekeeper: error:") and "ledger error" in result.stderr
            assert result.stderr.count("\n") == 1 and "SELECT" not in result.stderr, result.stderr
    finally:
        ledger_module.open_ledger = real
        admin.dispose()


# --- what reaches a terminal or a spreadsheet ---------------------------------------------------------

HOSTILE = f"title{ESC}]0;pwned\x07{ESC}[2J{ESC}[31mred\u202egnp.exe"


def test_control_characters_never_reach_a_terminal(provider_env, run, home: Path, tmp_path: Path) -> None:
    emu = provider_env("openai")
    [record] = run("upload", str(write(tmp_path / f"{HOSTILE}.txt", "x")), "-p", "openai", "--json").json()
    assert record["filename"] == f"{HOSTILE}.txt"  # JSON keeps the exact name, escaped
    json_out = run("ls", "--json").stdout
    assert ESC not in json_out and "\u202e" not in json_out and json.loads(json_out)[0]["filename"] == f"{HOSTILE}.txt"
    baseline(run, "-p", "openai")
    emu.add_file(f"{HOSTILE}-orphan.txt", 3, created_at=HOUR_AGO)
    emu.inject("DELETE", "/files/", status=400, body=emu.error_body(400, f"no {ESC}[2J way"), times=1)
    outputs = [
        run("ls"),
        run("upload", str(write(tmp_path / "d" / f"{HOSTILE}.txt", "x")), "-p", "openai"),
        run("reconcile", "-p", "openai", "--apply"),
        run("report", "--format", "table"),
        run("report", "--format", "md"),
        run("report", "--format", "html"),
    ]
    for result in outputs:
        for text in (result.stdout, result.stderr):
            assert ESC not in text and "\x07" not in text and "\u202e" not in text, text
    assert "\\x1b]0;pwned" in outputs[0].stdout  # shown, not obeyed


def test_csv_cells_never_become_formulas(provider_env, run, home: Path, tmp_path: Path) -> None:
    provider_env("openai")
    names = ['=HYPERLINK("evil.example","click").txt', "+cmd.txt", "-2+3.txt", "@SUM(A1).txt", "'quoted.txt"]
    for i, name in enumerate(names):
        assert run("upload", str(write(tmp_path / f"d{i}" / name, name)), "-p", "openai").exit_code == 0
    rows = list(csv.DictReader(io.StringIO(run("report", "--format", "csv").stdout, newline="")))
    cells = {r["filename"] for r in rows if r["action"] == "upload"}
    assert cells == {"'" + n for n in names}  # every one shown as text, and none lost
    assert all(not c.startswith(("=", "+", "-", "@")) for r in rows for c in r.values())


@pytest.mark.parametrize("storage", ["raw", "nfd"])
def test_names_the_provider_hands_back_encoded_are_the_same_names(
    storage: str, provider_env, run, home: Path, tmp_path: Path
) -> None:
    emu = provider_env("openai", filenames=storage)
    names = ['say "hi".txt', "new\nline.txt", "tab\there.txt", "back\\slash.txt", "café ünïcødé.md"]
    for i, name in enumerate(names):
        assert run("upload", str(write(tmp_path / f"d{i}" / name, name)), "-p", "openai").exit_code == 0
    age_everything(home)
    plan = run("reconcile", "-p", "openai", "--apply", "--json").json()
    assert plan["drift"] == [] and plan["orphans"] == [] and plan["missing"] == []
    # A lost answer is still recovered from the listing, whatever spelling it uses.
    emu.inject("POST", "/files", drop_response=True, after_store=True)
    lost = run("upload", str(write(tmp_path / "e" / 'lost "one".txt', "lost")), "-p", "openai", "--json")
    assert lost.exit_code == 0, lost.stderr
    assert lost.json()[0]["outcome"] == "uploaded" and emu.count("POST", "/files") == len(names) + 1
    agree(home, emu)


# --- a property: any filename goes through every command cleanly ---------------------------------------

_POOL = (
    [chr(c) for c in range(1, 32)]  # every C0 control but NUL, which no filesystem takes
    + ["\x7f", "\x9b", "\u202e", "\u2066", "\u200b"]  # DEL, a C1 CSI, bidi overrides, a zero-width space
    + list("=+-@'\"\\%;,|<>&`$*?[]{}() \t")  # formulas, quotes, escapes, markup, shell
    + ["é", "ü", "ø", "文件", "😀", "e\u0301", "ﬁ", "Ω"]  # composed and decomposed, wide, astral
    + list("abcxyz0123456789._")
)


def _random_names(seed: int, n: int) -> list[str]:
    import random

    rng = random.Random(seed)
    names: set[str] = set()
    while len(names) < n:
        name = "".join(rng.choice(_POOL) for _ in range(rng.randint(1, 24))) + rng.choice([".txt", ".md", ""])
        if name not in (".", "..") and len(name.encode()) < 200:
            names.add(name)
    return sorted(names)


@pytest.mark.parametrize("storage", ["decoded", "raw", "nfd"])
def test_any_filename_goes_through_every_command_cleanly(
    storage: str, provider_env, run, home: Path, tmp_path: Path
) -> None:
    emu = provider_env("openai", filenames=storage)
    names = _random_names(seed={"decoded": 1, "raw": 2, "nfd": 3}[storage], n=24)
    paths = [write(tmp_path / f"d{i}" / name, f"content {i}") for i, name in enumerate(names)]
    uploaded = run("upload", *map(str, paths), "-p", "openai", "--json")
    assert uploaded.exit_code == 0, uploaded.stderr
    assert [r["filename"] for r in uploaded.json()] == names  # JSON keeps every name exactly
    age_everything(home)
    texts = [
        uploaded,
        run("ls"),
        run("ls", "--status", "all"),
        run("usage"),
        run("reconcile", "-p", "openai"),
        run("reconcile", "-p", "openai", "--apply"),
        *(run("report", "--format", f) for f in ("table", "md", "html")),
    ]
    for result in texts:
        assert result.exit_code == 0, result.stdout + result.stderr
        for text in (result.stdout, result.stderr):
            assert not any(c in text for c in "\x1b\x07\x9b\u202e\u2066\r"), repr(text[:300])
            assert "\x00" not in text
    listed = json.loads(run("ls", "--json").stdout)
    assert sorted(r["filename"] for r in listed) == names
    plan = run("reconcile", "-p", "openai", "--json").json()
    assert (plan["drift"], plan["orphans"], plan["missing"], plan["unconfirmed"]) == ([], [], [], [])
    report = run("report", "--format", "json").json()
    assert {e["filename"] for e in report["events"] if e["action"] == "upload"} == set(names)
    rows = list(csv.DictReader(io.StringIO(run("report", "--format", "csv").stdout, newline="")))
    for row in rows:
        assert all(not cell.startswith(("=", "+", "-", "@", "\t", "\r")) for cell in row.values())
    from filekeeper.report_formats import restore

    assert {restore(r["filename"]) for r in rows if r["action"] == "upload"} == set(names)
    agree(home, emu)


# --- found by an outside attempt on the above -------------------------------------------------------


def test_a_file_reused_by_a_command_is_not_evicted_by_the_same_command(
    provider_env, run, home: Path, tmp_path: Path
) -> None:
    emu = provider_env("openai")
    write(home / "config.toml", "[providers.openai]\nmax_files = 2\n")
    old0, old1 = (write(tmp_path / f"old{i}.txt", f"old {i}") for i in range(2))
    assert run("upload", str(old0), str(old1), "-p", "openai", "--concurrency", "1").exit_code == 0
    new = write(tmp_path / "new.txt", "new")
    result = run("upload", str(old0), str(new), "-p", "openai", "--evict", "oldest", "--concurrency", "1", "--json")
    assert result.exit_code == 0, result.stderr
    reused, uploaded = result.json()
    assert reused["outcome"] == "reused" and reused["id"] in emu.ids()  # the id handed out is there
    assert uploaded["outcome"] == "uploaded" and [e["filename"] for e in uploaded["evicted"]] == ["old1.txt"]
    agree(home, emu)


def test_a_lost_answer_never_adopts_an_older_file_of_the_same_name(
    provider_env, run, home: Path, tmp_path: Path
) -> None:
    emu = provider_env("openai")
    foreign = emu.add_file("data.csv", 5000, created_at=int(time.time()) - 120)  # someone's, two minutes old
    emu.inject("POST", "/files", drop_response=True)  # ours never stored, its answer lost
    doc = write(tmp_path / "data.csv", "y" * 5000)
    [result] = run("upload", str(doc), "-p", "openai", "--json").json()
    assert result["outcome"] == "uploaded" and result["id"] != foreign.id
    with emu.lock:
        assert emu.files[result["id"]].sha256 == result["sha256"]  # the file recorded is ours
    assert foreign.id not in statuses(home)


def test_a_wrong_adoption_is_undone_when_the_real_upload_answers(home: Path, provider_env, tmp_path: Path) -> None:
    provider_env("openai")
    from filekeeper.quota import Request
    from filekeeper.records import PendingRow
    from filekeeper.schema import utcnow

    with Keeper() as keeper:
        account_id = keeper.ledger.ensure_account(keeper.account(provider="openai"))
        now = utcnow()
        with keeper.ledger.write() as w:
            a, b = (
                w.reserve(
                    account_id,
                    Request("data.csv", 5, "assistants"),
                    PendingRow("openai", "openai", sha256=None, created_at=now, expires_at=None),
                )
                for _ in range(2)
            )
        with keeper.ledger.write() as w:  # a's answer was lost, and its recovery took b's file for its own
            w.activate(a.ledger_id, file_id="file-X", size=5, sha256="a" * 64)
        with keeper.ledger.write() as w:  # then b's answer arrives: the file is b's
            record = w.activate(b.ledger_id, file_id="file-X", size=5, sha256="b" * 64)
    assert record.ledger_id == b.ledger_id and not record.reused and record.sha256 == "b" * 64
    rows = dict(ledger_rows(home, "SELECT id, status FROM files"))
    assert rows == {a.ledger_id: "pending", b.ledger_id: "active"}
    assert "settle_undone" in actions(home)


def test_a_file_that_grows_before_its_turn_is_not_sent(provider_env, home: Path, tmp_path: Path) -> None:
    emu = provider_env("openai")
    write(home / "config.toml", "[providers.openai]\nmax_file_bytes = 1000\n")
    first = write(tmp_path / "first.txt", "x" * 500)
    grows = write(tmp_path / "grow.log", "y" * 500)
    grown = []

    def on_progress(_delta: int) -> None:
        if not grown:  # while the first file is sent, the second grows past the limit
            grown.append(True)
            with grows.open("ab") as f:
                f.write(b"z" * 50_000)

    with Keeper() as keeper:
        one, two = keeper.upload([first, grows], provider="openai", concurrency=1, on_progress=on_progress)
    assert one.ok and isinstance(two.error, FileChanged) and "changed since it was checked" in str(two.error)
    assert len(emu.ids()) == 1 and max(f.bytes for f in emu.files.values()) == 500


def test_an_eviction_cut_off_by_a_crash_is_restored_by_reconcile(provider_env, run, home: Path, tmp_path: Path) -> None:
    emu = provider_env("openai")
    write(home / "config.toml", "[providers.openai]\nmax_files = 2\n")
    upload(run, tmp_path, "openai", "old0.txt", "old1.txt")
    baseline(run, "-p", "openai")
    from filekeeper.upload import FilePayload, UploadJob, reserve

    with Keeper() as keeper:
        acct = keeper.account(provider="openai")
        account_id = keeper.ledger.ensure_account(acct)
        path = write(tmp_path / "new.txt", "new")
        job = UploadJob(acct, account_id, FilePayload(path), "assistants", evict="oldest", path=path)
        reservation = reserve(keeper.ledger, job, None)  # marked for eviction ... and the process dies here
    [victim] = reservation.evicted
    assert statuses(home)[victim.file_id] == "deleted" and victim.file_id in emu.ids()
    ledger_sql(home, "UPDATE delete_intents SET at = ?", datetime.now(UTC) - timedelta(hours=1))
    age_everything(home)
    result = run("reconcile", "-p", "openai", "--apply", "--json")
    assert result.exit_code == 0, result.stderr
    body = result.json()
    assert body["restored"] == [victim.file_id] and body["deleted"] == []
    assert statuses(home)[victim.file_id] == "active" and victim.file_id in emu.ids()
    assert ledger_rows(home, "SELECT count(*) FROM delete_intents") == [(0,)]
    agree(home, emu)


@pytest.mark.parametrize("answer", ["<html>ok</html>", {"object": "file"}])
def test_a_success_whose_answer_cannot_be_read_is_looked_for(
    answer: Any, provider_env, run, home: Path, tmp_path: Path
) -> None:
    emu = provider_env("openai")
    emu.inject("POST", "/files", status=200, body=answer, after_store=True)
    [result] = run("upload", str(write(tmp_path / "a.txt", "a")), "-p", "openai", "--json").json()
    assert result["outcome"] == "uploaded" and result["id"] in emu.ids() and len(emu.ids()) == 1
    agree(home, emu)


@pytest.mark.parametrize("status", [408, 409])
def test_an_ambiguous_refusal_of_an_upload_is_looked_into_not_resent(
    status: int, provider_env, run, home: Path, tmp_path: Path
) -> None:
    emu = provider_env("openai")
    emu.inject("POST", "/files", status=status, after_store=True)
    [result] = run("upload", str(write(tmp_path / "a.txt", "a")), "-p", "openai", "--json").json()
    assert result["outcome"] == "uploaded" and len(emu.ids()) == 1
    agree(home, emu)


def test_a_report_is_written_into_what_is_not_a_plain_file(provider_env, run, home: Path, tmp_path: Path) -> None:
    import threading

    provider_env("openai")
    upload(run, tmp_path, "openai", "a.txt")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    assert run("report", "--format", "csv", "-o", str(fifo)).exit_code == 0
    reader.join(timeout=30)
    assert fifo.is_fifo() and got and got[0].startswith(b"time,actor")  # written into, not replaced
    target = write(tmp_path / "real.csv", "old")
    link = tmp_path / "link.csv"
    link.symlink_to(target)
    assert run("report", "-o", str(link)).exit_code == 0
    assert link.is_symlink() and target.read_text().startswith("time,actor")
    fresh = tmp_path / "fresh.md"
    assert run("report", "-o", str(fresh)).exit_code == 0 and fresh.stat().st_mode & 0o777 == 0o600
    # `-o /dev/stdout | cat`: /dev/stdout is a link through /proc to the pipe, whose target is no
    # path (it was resolved to one and refused as "No such file or directory", exit 2).
    piped = subprocess.run(
        [sys.executable, "-m", "filekeeper", "report", "--format", "csv", "-o", "/dev/stdout"],
        capture_output=True,
        text=True,
    )
    assert piped.returncode == 0 and piped.stdout.startswith("time,actor"), piped.stderr


def test_percent_escapes_that_are_no_utf8_do_not_break_recovery(provider_env, run, home: Path, tmp_path: Path) -> None:
    emu = provider_env("openai")
    emu.add_file("caf%e9.txt", 4, created_at=HOUR_AGO)
    emu.inject("POST", "/files", drop_response=True, after_store=True)
    lost = run("upload", str(write(tmp_path / "x%ff.txt", "data")), "-p", "openai", "--json")
    no_traceback(lost)
    assert lost.exit_code == 0 and lost.json()[0]["outcome"] == "uploaded"
    assert run("reconcile", "-p", "openai", "--min-age", "0").exit_code == 0


def test_a_rerun_that_cannot_check_for_the_landed_copy_sends_nothing(
    provider_env, run, home: Path, tmp_path: Path
) -> None:
    emu = provider_env("openai")
    write(home / "config.toml", "[http]\nattempts = 2\nbackoff_seconds = 0.01\n")
    doc = write(tmp_path / "big.jsonl", "x" * 5000)
    emu.inject("POST", "/files", drop_response=True, after_store=True)
    emu.inject("GET", "/files", status=500, times=2)
    assert run("upload", str(doc), "-p", "openai").exit_code == 1  # landed; the record says pending
    emu.inject("GET", "/files", status=503, times=2)  # and the listing is down when it is run again
    rerun = run("upload", str(doc), "-p", "openai", "--json")
    assert rerun.exit_code == 1 and "may have landed" in rerun.stderr and "--force" in rerun.stderr
    assert emu.count("POST", "/files") == 1 and len(emu.ids()) == 1


def test_a_tampered_archive_is_refused_whole(history_like, run, home: Path, tmp_path: Path) -> None:
    archive = tmp_path / "all.csv"
    assert run("db", "prune-events", "--before", "2999-01-01", "--archive", str(archive), "--yes").exit_code == 0
    rows = list(csv.reader(io.StringIO(archive.read_text(encoding="utf-8"), newline="")))
    for column, value in (
        ("detail", '{"bytes": NaN}'),
        ("detail", '"a string"'),
        ("pid", "9" * 30),
        ("time", "0001-01-01"),
    ):
        bad = [list(r) for r in rows]
        bad[1][rows[0].index(column)] = value
        tampered = tmp_path / f"bad-{column}.csv"
        with tampered.open("w", encoding="utf-8", newline="") as f:
            csv.writer(f, lineterminator="\r\n").writerows(bad)
        result = run("db", "import-events", str(tampered))
        assert result.exit_code == 2 and "nothing was imported" in result.stderr, (column, result.stderr)
        no_traceback(result)
    assert ledger_rows(home, "SELECT count(*) FROM events") == [(0,)]
    assert run("report", "--format", "json").exit_code == 0


@pytest.fixture
def history_like(provider_env, run, tmp_path: Path) -> None:
    provider_env("openai")
    upload(run, tmp_path, "openai", "a.txt", "b.txt")


def test_check_and_upload_agree_on_what_is_reused(provider_env, run, home: Path, tmp_path: Path) -> None:
    provider_env("openai")
    write(home / "config.toml", "[providers.openai]\nmax_files = 1\n")
    doc = write(tmp_path / "a.txt", "a")
    [twin] = run("upload", str(doc), "-p", "openai", "--json").json()
    soon = datetime.now(UTC) + timedelta(minutes=30)  # lives another half hour: too short to hand out
    ledger_sql(home, "UPDATE files SET expires_at = ? WHERE file_id = ?", soon, twin["id"])
    check = run("check", str(doc), "-p", "openai")
    up = run("upload", str(doc), "-p", "openai")
    assert (check.exit_code, up.exit_code) == (3, 3)


def test_a_twin_the_provider_calls_broken_is_not_reused(provider_env, run, home: Path, tmp_path: Path) -> None:
    emu = provider_env("openai")
    doc = write(tmp_path / "a.txt", "a")
    [twin] = run("upload", str(doc), "-p", "openai", "--json").json()
    with emu.lock:
        emu.files[twin["id"]].status = "error"  # processing failed at the provider
    [again] = run("upload", str(doc), "-p", "openai", "--json").json()
    assert again["outcome"] == "uploaded" and again["id"] != twin["id"]


def test_the_same_id_twice_is_one_delete(provider_env, run, home: Path, tmp_path: Path) -> None:
    provider_env("openai")
    [a] = upload(run, tmp_path, "openai", "a.txt")
    result = run("delete", a["id"], a["id"], "--json")
    assert result.exit_code == 0
    [done] = result.json()
    assert done["already_gone"] is False and actions(home).count("delete") == 1


def test_ctrl_c_during_delete_says_what_was_done(home: Path, emulators, run, tmp_path: Path) -> None:
    emu = emulators("openai")
    env = {**os.environ, "FILEKEEPER_HOME": str(home), KEY_VARS["openai"]: SECRET, URL_VARS["openai"]: emu.url}
    paths = [str(write(tmp_path / f"{i}.txt", str(i))) for i in range(3)]
    made = subprocess.run(
        [sys.executable, "-m", "filekeeper", "upload", *paths, "-p", "openai", "--json", "--concurrency", "1"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    ids = [r["id"] for r in json.loads(made.stdout)]
    emu.latency = 2.0  # every request now takes two seconds to be answered
    proc = subprocess.Popen(
        [sys.executable, "-m", "filekeeper", "delete", *ids, "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=sigint_as_usual,
    )

    def deletes_arrived() -> int:
        with emu.lock:
            return sum(1 for method, _ in emu.arrived if method == "DELETE")

    deadline = time.monotonic() + 60
    while deletes_arrived() < 2:  # the first is answered, the second is on its way
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert [d["id"] for d in json.loads(out)] == [ids[0]]  # what was done is reported
    assert "may be deleted or not" in err and ids[1] in err
    assert "not deleted: interrupted" in err and ids[2] in err
    assert ids[2] in emu.ids()


def test_a_name_that_is_not_utf8_is_refused(provider_env, run, tmp_path: Path) -> None:
    provider_env("openai")
    path = os.path.join(os.fsencode(tmp_path), b"bad\xff\xfe.txt")
    with open(path, "wb") as f:
        f.write(b"x")
    result = run("upload", os.fsdecode(path), "-p", "openai", "--json")
    assert result.exit_code == 2 and "not valid UTF-8" in result.stderr
    no_traceback(result)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ('[providers.openai]\nmax_total_bytes = "' + "9" * 400 + 'GB"', "too large"),
        (
            '[accounts.x]\nprovider = "compatible"\napi_key_env = "K"\nbase_url = "http://a\\nb/v1"',
            "control characters",
        ),
        ('[accounts.x]\nprovider = "compatible"\napi_key_env = "K"\nbase_url = "https://h/v1?api_key=sk-1"', "?query"),
    ],
)
def test_more_bad_settings_are_usage_errors(config: str, message: str, run, home: Path) -> None:
    write(home / "config.toml", config)
    result = run("usage")
    assert result.exit_code == 2 and message in result.stderr, result.stderr
    no_traceback(result)


def test_more_bad_input_is_one_line(provider_env, run, home: Path, tmp_path: Path, monkeypatch) -> None:
    emu = provider_env("openai")
    assert run("report", "--until", "0001-01-01").exit_code == 2
    empty = run("upload", "", "-p", "openai")
    assert empty.exit_code == 2 and "an empty path" in empty.stderr
    monkeypatch.setenv("OPENAI_BASE_URL", "http://xn--a.com/v1")
    bad_host = run("upload", str(write(tmp_path / "a.txt", "a")), "-p", "openai")
    assert bad_host.exit_code == 1 and "cannot be used" in bad_host.stderr
    no_traceback(bad_host)
    assert ledger_rows(home, "SELECT status FROM files") == [("failed",)]  # holds no quota
    del emu


def test_odd_provider_ids_are_shown_escaped_and_can_be_deleted(provider_env, run, home: Path, tmp_path: Path) -> None:
    emu = provider_env("openai")
    baseline(run, "-p", "openai")
    emu.add_file("odd.txt", 3, created_at=HOUR_AGO, file_id="files/odd\nid")  # a hostile server's id
    adopted = run("reconcile", "-p", "openai", "--apply", "--adopt")
    assert adopted.exit_code == 0 and "files/odd\nid" not in adopted.stdout and "files/odd\\nid" in adopted.stdout
    gone = run("delete", "files/odd\nid")
    assert gone.exit_code == 2  # not printable: refused as an id
    emu.add_file("slashed.txt", 3, created_at=HOUR_AGO, file_id="files/abc123")  # as Gemini names them
    assert run("reconcile", "-p", "openai", "--apply", "--adopt").exit_code == 0
    slashed = run("delete", "files/abc123")
    assert slashed.exit_code == 0, slashed.stderr
    assert "files/abc123" not in emu.ids()
