"""The quota engine from the CLI and the library: check, refusals, TTL, eviction, dedup, concurrency."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from filekeeper import Keeper, QuotaExceeded
from tests.conftest import KEY_VARS, SECRET, URL_VARS, actions, as_json, ledger_rows, ledger_sql, write

VIOLATION_KEYS = {"limit", "message", "current", "requested", "max", "purpose"}


def config(home: Path, text: str) -> None:
    write(home / "config.toml", text)


def test_check_ok_and_its_json(provider_env, run, tmp_path: Path) -> None:
    emu = provider_env("moonshot")
    docs = [str(write(tmp_path / f"{i}.txt", f"{i}" * 10)) for i in range(3)]
    result = run("check", *docs, "-p", "moonshot", "--json")
    assert result.exit_code == 0, result.stderr
    body = result.json()
    assert body["ok"] is True and body["violations"] == []
    assert (body["account"], body["provider"]) == ("moonshot", "moonshot")
    assert body["usage"] == {"files": 0, "bytes": 0}
    assert body["limits"] == {
        "max_files": 1000,
        "max_total_bytes": 10**10,
        "max_file_bytes": 10**8,
        "retention_days": 180,
        "by_purpose": {},
        "by_format": {},
    }
    assert emu.count("*") == 0  # nothing left the machine
    human = run("check", *docs, "-p", "moonshot")
    assert human.exit_code == 0 and human.stdout.startswith("ok: 3 file(s)")


def test_check_needs_no_api_key(run, home: Path, tmp_path: Path) -> None:
    result = run("check", str(write(tmp_path / "a.txt", "x")), "-p", "openai")
    assert result.exit_code == 0, result.stderr


@pytest.mark.parametrize(
    ("setup", "args", "limit"),
    [
        ("[providers.moonshot]\nmax_files = 2\n", [], "max_files"),
        ("[providers.moonshot]\nmax_total_bytes = 25\n", [], "max_total_bytes"),
        ('[providers.moonshot]\nmax_file_bytes = "9B"\n', [], "max_file_bytes"),
        ("[providers.moonshot]\nretention_days = 7\n", ["--ttl", "8d"], "retention"),
    ],
)
def test_each_violation_kind_refuses_check_and_upload(
    setup: str, args: list[str], limit: str, provider_env, run, home: Path, tmp_path: Path
) -> None:
    emu = provider_env("moonshot")
    config(home, setup)
    name = args[args.index("--name") + 1] if "--name" in args else "doc.txt"
    args = [a for a in args if a not in ("--name", name)]
    docs = [str(write(tmp_path / f"{i}-{name}", f"{i}" * 10)) for i in range(3)]  # three different contents
    result = run("check", *docs, "-p", "moonshot", "--json", *args)
    assert result.exit_code == 3, result.stderr
    body = result.json()
    assert body["ok"] is False
    assert limit in [v["limit"] for v in body["violations"]]
    assert all(set(v) == VIOLATION_KEYS for v in body["violations"])

    up = run("upload", *docs, "-p", "moonshot", *args)
    assert up.exit_code == 3
    assert "refused by quota" in up.stderr
    if limit in ("max_files", "max_total_bytes"):
        assert emu.count("POST", "/files") == 2  # the files that fitted went; the third did not
    else:
        assert emu.count("POST", "/files") == 0
    refusals = ledger_rows(home, "SELECT detail FROM events WHERE action = 'refuse'")
    assert refusals and all(limit in [v["limit"] for v in as_json(d)["violations"]] for (d,) in refusals)


@pytest.mark.parametrize(
    ("flavor", "args", "name", "message"),
    [
        ("moonshot", ["--purpose", "assistants"], "doc.txt", "moonshot does not take purpose 'assistants': use one of"),
        ("zai", [], "tool.exe", "zai does not take .exe files: use one of"),
    ],
)
def test_a_purpose_or_format_the_provider_rejects_is_bad_input(
    flavor: str, args: list[str], name: str, message: str, provider_env, run, home: Path, tmp_path: Path
) -> None:
    emu = provider_env(flavor)
    run("usage")  # the ledger exists: nothing must be written to it
    doc = str(write(tmp_path / name, "x"))
    for command in ("check", "upload"):
        result = run(command, doc, "-p", flavor, *args)
        assert result.exit_code == 2, result.stdout + result.stderr
        assert message in result.stderr and "free" not in result.stderr
    assert emu.count("*") == 0 and "refuse" not in [a for (a,) in ledger_rows(home, "SELECT action FROM events")]


def test_an_open_ended_format_list_lets_the_provider_decide(provider_env, run, tmp_path: Path) -> None:
    provider_env("moonshot")  # Moonshot's docs list formats, then "and more"
    result = run("upload", str(write(tmp_path / "notes.rst", "notes")), "-p", "moonshot")
    assert result.exit_code == 0, result.stderr


def test_check_judges_files_together_and_says_what_to_free(provider_env, run, home: Path, tmp_path: Path) -> None:
    provider_env("openai")
    config(home, "[providers.openai]\nmax_files = 4\n")
    olds = [str(write(tmp_path / f"old{i}.txt", "o" * (i + 1))) for i in range(4)]
    assert run("upload", *olds, "-p", "openai", "--concurrency", "1").exit_code == 0
    ledger_sql(home, "UPDATE files SET expires_at = '2020-01-01 00:00:00' WHERE filename = 'old2.txt'")
    new = [str(write(tmp_path / f"new{i}.txt", f"n{i}")) for i in range(2)]
    human = run("check", *new, "-p", "openai")
    assert human.exit_code == 3
    assert "max_files: 4 files held + 2 new > 4 allowed; free 2 file(s)" in human.stdout
    assert "free at least 2 file(s)" in human.stdout
    assert "expired files that could go" in human.stdout and "old2.txt" in human.stdout
    assert "or the oldest files" in human.stdout and "--evict expired|oldest" in human.stdout
    assert "old2.txt, 3 B, uploaded" in human.stdout and "expired 2020-01-01" in human.stdout
    assert "old0.txt, 1 B, uploaded" in human.stdout and ", expires 20" in human.stdout
    body = run("check", *new, "-p", "openai", "--json").json()
    assert body["advice"]["free_files"] == 2
    assert [h["filename"] for h in body["advice"]["expired"]] == ["old2.txt"]
    assert [h["filename"] for h in body["advice"]["oldest"]] == ["old0.txt", "old1.txt"]


def test_ttl_sets_expiry_and_is_sent_where_the_provider_takes_it(provider_env, run, tmp_path: Path) -> None:
    for flavor, fields in [
        ("openai", {"expires_after[anchor]": "created_at", "expires_after[seconds]": "86400"}),
        ("xai", {"expires_after": "86400"}),
        ("moonshot", {}),
    ]:
        emu = provider_env(flavor)
        [record] = run(
            "upload", str(write(tmp_path / f"{flavor}.txt", "t")), "-p", flavor, "--ttl", "1d", "--json"
        ).json()
        created = record["created_at"]
        assert record["expires_at"] > created
        [form] = [r.form for r in emu.requests if r.method == "POST"]
        assert {k: v for k, v in form.items() if k.startswith("expires_after")} == fields, flavor
    # Without --ttl the retention policy (180 days) sets the expiry; it is beyond what OpenAI takes.
    emu = provider_env("openai")
    [record] = run("upload", str(write(tmp_path / "plain.txt", "p")), "-p", "openai", "--json").json()
    assert record["expires_at"][:4] == "2027"
    assert not any(k.startswith("expires_after") for r in emu.requests for k in r.form)


def test_bad_ttl_is_bad_input(provider_env, run, tmp_path: Path) -> None:
    provider_env("openai")
    result = run("upload", str(write(tmp_path / "a.txt", "x")), "-p", "openai", "--ttl", "3 weeks")
    assert result.exit_code == 2 and "not a duration" in result.stderr


def test_retention_zero_keeps_for_ever(provider_env, run, home: Path, tmp_path: Path) -> None:
    provider_env("zai")
    config(home, "[providers.zai]\nretention_days = 0\n")
    [record] = run("upload", str(write(tmp_path / "a.txt", "x")), "-p", "zai", "--json").json()
    assert record["expires_at"] is None
    [record] = run("upload", str(write(tmp_path / "b.txt", "y")), "-p", "zai", "--ttl", "900d", "--json").json()
    assert record["expires_at"] is not None


def test_a_full_account_refuses_then_evicts_expired(provider_env, run, home: Path, tmp_path: Path) -> None:
    emu = provider_env("xai")
    config(home, "[providers.xai]\nmax_files = 3\n")
    olds = run("upload", *[str(write(tmp_path / f"o{i}.txt", f"{i}")) for i in range(3)], "-p", "xai", "--json").json()
    ledger_sql(home, "UPDATE files SET expires_at = '2020-01-01 00:00:00' WHERE filename = 'o1.txt'")
    new = str(write(tmp_path / "new.txt", "new"))
    refused = run("upload", new, "-p", "xai")
    assert refused.exit_code == 3 and "--evict" in refused.stderr
    result = run("upload", new, "-p", "xai", "--evict", "expired", "--json")
    assert result.exit_code == 0, result.stderr
    gone = next(r["id"] for r in olds if r["filename"] == "o1.txt")
    assert f"evicted {gone} (o1.txt" in result.stderr
    with emu.lock:
        assert gone not in emu.files and len(emu.files) == 3
    assert ledger_rows(home, "SELECT status FROM files WHERE file_id = ?", gone) == [("expired",)]
    assert actions(home).count("evict") == 1
    # Nothing else has expired: --evict expired cannot make more room.
    again = run("upload", str(write(tmp_path / "more.txt", "more")), "-p", "xai", "--evict", "expired")
    assert again.exit_code == 3 and "evicting every expired file would not be enough" in again.stderr


def test_evict_oldest(provider_env, run, home: Path, tmp_path: Path) -> None:
    emu = provider_env("moonshot")
    config(home, "[providers.moonshot]\nmax_files = 2\n")
    first = run("upload", str(write(tmp_path / "first.txt", "1")), "-p", "moonshot", "--json").json()[0]
    run("upload", str(write(tmp_path / "second.txt", "2")), "-p", "moonshot")
    result = run("upload", str(write(tmp_path / "third.txt", "3")), "-p", "moonshot", "--evict", "oldest")
    assert result.exit_code == 0, result.stderr
    assert f"evicted {first['id']} (first.txt" in result.stderr
    with emu.lock:
        assert sorted(f.filename for f in emu.files.values()) == ["second.txt", "third.txt"]
    assert ledger_rows(home, "SELECT status FROM files WHERE file_id = ?", first["id"]) == [("deleted",)]


def test_an_eviction_the_provider_refuses_restores_the_file(provider_env, run, home: Path, tmp_path: Path) -> None:
    emu = provider_env("openai")
    config(home, "[providers.openai]\nmax_files = 1\n[http]\nbackoff_seconds = 0.01\n")
    first = run("upload", str(write(tmp_path / "first.txt", "1")), "-p", "openai", "--json").json()[0]
    emu.inject("DELETE", "/files", status=403, body=emu.error_body(403, "not allowed"))
    result = run("upload", str(write(tmp_path / "second.txt", "2")), "-p", "openai", "--evict", "oldest")
    assert result.exit_code == 1 and "could not evict" in result.stderr and "not allowed" in result.stderr
    assert ledger_rows(home, "SELECT filename, status FROM files ORDER BY id") == [
        ("first.txt", "active"),
        ("second.txt", "failed"),
    ]
    assert first["id"] in emu.files and emu.count("POST", "/files") == 1
    assert "evict_failed" in actions(home)


def test_an_identical_file_is_reused_unless_forced(provider_env, run, home: Path, tmp_path: Path) -> None:
    emu = provider_env("zai")
    doc = str(write(tmp_path / "same.txt", "identical content"))
    first = run("upload", doc, "-p", "zai", "--json").json()[0]
    again = run("upload", doc, "-p", "zai", "--json").json()[0]
    assert again["id"] == first["id"] and again["reused"] is True and first["reused"] is False
    assert emu.count("POST", "/files") == 1
    assert "reuse" in actions(home)
    check = run("check", doc, "-p", "zai", "--json").json()
    assert check["requested"]["files"] == 0 and [r["id"] for r in check["reused"]] == [first["id"]]
    other_purpose = run("upload", doc, "-p", "zai", "--purpose", "file-extract", "--json").json()[0]
    assert other_purpose["id"] != first["id"]
    forced = run("upload", doc, "-p", "zai", "--force", "--json").json()[0]
    assert forced["id"] != first["id"] and forced["reused"] is False
    assert emu.count("POST", "/files") == 3
    # same size, other content: not a duplicate
    different = run("upload", str(write(tmp_path / "same2.txt", "identical CONTENT")), "-p", "zai", "--json")
    assert different.json()[0]["reused"] is False


def test_usage_counts_expired_files_the_provider_still_holds(provider_env, run, home: Path, tmp_path: Path) -> None:
    provider_env("moonshot")
    run("upload", str(write(tmp_path / "a.txt", "abc")), "-p", "moonshot")
    ledger_sql(home, "UPDATE files SET expires_at = '2020-01-01 00:00:00'")
    [usage] = run("usage", "--json", "-p", "moonshot").json()
    assert (usage["files"], usage["bytes"]) == (1, 3)


def test_library_check_and_refusal(provider_env, home: Path, tmp_path: Path) -> None:
    provider_env("openai")
    config(home, '[accounts.small]\nprovider = "openai"\napi_key_env = "OPENAI_API_KEY"\nmax_files = 1\n')
    doc, doc2 = write(tmp_path / "a.txt", "a"), write(tmp_path / "b.txt", "b")
    with Keeper() as keeper:
        assert keeper.check([doc, doc2], account="small").violations[0].limit == "max_files"
        keeper.upload_files([doc], account="small")
        with pytest.raises(QuotaExceeded) as info:
            keeper.upload_files([doc2], account="small")
        assert info.value.exit_code == 3 and info.value.violations[0].limit == "max_files"


def test_check_imports_neither_httpx_nor_alembic(provider_env, run, tmp_path: Path, home: Path) -> None:
    provider_env("moonshot")
    doc = str(write(tmp_path / "a.txt", "x"))
    assert run("check", doc, "-p", "moonshot").exit_code == 0  # the ledger exists now
    code = (
        "import sys\nfrom filekeeper.cli import cli\n"
        f"try:\n    cli(['check', {doc!r}, '-p', 'moonshot'])\nexcept SystemExit as e:\n    code = e.code\n"
        "print(code, sorted({'httpx', 'alembic', 'sqlalchemy.orm'} & set(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "0 []"


@pytest.mark.parametrize(
    ("processes", "per_process", "limit", "sizes"),
    [(8, 3, 12, "alike"), (16, 4, 20, "alike"), (16, 4, 20, "distinct")],
)
def test_concurrent_uploads_never_oversell_the_quota(
    processes: int, per_process: int, limit: int, sizes: str, home: Path, emulators, tmp_path: Path
) -> None:
    """8 processes, 24 files, max_files = 12 (and 16 processes, 64 uploads, max_files = 20):
    exactly the limit lands, as many active rows, and every other file is refused. Files of one
    size are hashed first (one may be a copy of another); files of sizes all their own are not, and
    take the quick path, the room tested by the database itself (upload._reserve_first: on
    PostgreSQL the row written before the account is locked, and the commit in the same round trip)."""
    emu = emulators("openai")
    config(home, f"[providers.openai]\nmax_files = {limit}\n")
    env = {"FILEKEEPER_HOME": str(home), KEY_VARS["openai"]: SECRET, URL_VARS["openai"]: emu.url}
    subprocess.run(
        [sys.executable, "-m", "filekeeper", "db", "upgrade"], env={**_env(), **env}, check=True, capture_output=True
    )
    procs = []
    for p in range(processes):
        paths = []
        for i in range(per_process):
            pad = "." * (p * per_process + i) if sizes == "distinct" else ""
            paths.append(str(write(tmp_path / f"p{p}" / f"f{i}.txt", f"process {p:02} file {i}{pad}")))
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "filekeeper", "upload", *paths, "-p", "openai", "--json"],
                env={**_env(), **env},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outputs = [(p.wait(timeout=120), *p.communicate()) for p in procs]
    assert all(out.startswith("[") for _, out, _ in outputs), [(c, e) for c, o, e in outputs if not o.startswith("[")]
    results = [r for _, out, _ in outputs for r in json.loads(out)]
    uploaded = [r for r in results if r["outcome"] == "uploaded"]
    refused = processes * per_process - limit
    assert len(results) == processes * per_process  # one result per path, whatever became of it
    from collections import Counter

    assert sum(r["outcome"] == "refused" for r in results) == refused, Counter(r["outcome"] for r in results)
    assert len(uploaded) == limit
    with emu.lock:
        assert len(emu.files) == limit and sorted(emu.files) == sorted(r["id"] for r in uploaded)
    assert ledger_rows(home, "SELECT count(*) FROM files WHERE status = 'active'") == [(limit,)]
    assert ledger_rows(home, "SELECT count(*) FROM events WHERE action = 'refuse'") == [(refused,)]
    # A reservation written first and rolled back once it did not fit leaves nothing behind.
    assert ledger_rows(home, "SELECT count(*) FROM events WHERE action = 'reserve'") == [(limit,)]
    assert ledger_rows(home, "SELECT count(*) FROM files") == [(limit,)]
    assert sum(err.count("refused by quota") for _, _, err in outputs) == refused
    assert all(code in (0, 3) for code, _, _ in outputs)


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.endswith(("_API_KEY", "_BASE_URL"))}


def test_when_the_kth_eviction_fails_only_the_files_not_yet_deleted_are_restored(
    provider_env, run, home: Path, tmp_path: Path
) -> None:
    emu = provider_env("openai")
    config(home, "[providers.openai]\nmax_total_bytes = 30\n[http]\nbackoff_seconds = 0.01\n")
    olds = run(
        "upload",
        *[str(write(tmp_path / f"old{i}.txt", f"{i}" * 10)) for i in range(3)],
        "-p",
        "openai",
        "--json",
        "--concurrency",
        "1",
    ).json()
    first, second, third = sorted(olds, key=lambda r: r["ledger_id"])
    # The new file needs two of the three gone; the provider deletes the first and refuses the second.
    emu.inject("DELETE", f"/files/{second['id']}", status=403, body=emu.error_body(403, "not yours"))
    result = run("upload", str(write(tmp_path / "big.txt", "b" * 20)), "-p", "openai", "--evict", "oldest")
    assert result.exit_code == 1 and "could not evict" in result.stderr
    assert f"evicted {first['id']}" in result.stderr  # it is gone at the provider: say so
    with emu.lock:
        assert set(emu.files) == {second["id"], third["id"]}
    statuses = dict(ledger_rows(home, "SELECT filename, status FROM files"))
    assert statuses == {"old0.txt": "deleted", "old1.txt": "active", "old2.txt": "active", "big.txt": "failed"}
    restored = ledger_rows(home, "SELECT file_id FROM events WHERE action = 'evict_failed'")
    assert restored == [(second["id"],)]


def test_identical_files_in_one_upload_are_sent_once_and_reused_in_order(
    provider_env, run, home: Path, tmp_path: Path
) -> None:
    emu = provider_env("moonshot")
    same = [str(write(tmp_path / f"copy{i}.txt", "the same bytes")) for i in range(3)]
    other = str(write(tmp_path / "other.txt", "other bytes!!!"))  # same size, other content
    result = run("upload", *same, other, "-p", "moonshot", "--json", "--concurrency", "4")
    assert result.exit_code == 0, result.stderr
    records = result.json()
    assert [r["reused"] for r in records] == [False, True, True, False]
    assert records[0]["id"] == records[1]["id"] == records[2]["id"] != records[3]["id"]
    assert emu.count("POST", "/files") == 2
    assert actions(home).count("reuse") == 2
    check = run("check", *same, other, "-p", "moonshot", "--force", "--json").json()
    assert check["requested"]["files"] == 4  # --force: every path is sent
    fresh = [str(write(tmp_path / f"new{i}.txt", "new and twice")) for i in range(2)]
    check = run("check", *fresh, "-p", "moonshot", "--json").json()
    assert check["requested"]["files"] == 1 and check["twins"] == ["new1.txt"]


class _RolledBack(Exception):
    pass


def test_the_databases_own_room_test_lets_through_exactly_what_the_policy_does(home: Path, provider_env) -> None:
    """A file with nothing to look for is reserved with the quota tested by the database itself
    (Writer.reserve_if_room; upload._reserve_first): for every bound on either side of what is
    held (the account's and the purpose's, files and bytes, and none), it must take what
    room_violations takes and refuse what it refuses. A row the provider has deleted by itself
    holds nothing in either. A reservation made is committed with its test, its event naming its
    row; one refused leaves nothing."""
    from datetime import UTC, datetime, timedelta

    from filekeeper.ledger import open_ledger
    from filekeeper.profiles import Limits, PurposeLimits
    from filekeeper.quota import Request, room_for, room_violations
    from filekeeper.records import PendingRow

    provider_env("openai")
    now = datetime.now(UTC)
    with Keeper() as keeper:
        a = keeper.ledger.ensure_account(keeper.account(provider="openai"))
        settings = keeper.settings
    ledger = open_ledger(settings)
    try:
        held = [("assistants", 100, None)] * 3 + [("batch", 25, None)] * 2 + [("batch", 7, now - timedelta(hours=1))]
        for i, (purpose, size, lapsed) in enumerate(held):
            with ledger.write() as w:
                w.reserve(a, Request(f"held{i}", size, purpose), PendingRow("a", "openai", None, now, None, lapsed))
        usage = ledger.usage([a], now=now)[a]
        assert (usage.files, usage.bytes) == (5, 350)  # the lapsed row counts nowhere
        seen = {True: 0, False: 0}
        for purpose, size in (("assistants", 100), ("batch", 100)):
            mine = usage.purpose(purpose)
            request = Request("new", size, purpose)
            for max_files in (None, usage.files, usage.files + 1):
                for max_bytes in (None, usage.bytes + size - 1, usage.bytes + size):
                    for p_files in (None, mine.files, mine.files + 1):
                        for p_bytes in (None, mine.bytes + size - 1, mine.bytes + size):
                            scoped = {purpose: PurposeLimits(p_files, p_bytes), "other": PurposeLimits(0, 0)}
                            limits = Limits(max_files, max_bytes, None, 0, scoped)
                            fits = not room_violations(limits, usage, [request])
                            row = PendingRow("a", "openai", None, now, None)
                            ready = ledger.ready_reservation(a, request, row, room_for(limits, purpose))
                            try:
                                with ledger.write() as w:
                                    made = w.reserve_if_room(ready)
                                    raise _RolledBack
                            except _RolledBack:
                                pass
                            assert (made is not None) == fits, (purpose, limits)
                            seen[fits] += 1
                            made_rows = ledger_rows(
                                home,
                                "SELECT f.id, e.file_pk FROM files f LEFT JOIN events e ON e.file_pk = f.id "
                                "WHERE f.filename = 'new'",
                            )
                            assert made_rows == ([(made.ledger_id, made.ledger_id)] if made is not None else [])
                            if made is not None:  # taken out again: every case starts from the same usage
                                ledger_sql(home, "DELETE FROM events WHERE file_pk = ?", made.ledger_id)
                                ledger_sql(home, "DELETE FROM files WHERE id = ?", made.ledger_id)
        assert seen[True] and seen[False]
        assert ledger_rows(home, "SELECT count(*) FROM events WHERE action = 'reserve'") == [(len(held),)]
    finally:
        ledger.close()


def test_a_limit_beyond_what_a_database_integer_holds_is_no_limit(
    provider_env, run, home: Path, tmp_path: Path
) -> None:
    """A huge number as a way to say 'no limit' (10^19 bytes, 10^19 files, for the account and a
    purpose): `check` found it fits, and the upload failed binding it for the database's own room
    test (SQLite: OverflowError, PostgreSQL: bigint out of range)."""
    emu = provider_env("openai")
    config(
        home,
        '[providers.openai]\nmax_total_bytes = "10000000TB"\nmax_files = 10000000000000000000\n'
        '[providers.openai.purpose_limits.assistants]\nmax_total_bytes = "10000000TB"\n'
        "max_files = 10000000000000000000\n",
    )
    doc = str(write(tmp_path / "a.txt", "hello"))
    assert run("check", doc, "-p", "openai").exit_code == 0
    result = run("upload", doc, "-p", "openai")
    assert result.exit_code == 0, result.stderr
    assert emu.count("POST", "/files") == 1
    assert ledger_rows(home, "SELECT status FROM files") == [("active",)]
