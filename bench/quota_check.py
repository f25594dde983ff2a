"""Quota check latency on a large ledger, and reservations per second from many processes.

    python bench/quota_check.py [--rows 1000000] [--accounts 50] [--active 1000] [--calls 400]
                                [--reservers 8] [--reservations 500] [--rounds 3] [--skip-sqlite]
                                [--postgres postgresql+psycopg://postgres@127.0.0.1:5432/test]

For SQLite (a temporary FILEKEEPER_HOME) and PostgreSQL (a database created on that server for
the run, and dropped after): builds a ledger of ``--rows`` file rows (mostly deleted history;
``--active`` active files per account over ``--accounts`` accounts), times ``Keeper.check`` of one
small file against a random account (median and 95th percentile over ``--calls`` calls after a
warm-up), then has ``--reservers`` processes at once each make ``--reservations`` reservations
(the quota check and the pending row, in one locked transaction) on one account.

Each is set against its floor on the same ledger in the same run:

- the check against one indexed aggregate query of that account's live files (count and bytes),
  through the same engine: the least work a check can do;
- the reservations against as many bare transactions from as many processes, through the driver
  itself (sqlite3, psycopg): lock the account row (``BEGIN IMMEDIATE`` on SQLite, ``SELECT ... FOR
  UPDATE`` on PostgreSQL), insert one row, commit.

The reservations and the floor take turns, ``--rounds`` times each (this machine's load comes and
goes; each ratio is of the two medians). A third contender shows how much of the distance is the
work a reservation must do beyond the floor's: the statements a reservation makes, in its order,
written straight against the driver with no filekeeper code around them, the triggers keeping the
sums (SQLite: the lock, the account's usage sums, the row, its audit event; PostgreSQL: the row
and its event, plain index scans, the lock, a fold if due, the test of the room and the commit, in
one pipeline).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def build(keeper: object, args: argparse.Namespace) -> float:
    from sqlalchemy import insert

    from filekeeper.schema import accounts, files

    ledger = keeper.ledger  # type: ignore[attr-defined]
    rng = random.Random(7)
    now = datetime.now(UTC)
    started = time.perf_counter()
    per_account = args.rows // args.accounts
    with ledger.engine.begin() as conn:
        conn.execute(
            insert(accounts),
            [
                {
                    "id": a + 1,
                    "name": f"acct{a}",
                    "provider": "openai",
                    "base_url": "http://bench",
                    "key_fingerprint": "sha256:bench",
                    "created_at": now,
                }
                for a in range(args.accounts)
            ],
        )
    batch: list[dict[str, object]] = []
    for a in range(args.accounts):
        for i in range(per_account):
            active = i < args.active
            created = now - timedelta(seconds=rng.randrange(180 * 86400))
            batch.append(
                {
                    "account_id": a + 1,
                    "file_id": f"file-{a}-{i}",
                    "filename": f"doc-{i}.pdf",
                    "bytes": rng.randrange(1_000, 5_000_000),
                    "sha256": f"{rng.getrandbits(256):064x}",
                    "purpose": "assistants",
                    "status": "active" if active else "deleted",
                    "created_at": created,
                    "expires_at": created + timedelta(days=180),
                    "deleted_at": None if active else created + timedelta(days=1),
                }
            )
            if len(batch) == 20_000:
                with ledger.engine.begin() as conn:
                    conn.execute(insert(files), batch)
                batch.clear()
    if batch:
        with ledger.engine.begin() as conn:
            conn.execute(insert(files), batch)
    # Rows inserted straight into files left one account_usage row each (the triggers); a ledger
    # that got there through uploads and reconciles would have had them folded as it went.
    with ledger.write() as w:
        for a in range(args.accounts):
            w.fold_usage(a + 1)
    return time.perf_counter() - started


def reserver(n: int) -> None:
    """A child process: ``n`` reservations on acct0, as fast as the ledger allows."""
    from filekeeper import Keeper
    from filekeeper.upload import UploadJob, reserve

    class Bytes:
        """A payload that is only reserved, never sent."""

        def __init__(self, filename: str) -> None:
            self.filename, self.size = filename, 1000

    with Keeper() as keeper:
        acct = keeper.account(account="acct0")
        account_id = keeper.ledger.accounts()["acct0"][0]
        pid = os.getpid()
        _start_together()
        for i in range(n):
            job = UploadJob(acct, account_id, Bytes(f"r-{pid}-{i}.pdf"), "assistants")  # type: ignore[arg-type]
            r = reserve(keeper.ledger, job, None)
            assert r.record is not None, r.violations
    print(time.time(), flush=True)


def _start_together() -> None:
    """Every child starts its work at the moment the parent named (set up first: importing and
    connecting are not what is measured), so the rates compare the work alone."""
    time.sleep(max(0.0, float(os.environ["BENCH_START_AT"]) - time.time()))


def bare_transactions(n: int) -> None:
    """A child process: ``n`` of the least a reservation can be, straight through the driver."""
    url = os.environ.get("FILEKEEPER_DATABASE_URL")
    now = datetime.now(UTC).replace(tzinfo=None)
    pid = os.getpid()
    row = (
        "(account_id, filename, bytes, purpose, status, created_at) VALUES (1, {p}, 1000, 'assistants', 'pending', {p})"
    )
    if url:
        import psycopg

        with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
            _start_together()
            for i in range(n):
                with conn.transaction():
                    conn.execute("SELECT id FROM accounts WHERE id = 1 FOR UPDATE")
                    conn.execute("INSERT INTO files " + row.format(p="%s"), (f"bare-{pid}-{i}.pdf", now))
        print(time.time(), flush=True)
        return
    import sqlite3

    conn = sqlite3.connect(Path(os.environ["FILEKEEPER_HOME"]) / "ledger.db", timeout=30, isolation_level=None)
    conn.execute("PRAGMA synchronous = NORMAL")  # as filekeeper's own connections
    _start_together()
    for i in range(n):
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("SELECT id FROM accounts WHERE id = 1")
        conn.execute("INSERT INTO files " + row.format(p="?"), (f"bare-{pid}-{i}.pdf", now))
        conn.execute("COMMIT")
    conn.close()
    print(time.time(), flush=True)


def same_statements(n: int) -> None:
    """A child process: ``n`` of what a reservation writes, by hand, straight through the driver."""
    url = os.environ.get("FILEKEEPER_DATABASE_URL")
    now = datetime.now(UTC).replace(tzinfo=None)
    pid = os.getpid()
    held = "('active', 'pending', 'unclaimed', 'generated')"
    usage = (
        "SELECT 0, purpose, files, bytes FROM account_usage WHERE account_id = 1 UNION ALL "
        f"SELECT 1, purpose, -count(*), -sum(bytes) FROM files WHERE account_id = 1 AND status IN {held} "
        "AND provider_expires_at <= {p} GROUP BY purpose"
    )
    row = (
        "INSERT INTO files (account_id, filename, bytes, sha256, purpose, status, created_at, expires_at, "
        "provider_expires_at) VALUES (1, {p}, 1000, NULL, 'assistants', 'pending', {p}, NULL, NULL)"
    )
    event = "INSERT INTO events (at, account_id, file_pk, file_id, action, actor, pid, detail) "
    detail = '{{"filename": "{name}", "bytes": 1000, "purpose": "assistants"}}'
    if url:
        import psycopg

        fold = (
            "WITH gone AS (DELETE FROM account_usage WHERE account_id = 1 AND "
            "(SELECT count(*) FROM account_usage WHERE account_id = 1) > 8 RETURNING purpose, files, bytes) "
            "INSERT INTO account_usage (account_id, purpose, files, bytes) "
            "SELECT 1, purpose, sum(files), sum(bytes) FROM gone GROUP BY purpose"
        )
        # No limit is set in this bench: the test a reservation makes is of NULL bounds, as here.
        check = (
            "SELECT CAST(CASE WHEN %s::bigint IS NULL OR coalesce(sum(files), 0) <= %s::bigint "
            "THEN '0' ELSE 'no room' END AS integer) FROM ("
            + usage.format(p="%s").replace("SELECT 0, ", "SELECT ").replace("SELECT 1, ", "SELECT ")
            + ") held"
        )
        with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
            _start_together()
            for i in range(n):
                name = f"same-{pid}-{i}.pdf"
                # As filekeeper does it there: the row and its event first, then plain index
                # scans for the rest (see filekeeper.ledger), the lock, a fold if the usage
                # rows have piled up, the test of the room, and the commit, in one round trip.
                with conn.pipeline():
                    conn.execute(
                        f"WITH r AS ({row.format(p='%s')} RETURNING id) {event} "
                        "SELECT %s, 1, r.id, NULL, 'reserve', 'bench@host', 1, %s::json FROM r",
                        (name, now, now, detail.format(name=name)),
                    )
                    conn.execute(
                        "SELECT set_config('enable_bitmapscan', 'off', true), set_config('enable_seqscan', 'off', true)"
                    )
                    conn.execute("SELECT id FROM accounts WHERE id = 1 FOR NO KEY UPDATE")
                    conn.execute(fold)
                    conn.execute(check, (None, None, now))
                    conn.commit()
        print(time.time(), flush=True)
        return
    import sqlite3

    conn = sqlite3.connect(Path(os.environ["FILEKEEPER_HOME"]) / "ledger.db", timeout=30, isolation_level=None)
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")
    _start_together()
    for i in range(n):
        name = f"same-{pid}-{i}.pdf"
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(usage.format(p="?"), (now,)).fetchall()
        (file_pk,) = conn.execute(row.format(p="?") + " RETURNING id", (name, now)).fetchone()
        conn.execute(
            event + "VALUES (?, 1, ?, NULL, 'reserve', 'bench@host', 1, ?)", (now, file_pk, detail.format(name=name))
        )
        conn.execute("COMMIT")
    conn.close()
    print(time.time(), flush=True)


def per_second(args: argparse.Namespace, role: str) -> float:
    """``--reservers`` processes at once, each doing ``--reservations`` of ``role``."""
    import subprocess

    start = time.time() + 3.0  # time enough for every child to import and connect
    env = {**os.environ, "BENCH_START_AT": str(start)}
    procs = [
        subprocess.Popen([sys.executable, __file__, role, str(args.reservations)], env=env, stdout=subprocess.PIPE)
        for _ in range(args.reservers)
    ]
    ends = [float(p.communicate()[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    return args.reservers * args.reservations / (max(ends) - start)


def floor_query(keeper: object, account: str) -> float:
    """Seconds for the least a check can do: one indexed aggregate of the account's live files."""
    from sqlalchemy import func, select

    from filekeeper.schema import HELD, accounts, files

    ledger = keeper.ledger  # type: ignore[attr-defined]
    now = datetime.now(UTC)
    query = select(func.count(), func.coalesce(func.sum(files.c.bytes), 0)).where(
        files.c.account_id == select(accounts.c.id).where(accounts.c.name == account).scalar_subquery(),
        files.c.status.in_(HELD),
        files.c.provider_expires_at.is_(None) | (files.c.provider_expires_at > now),
    )
    t0 = time.perf_counter()
    with ledger.engine.connect() as conn:
        conn.execute(query).one()
    return time.perf_counter() - t0


def fresh_postgres(url: str) -> tuple[str, object]:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    name = f"filekeeper_bench_{os.getpid()}"
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    return make_url(url).set(database=name).render_as_string(hide_password=False), (admin, name)


def drop_postgres(handle: object) -> None:
    from sqlalchemy import text

    admin, name = handle  # type: ignore[misc]
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--accounts", type=int, default=50)
    parser.add_argument("--active", type=int, default=1000)
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--reservers", type=int, default=8)
    parser.add_argument("--reservations", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--postgres",
        default="postgresql+psycopg://postgres@127.0.0.1:5432/test",
        help="a PostgreSQL server to bench against too ('' to skip)",
    )
    parser.add_argument("--skip-sqlite", action="store_true", help="bench PostgreSQL only")
    parser.add_argument("--reserver", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--bare", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--same", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reserver:
        reserver(args.reserver)
        return 0
    if args.bare:
        bare_transactions(args.bare)
        return 0
    if args.same:
        same_statements(args.same)
        return 0
    databases = ("sqlite", "postgresql") if args.postgres else ("sqlite",)
    for database in databases[1:] if args.skip_sqlite else databases:
        handle = None
        if database == "postgresql":
            url, handle = fresh_postgres(args.postgres)
            os.environ["FILEKEEPER_DATABASE_URL"] = url
        try:
            bench(args)
        finally:
            os.environ.pop("FILEKEEPER_DATABASE_URL", None)
            if handle is not None:
                drop_postgres(handle)
    return 0


def bench(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        os.environ["FILEKEEPER_HOME"] = str(home)
        (home / "config.toml").write_text(
            "".join(
                f'[accounts.acct{a}]\nprovider = "openai"\napi_key_env = "BENCH_KEY"\n' for a in range(args.accounts)
            )
        )
        sample = home / "sample.txt"
        sample.write_bytes(b"x" * 777)

        from filekeeper import Keeper

        with Keeper() as keeper:
            seconds = build(keeper, args)
            rng = random.Random(11)
            for _ in range(20):  # warm-up: connection pool, statement caches
                name = f"acct{rng.randrange(args.accounts)}"
                keeper.check([sample], account=name)
                floor_query(keeper, name)
            timings, floors = [], []
            for _ in range(args.calls):
                # Interleaved, so that whatever else the machine does falls on both alike.
                name = f"acct{rng.randrange(args.accounts)}"
                t0 = time.perf_counter()
                result = keeper.check([sample], account=name)
                timings.append(time.perf_counter() - t0)
                assert result.ok and result.usage.files == args.active
                floors.append(floor_query(keeper, name))
            engine = keeper.ledger.engine.url.get_backend_name()
        timings.sort()
        median = statistics.median(timings) * 1000
        p95 = timings[int(len(timings) * 0.95)] * 1000
        floor = statistics.median(floors) * 1000
        print(
            f"quota check on {engine}: {args.rows:,} file rows ({args.active:,} active per account, "
            f"{args.accounts} accounts), built in {seconds:.1f} s"
        )
        print(f"  in-process check: median {median:.2f} ms, p95 {p95:.2f} ms over {args.calls} calls")
        print(f"  floor, one indexed aggregate query: median {floor:.2f} ms; check / floor = {median / floor:.2f}x")
        rates: dict[str, list[float]] = {"--reserver": [], "--bare": [], "--same": []}
        for _ in range(args.rounds):
            for role, seen in rates.items():
                seen.append(per_second(args, role))
        rate, bare, same = (statistics.median(rates[r]) for r in ("--reserver", "--bare", "--same"))
        spread = sorted(r / b for r, b in zip(rates["--reserver"], rates["--bare"], strict=True))
        driver = "psycopg" if engine == "postgresql" else "sqlite3"
        print(
            f"  reservations from {args.reservers} processes at once: {rate:,.0f}/s "
            f"({args.reservers} x {args.reservations}, one account; median of {args.rounds} rounds)"
        )
        print(
            f"  floor, bare lock-and-insert transactions ({driver}): {bare:,.0f}/s; "
            f"reservations / floor = {rate / bare:.2f}x (rounds: {', '.join(f'{x:.2f}' for x in spread)})"
        )
        print(
            f"  a reservation's own statements by hand ({driver}): {same:,.0f}/s = {same / bare:.2f}x the floor; "
            f"reservations / these = {rate / same:.2f}x"
        )


if __name__ == "__main__":
    raise SystemExit(main())
