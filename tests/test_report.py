"""Audit reports over a ledger built by real uploads, refusals, deletes and reconciles."""

from __future__ import annotations

import csv
import getpass
import io
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import age_everything, baseline, ledger_rows, write

AWKWARD = ["plain.txt", 'comma, "quoted".txt', "new\nline.txt", "ünïcødé 文件.md"]


@pytest.fixture
def history(provider_env, run, home: Path, tmp_path: Path) -> dict[str, Any]:
    """A week of activity on one account: uploads, a reuse, refusals, a delete, a reconcile."""
    emu = provider_env("openai")
    write(home / "config.toml", "[providers.openai]\nmax_files = 5\n")
    paths = [str(write(tmp_path / f"d{i}" / name, f"content {i}")) for i, name in enumerate(AWKWARD)]
    uploaded = run("upload", *paths, "-p", "openai", "--json", "--concurrency", "1").json()
    run("upload", paths[0], "-p", "openai")  # reused
    refused = run("upload", *[str(write(tmp_path / f"x{i}.txt", f"extra {i}")) for i in range(3)], "-p", "openai")
    assert refused.exit_code == 3
    run("delete", uploaded[0]["id"], "-p", "openai")
    age_everything(home)  # uploaded a while ago: a file gone from the listing now is missing, not just young
    baseline(run, "-p", "openai")
    emu.add_file("orphan.txt", 7, created_at=int(time.time()) - 7200)
    with emu.lock:
        del emu.files[uploaded[1]["id"]]
    assert run("reconcile", "-p", "openai", "--apply").exit_code == 0
    return {"uploaded": uploaded, "emu": emu}


def test_table_and_markdown_summaries(history, run) -> None:
    table = run("report", "--format", "table")
    assert table.exit_code == 0, table.stderr
    out = table.stdout
    for section in ("Now", "By day", "By actor", "Reconcile runs", "openai: largest files", "openai: missing"):
        assert section in out
    assert "3 / 5 (60.0%)" in out
    assert "Refusals by limit: max_files" in out
    md = run("report", "--format", "md").stdout
    assert md.startswith("# filekeeper report") and "| account | provider | files |" in md
    assert 'comma, "quoted".txt' in md and "new\\nline.txt" in md  # a newline cannot break a table row


def test_json_report_schema_and_figures(history, run, home: Path) -> None:
    doc = run("report", "--format", "json").json()
    assert doc["schema"] == "filekeeper.report/1"
    assert set(doc) == {
        "schema",
        "generated_at",
        "period",
        "accounts",
        "daily",
        "reconcile_runs",
        "usage",
        "actors",
        "events",
    }
    [acct] = doc["accounts"]
    assert acct["account"] == "openai" and acct["limits"]["max_files"] == 5
    assert acct["statuses"] == {"active": 3, "deleted": 1, "missing": 1}
    assert (acct["files"], acct["percent"]["files"]) == (3, 60.0)
    assert acct["headroom"]["files"] == 5 - acct["files"]
    assert [m["filename"] for m in acct["missing"]] == [AWKWARD[1]]
    [day] = doc["daily"]
    assert (day["uploads"], day["reused"], day["refused"], day["deletes"]) == (5, 1, 2, 1)
    assert day["refused_by"] == {"max_files": 2}
    assert (day["orphans_found"], day["orphans_deleted"], day["missing"]) == (1, 1, 1)
    assert day["bytes_uploaded"] > 0
    [_baseline, run_row] = doc["reconcile_runs"]
    assert (run_row["status"], run_row["deleted"], run_row["missing"]) == ("done", 1, 1)
    assert len(doc["events"]) == ledger_rows(home, "SELECT count(*) FROM events")[0][0]
    first = doc["events"][0]
    assert set(first) == {"time", "actor", "pid", "account", "provider", "file_id", "filename", "action", "detail"}
    assert isinstance(first["detail"], dict)
    [who] = [a for a in doc["actors"] if a["actor"].startswith(f"{getpass.getuser()}@")]
    assert (who["account"], who["uploads"], who["reused"], who["refused"], who["deletes"]) == ("openai", 5, 1, 2, 1)
    assert who["orphans_deleted"] == 1
    for column in ("uploads", "reused", "refused", "deletes", "expiries", "orphans_deleted"):  # one rule for both
        assert sum(d[column] for d in doc["daily"]) == sum(a[column] for a in doc["actors"]), column
    series = doc["usage"]["openai"]
    assert series[-1]["files"] == 3 and series[0]["files"] == 0  # 5 uploaded today, 1 deleted, 1 missing


def test_csv_is_rfc4180_with_any_filename(history, home: Path) -> None:
    # A real process and raw bytes: text-mode readers would hide the CRLF line ends.
    result = subprocess.run(
        [sys.executable, "-m", "filekeeper", "report", "--format", "csv"], capture_output=True, check=True
    )
    raw = result.stdout.decode("utf-8")
    assert raw.startswith("time,actor,pid,account,provider,file_id,filename,action,detail\r\n")
    rows = list(csv.reader(io.StringIO(raw, newline="")))
    assert len(rows) - 1 == ledger_rows(home, "SELECT count(*) FROM events")[0][0]
    filenames = {r[6] for r in rows[1:]}
    assert set(AWKWARD) <= filenames
    actions = [r[7] for r in rows[1:]]
    assert {"reserve", "upload", "reuse", "refuse", "delete", "reconcile_delete", "reconcile_missing"} <= set(actions)
    assert all(json.loads(r[8]) is not None for r in rows[1:])


def test_filters_and_output_files(history, run, home: Path, tmp_path: Path) -> None:
    empty = run("report", "--format", "json", "--until", "2020-01-01").json()
    assert empty["events"] == [] and empty["daily"] == []
    assert run("report", "--account", "nobody").exit_code == 2
    assert run("report", "--since", "yesterday").exit_code == 2
    assert run("report", "--since", "2026-02-01", "--until", "2026-01-01").exit_code == 2
    out = tmp_path / "audit.csv"
    result = run("report", "-o", str(out))
    assert result.exit_code == 0 and "wrote csv report" in result.stderr
    assert out.read_text(encoding="utf-8").startswith("time,actor")
    assert not list(tmp_path.glob("*.partial"))
    html_out = tmp_path / "audit.html"
    assert run("report", "-o", str(html_out)).exit_code == 0
    assert html_out.read_text(encoding="utf-8").startswith("<!doctype html>")


def test_html_is_self_contained(history, run, tmp_path: Path) -> None:
    page = run("report", "--format", "html").stdout
    assert "<svg" in page and 'data-series="files"' in page and 'data-series="bytes"' in page
    assert 'data-series="limit"' in page
    assert "<script" not in page.lower() and "<link" not in page.lower()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page), "nothing may be fetched"
    assert "&lt;" not in page.split("<body>")[0]
    assert "comma, &quot;quoted&quot;.txt" in page


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if found := shutil.which(name):
            return found
    return None


def test_html_chart_renders_in_a_real_browser(history, run, tmp_path: Path) -> None:
    browser = _chromium()
    if browser is None:
        pytest.skip("no Chromium on this machine (apt-get install chromium; .ci/run installs it)")
    from PIL import Image

    page = tmp_path / "report.html"
    assert run("report", "--format", "html", "-o", str(page)).exit_code == 0
    shot = tmp_path / "shot.png"
    subprocess.run(
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
            "--window-size=1280,1400",
            f"--screenshot={shot}",
            page.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    image = Image.open(shot).convert("RGB")
    assert image.size == (1280, 1400)
    colours = {"files": (0x25, 0x63, 0xEB), "bytes": (0x05, 0x96, 0x69), "limit": (0xDC, 0x26, 0x26)}
    counts = dict.fromkeys(colours, 0)
    data = image.tobytes()
    for i in range(0, len(data), 3):
        pixel = data[i : i + 3]
        for name, rgb in colours.items():
            if all(abs(a - b) <= 24 for a, b in zip(pixel, rgb, strict=True)):
                counts[name] += 1
    # Each series is a line hundreds of pixels long, drawn 2-3 px wide: it shows, or the chart is broken.
    assert counts["files"] > 300 and counts["bytes"] > 300 and counts["limit"] > 300, counts


def test_prune_events_archives_first_and_keeps_the_rest(history, run, home: Path, tmp_path: Path) -> None:
    total = ledger_rows(home, "SELECT count(*) FROM events")[0][0]
    nothing = run("db", "prune-events", "--before", "2000-01-01", "--archive", str(tmp_path / "none.csv"), "--yes")
    assert nothing.exit_code == 0 and "nothing to prune" in nothing.stdout
    assert not (tmp_path / "none.csv").exists()
    default = run("db", "prune-events", "--before", "2999-01-01")
    assert default.exit_code == 0 and str(home / "archive") in default.stdout
    archive = tmp_path / "old.csv"
    asked = run("db", "prune-events", "--before", "2999-01-01", "--archive", str(archive))  # without --yes
    assert asked.exit_code == 0 and f"would archive {total} event(s)" in asked.stdout and "--yes" in asked.stdout
    assert not archive.exists() and ledger_rows(home, "SELECT count(*) FROM events")[0][0] == total
    result = run("db", "prune-events", "--before", "2999-01-01", "--archive", str(archive), "--yes")
    assert result.exit_code == 0, result.stderr
    assert f"archived {total} event(s)" in result.stdout and str(archive) in result.stdout
    assert archive.stat().st_mode & 0o777 == 0o600
    rows = list(csv.reader(io.StringIO(archive.read_text(encoding="utf-8"), newline="")))
    assert len(rows) - 1 == total and rows[0][0] == "time"
    assert ledger_rows(home, "SELECT count(*) FROM events")[0][0] == 0
    again = run("db", "prune-events", "--before", "2999-01-01", "--archive", str(archive), "--yes")
    assert again.exit_code == 2 and "exists already" in again.stderr


def test_an_archive_can_be_imported_back_once(history, run, home: Path, tmp_path: Path) -> None:
    query = "SELECT at, account_id, file_pk, action, actor, pid, detail FROM events ORDER BY id"
    before = ledger_rows(home, query)
    archive = tmp_path / "all.csv"
    assert run("db", "prune-events", "--before", "2999-01-01", "--archive", str(archive), "--yes").exit_code == 0
    back = run("db", "import-events", str(archive), "--json")
    assert back.exit_code == 0, back.stderr
    assert back.json() == {"imported": len(before), "already_present": 0, "archive": str(archive)}
    assert ledger_rows(home, query) == before  # the same events, tied to the same accounts and files
    twice = run("db", "import-events", str(archive), "--json").json()
    assert (twice["imported"], twice["already_present"]) == (0, len(before))
    for bad, message in ((tmp_path / "nope.csv", "cannot read"), (write(tmp_path / "x.csv", "a,b\n1,2\n"), "not a")):
        result = run("db", "import-events", str(bad))
        assert result.exit_code == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_a_bad_archive_path_is_one_line(history, run, home: Path, tmp_path: Path) -> None:
    total = ledger_rows(home, "SELECT count(*) FROM events")[0][0]
    blocker = write(tmp_path / "file", "x")
    for path in (blocker / "under-a-file.csv", tmp_path):
        result = run("db", "prune-events", "--before", "2999-01-01", "--archive", str(path), "--yes")
        assert result.exit_code == 2, result.stdout + result.stderr
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert ledger_rows(home, "SELECT count(*) FROM events")[0][0] == total
