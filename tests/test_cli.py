"""The command line as a new user meets it: help, doctor, show, ls's filters, honest plans and reports."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click
import pytest

from filekeeper.cli import cli
from tests.conftest import (
    SECRET,
    baseline,
    ledger_rows,
    ledger_sql,
    upload,
    write,
)

ROOT = Path(__file__).resolve().parent.parent
HOUR_AGO = int(time.time()) - 7200


def all_commands() -> list[tuple[list[str], click.Command]]:
    """Every command, with the words that name it (``["db", "prune-events"]``)."""
    out: list[tuple[list[str], click.Command]] = []

    def walk(group: click.Group, prefix: list[str]) -> None:
        for name, command in sorted(group.commands.items()):
            out.append(([*prefix, name], command))
            if isinstance(command, click.Group):
                walk(command, [*prefix, name])

    walk(cli, [])
    return out


# --- help -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("words", [w for w, _ in all_commands()], ids=" ".join)
def test_every_command_takes_h_and_ends_its_help_with_examples(words: list[str], run) -> None:
    result = run(*words, "-h")
    assert result.exit_code == 0 and result.stdout.startswith("Usage: "), result.stderr
    tail = result.stdout.split("Examples:")[-1]
    assert "Examples:" in result.stdout, result.stdout
    examples = [line.strip() for line in tail.splitlines() if line.strip().startswith("filekeeper ")]
    assert len(examples) >= 2, tail
    for example in examples:  # real examples: each names this command
        assert example.startswith("filekeeper " + " ".join(words)) or "filekeeper" in example.split("|")[0]


def test_the_top_help_lists_the_environment(run) -> None:
    out = run("--help").stdout
    for variable in ("FILEKEEPER_HOME", "FILEKEEPER_DATABASE_URL", "FILEKEEPER_CONFIG", "_API_KEY", "_BASE_URL"):
        assert variable in out
    assert "Exit codes:" in out and "130 interrupted" in out
    assert run("-h").stdout == out


def test_verbose_and_quiet_go_after_the_command_too(provider_env, run) -> None:
    provider_env("openai")
    assert run("ls", "-v").exit_code == 0 and run("ls", "--verbose").exit_code == 0
    assert run("-v", "ls").exit_code == 0
    noisy = run("ls")
    quiet = run("ls", "-q")
    assert "no files" in noisy.stderr and quiet.stderr == "" and quiet.exit_code == 0


def _imported(*argv: str, env: dict[str, str] | None = None) -> list[str]:
    code = (
        "import sys\n"
        f"sys.argv = {['filekeeper', *argv]!r}\n"
        "from filekeeper.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in ('sqlalchemy', 'httpx', 'alembic'))),"
        " file=sys.stderr)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **(env or {})}
    )
    return out.stderr.strip().splitlines()[-1].split() if out.stderr.strip() else []


def test_help_and_completion_import_no_sqlalchemy(home: Path) -> None:
    assert _imported("--help") == []
    assert _imported("reconcile", "--help") == []
    completion = {"_FILEKEEPER_COMPLETE": "bash_complete", "COMP_WORDS": "filekeeper rec", "COMP_CWORD": "1"}
    assert _imported(env=completion) == []
    providers = {"_FILEKEEPER_COMPLETE": "bash_complete", "COMP_WORDS": "filekeeper ls --provider o", "COMP_CWORD": "3"}
    assert _imported(env=providers) == []
    done = subprocess.run(
        [sys.executable, "-m", "filekeeper"], env={**os.environ, **providers}, capture_output=True, text=True
    )
    assert "openai" in done.stdout


@pytest.mark.sqlite_only
def test_a_command_run_as_a_process_closes_the_ledger_before_the_heap_is_frozen(
    provider_env, home: Path, tmp_path: Path
) -> None:
    """main() freezes the heap at exit, so nothing left to the last collection is finalized: the
    ledger must be closed before (its write-ahead log folded back and removed, as SQLite does
    when the last connection closes), after a success, a failure and a broken pipe alike."""
    provider_env("openai")
    (tmp_path / "a.txt").write_text("a")
    for argv, code in ((["upload", str(tmp_path / "a.txt"), "-p", "openai"], 0), (["delete", "file-nope"], 2)):
        done = subprocess.run([sys.executable, "-m", "filekeeper", *argv], capture_output=True, text=True)
        assert done.returncode == code, done.stderr
        assert (home / "ledger.db").exists() and not (home / "ledger.db-wal").exists()
    assert ledger_rows(home, "SELECT count(*) FROM files WHERE status = 'active'") == [(1,)]
    # A listing cut off mid-stream (`| head -1`): its generator still holds a ledger connection
    # when the broken pipe ends the command, and must let it go all the same.
    ledger_sql(
        home,
        "INSERT INTO files (account_id, file_id, filename, bytes, purpose, status, created_at) "
        "SELECT account_id, 'file-copy' || n.value, 'copy.txt', 1, purpose, 'active', created_at "
        "FROM files, (WITH RECURSIVE c(value) AS (SELECT 1 UNION ALL SELECT value + 1 FROM c WHERE value < 3000) "
        "SELECT value FROM c) AS n",
    )
    for argv in (["ls", "--jsonl"], ["report", "--format", "csv"], ["report", "--format", "json"]):
        proc = subprocess.Popen(
            [sys.executable, "-m", "filekeeper", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert proc.stdout is not None and proc.stdout.readline()
        proc.stdout.close()  # the reader goes away with the rest unread (3,000 rows: more than a pipe holds)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode in (0, 1) and b"Traceback" not in err, (argv, err)
        assert not (home / "ledger.db-wal").exists(), argv


def test_readme_command_table_matches_the_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("| command | what it does |") :].split("\n\n")[0]
    rows = re.findall(r"^\| `([^`]+)`", table, flags=re.MULTILINE)
    documented = {}
    for row in rows:
        words = row.split()
        name = words[:2] if words[0] == "db" else words[:1]
        documented[" ".join(name)] = set(re.findall(r"--[a-z][a-z-]*", row))
    commands = {" ".join(w): c for w, c in all_commands() if not isinstance(c, click.Group)}
    assert set(documented) == set(commands), set(documented) ^ set(commands)
    for name, options in documented.items():
        real = {opt for p in commands[name].params for opt in getattr(p, "opts", []) if opt.startswith("--")}
        assert options <= real, f"{name}: README names {sorted(options - real)}, which it does not take"
        missing = real - options - {"--help", "--verbose", "--quiet"}
        assert not missing, f"{name}: README's table leaves out {sorted(missing)}"


def test_the_repository_carries_its_license_and_links_only_to_itself() -> None:
    license_text = (ROOT / "LICENSE").read_text()
    assert 'license = "MIT"' in (ROOT / "pyproject.toml").read_text() and license_text.startswith("MIT License")
    for doc in (ROOT / "README.md", *(ROOT / "docs").glob("*.md")):
        text = doc.read_text()
        assert "../shared" not in text and "PROVIDERS.md" not in text, doc
        for target in re.findall(r"\]\(([^)#]+)\)", text):
            if not target.startswith(("http://", "https://")):
                assert (doc.parent / target).exists(), f"{doc.name} links to {target}, which is not in the repository"
    assert (ROOT / "docs" / "providers.md").exists()


# --- doctor -------------------------------------------------------------------------------------------


def test_doctor_says_where_each_value_came_from(emulators, run, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    emu = emulators("openai")
    config = write(
        home / "config.toml",
        '[providers.openai]\nmax_files = 5\n[accounts.team]\nprovider = "moonshot"\n'
        'api_key_env = "TEAM_KEY"\nretention_days = 30\n',
    )
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("OPENAI_BASE_URL", emu.url)
    result = run("doctor", "--json")
    assert result.exit_code == 1  # team's key is not set: something is wrong, and said
    doc = result.json()
    assert doc["config"] == {"path": str(config), "exists": True}
    # Nothing was created: no SQLite file, no tables in the PostgreSQL schema.
    assert doc["ledger"]["state"] == ("empty" if os.environ.get("FILEKEEPER_DATABASE_URL") else "missing")
    assert not (home / "ledger.db").exists()
    accounts = {a["account"]: a for a in doc["accounts"]}
    openai = accounts["openai"]
    assert openai["key_set"] is True and openai["key_fingerprint"].startswith("sha256:")
    assert openai["limits"]["max_files"] == {"value": 5, "from": f"{config} [providers.openai]"}
    assert openai["limits"]["max_total_bytes"]["from"] == "built-in"
    assert openai["base_url"] == emu.url and openai["base_url_from"] == "environment OPENAI_BASE_URL"
    team = accounts["team"]
    assert team["key_set"] is False and team["limits"]["retention_days"] == {
        "value": 30,
        "from": f"{config} [accounts.team]",
    }
    assert doc["problems"] == ["team: no API key: set TEAM_KEY"]
    assert SECRET not in result.stdout
    text = run("doctor")
    assert text.exit_code == 1 and "max_files" in text.stdout and "[built-in]" in text.stdout
    assert "no API key: set TEAM_KEY" in text.stdout and SECRET not in text.stdout


def test_doctor_online_tries_each_account(emulators, run, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good, other = emulators("openai"), emulators("moonshot", api_key="a-different-key-altogether")
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("OPENAI_BASE_URL", good.url)
    monkeypatch.setenv("MOONSHOT_API_KEY", SECRET)
    monkeypatch.setenv("MOONSHOT_BASE_URL", other.url)
    monkeypatch.setenv("XAI_API_KEY", SECRET)
    monkeypatch.setenv("XAI_BASE_URL", "http://127.0.0.1:9/v1")  # nothing listens there
    write(home / "config.toml", "[http]\nattempts = 1\ntimeout_seconds = 5\n")
    result = run("doctor", "--online", "--json")
    assert result.exit_code == 1
    online = {a["account"]: a["online"] for a in result.json()["accounts"]}
    assert online["openai"] == "ok"
    assert online["moonshot"].startswith("auth failed")
    assert online["xai"].startswith("unreachable")
    monkeypatch.delenv("MOONSHOT_API_KEY")
    monkeypatch.delenv("XAI_API_KEY")
    assert run("doctor", "--online").exit_code == 0


# --- show ---------------------------------------------------------------------------------------------


def test_show_tells_a_files_whole_story(provider_env, run, home: Path, tmp_path: Path) -> None:
    provider_env("openai")
    [a] = upload(run, tmp_path, "openai", "a.txt")
    assert run("delete", a["id"]).exit_code == 0
    doc = run("show", a["id"], "--json").json()
    assert doc["id"] == a["id"] and doc["status"] == "deleted"
    assert [e["action"] for e in doc["events"]] == ["reserve", "upload", "delete"]
    text = run("show", a["id"])
    assert text.exit_code == 0 and "history (3 event(s), oldest first)" in text.stdout
    assert text.stdout.index("reserve") < text.stdout.index("upload") < text.stdout.rindex("delete")
    missing = run("show", "file-nope")
    assert missing.exit_code == 2 and "no file 'file-nope'" in missing.stderr
    # Row numbers past what the column holds (an overflow in the driver, or PostgreSQL's "integer
    # out of range"), and digits int() cannot read, are rows the ledger does not have.
    for ref in ("#2147483648", "#9223372036854775808", "#²"):
        beyond = run("show", ref)
        assert beyond.exit_code == 2 and f"no file {ref!r} in the ledger" in beyond.stderr, beyond.stderr


@pytest.mark.parametrize("ref", [".", ".."])
def test_delete_of_a_dot_path_is_bad_input_and_sends_nothing(provider_env, run, tmp_path: Path, ref: str) -> None:
    """ "." and ".." are no provider's file id; in a URL they name the collection above it."""
    emu = provider_env("openai")
    upload(run, tmp_path, "openai", "a.txt")
    result = run("delete", ref, "-p", "openai")
    assert result.exit_code == 2 and f"{ref!r} is not a file id" in result.stderr
    assert emu.count("DELETE") == 0 and len(emu.ids()) == 1


def test_show_a_reservation_by_its_ledger_id(provider_env, run, home: Path, tmp_path: Path) -> None:
    emu = provider_env("openai")
    emu.inject("POST", "/files", status=400, body=emu.error_body(400, "no"))
    run("upload", str(write(tmp_path / "x.txt", "x")), "-p", "openai")
    [(ledger_id,)] = ledger_rows(home, "SELECT id FROM files")
    doc = run("show", f"#{ledger_id}", "--json").json()
    assert doc["status"] == "failed" and [e["action"] for e in doc["events"]] == ["reserve", "upload_failed"]


# --- ls -------------------------------------------------------------------------------------------------


@pytest.fixture
def shelf(provider_env, run, home: Path, tmp_path: Path) -> dict[str, Any]:
    provider_env("openai")
    names = {"a.pdf": 10, "b.txt": 300, "c.pdf": 20, "big.jsonl": 900}
    for name, size in names.items():
        args = ["--purpose", "batch"] if name.endswith("jsonl") else []
        assert run("upload", str(write(tmp_path / name, "x" * size)), "-p", "openai", *args).exit_code == 0
    old = "2026-01-01 00:00:00"
    ledger_sql(home, "UPDATE files SET created_at = ? WHERE filename = 'a.pdf'", old)
    ledger_sql(home, "UPDATE files SET expires_at = ? WHERE filename = 'c.pdf'", "2020-01-01 00:00:00")
    return names


def _names(result: Any) -> list[str]:
    return [r["filename"] for r in result.json()]


def test_ls_filters_and_sorts(shelf, run) -> None:
    assert _names(run("ls", "--name", "*.pdf", "--json")) == ["a.pdf", "c.pdf"]
    assert _names(run("ls", "--purpose", "batch", "--json")) == ["big.jsonl"]
    assert _names(run("ls", "--older-than", "30d", "--json")) == ["a.pdf"]
    assert _names(run("ls", "--expiring-within", "1d", "--json")) == ["c.pdf"]
    assert _names(run("ls", "--sort", "size", "--json")) == ["big.jsonl", "b.txt", "c.pdf", "a.pdf"]
    assert _names(run("ls", "--sort", "name", "--limit", "2", "--json")) == ["a.pdf", "b.txt"]
    assert _names(run("ls", "--sort", "expires", "--limit", "1", "--json")) == ["c.pdf"]
    assert run("ls", "--sort", "colour").exit_code == 2 and run("ls", "--limit", "0").exit_code == 2
    assert run("ls", "--older-than", "soon").exit_code == 2


def test_ls_jsonl_streams_one_record_a_line(shelf, run) -> None:
    lines = run("ls", "--jsonl").stdout.splitlines()
    assert len(lines) == 4 and {json.loads(line)["filename"] for line in lines} == set(shelf)
    assert run("ls", "--json", "--jsonl").exit_code == 2


def test_times_say_their_zone(shelf, run, home: Path) -> None:
    out = run("ls").stdout
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\dZ", out)
    env = {**os.environ, "TZ": "Asia/Kolkata"}
    local = subprocess.run(
        [sys.executable, "-m", "filekeeper", "ls", "--local"], env=env, capture_output=True, text=True
    )
    assert local.returncode == 0 and "+05:30" in local.stdout
    assert not re.search(r"\d\d:\d\dZ", local.stdout)  # a random file id may well end in Z


def test_long_names_are_cut_to_the_terminal_never_wrapped(provider_env, run, home: Path, tmp_path: Path) -> None:
    import pty

    provider_env("openai")
    long_name = "a-very-long-name-" * 8 + ".txt"
    assert run("upload", str(write(tmp_path / long_name, "x")), "-p", "openai").exit_code == 0
    primary, replica = pty.openpty()
    try:
        env = {**os.environ, "COLUMNS": "100"}
        proc = subprocess.run(
            [sys.executable, "-m", "filekeeper", "ls"], env=env, stdout=replica, stderr=subprocess.PIPE, timeout=60
        )
        os.close(replica)
        out = os.read(primary, 65536).decode()
    finally:
        os.close(primary)
    assert proc.returncode == 0
    lines = [line for line in out.splitlines() if line.strip()]
    assert all(len(line) <= 100 for line in lines) and "…" in out and long_name not in out
    piped = run("ls").stdout
    assert long_name in piped  # not a terminal: nothing is cut


# --- honest plans and reports ---------------------------------------------------------------------------


def test_a_plan_lists_its_files_one_by_one(provider_env, run, home: Path, tmp_path: Path) -> None:
    emu = provider_env("openai")
    baseline(run, "-p", "openai")
    orphans = [emu.add_file(f"orphan{i:02}.txt", 100 + i, created_at=HOUR_AGO) for i in range(25)]
    young = emu.add_file("young.txt", 5)
    plan = run("reconcile", "-p", "openai")
    assert plan.exit_code == 0
    out = plan.stdout
    assert "orphans (25):" in out and "… and 5 more" in out
    assert sum(1 for o in orphans if o.id in out) == 20 and "orphan00.txt" in out and "2h" in out
    assert "unknown to the ledger: delete" in out
    assert "held back (1):" in out and young.id in out and "younger than --min-age" in out
    adopt = run("reconcile", "-p", "openai", "--adopt").stdout
    assert "adopt as ours" in adopt and "unknown to the ledger: delete" not in adopt and "25 to adopt" in adopt


def test_exit_code_4_only_when_there_is_something_to_act_on(provider_env, run, home: Path) -> None:
    emu = provider_env("openai")
    baseline(run, "-p", "openai")
    emu.add_file("young.txt", 5)  # held back by --min-age: nothing to act on yet
    held = run("reconcile", "-p", "openai", "--exit-code")
    assert held.exit_code == 0 and "held back" in held.stdout
    emu.add_file("old.txt", 5, created_at=HOUR_AGO)
    assert run("reconcile", "-p", "openai", "--exit-code").exit_code == 4


def test_report_format_follows_the_output_name(provider_env, run, home: Path, tmp_path: Path) -> None:
    provider_env("openai")
    upload(run, tmp_path, "openai", "a.txt")
    for suffix, starts in (
        (".md", "# filekeeper report"),
        (".csv", "time,actor"),
        (".json", "{"),
        (".html", "<!doctype"),
    ):
        path = tmp_path / f"report{suffix}"
        assert run("report", "-o", str(path)).exit_code == 0
        assert path.read_text().startswith(starts), suffix
    unknown = run("report", "-o", str(tmp_path / "report.xyz"))
    assert unknown.exit_code == 2 and "cannot tell the report format" in unknown.stderr
    assert not (tmp_path / "report.xyz").exists()
    assert run("report", "-o", str(tmp_path / "report.xyz"), "--format", "csv").exit_code == 0
    assert run("db", "current", "--json").json()["state"] == "current"


def _chromium() -> str | None:
    import shutil

    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if path := shutil.which(name):
            return path
    return None


@pytest.mark.parametrize("width", [1024, 1366])
def test_the_html_report_fits_the_window(width: int, provider_env, run, home: Path, tmp_path: Path) -> None:
    browser = _chromium()
    if browser is None:
        pytest.skip("no Chromium on this machine (apt-get install chromium; .ci/run installs it)")
    emu = provider_env("openai")
    long_name = "quarterly-revenue-by-region-" * 6 + ".csv"
    upload(run, tmp_path, "openai", long_name, "b.txt")
    baseline(run, "-p", "openai")
    emu.add_file("orphan-" * 20 + ".txt", 7, created_at=HOUR_AGO)
    run("reconcile", "-p", "openai", "--apply")
    page = tmp_path / "report.html"
    assert run("report", "-o", str(page)).exit_code == 0
    html = page.read_text()
    assert "<script" not in html.lower()
    # The test (not the report) measures the page once it is laid out.
    probe = tmp_path / "probe.html"
    probe.write_text(
        html.replace(
            "</body>",
            "<script>document.body.setAttribute('data-overflow', String(document.documentElement.scrollWidth"
            " - window.innerWidth));var c=[...document.querySelectorAll('td.name')].find(function(t){return"
            " t.title.indexOf('quarterly')===0});document.body.setAttribute('data-cut', c ? String(c.scrollWidth"
            " > c.clientWidth) + '|' + c.title : 'none')</script></body>",
        )
    )
    out = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--hide-scrollbars",
            f"--window-size={width},900",
            "--dump-dom",
            probe.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    overflow = int(re.search(r'data-overflow="(-?\d+)"', out).group(1))  # type: ignore[union-attr]
    assert overflow <= 0, f"{overflow} px of sideways scrolling at {width} px"
    cut = re.search(r'data-cut="([^"]*)"', out).group(1)  # type: ignore[union-attr]
    truncated, title = cut.split("|", 1)
    assert truncated == "true" and title == long_name  # cut, with the whole name in a tooltip
