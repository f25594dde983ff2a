"""Quota check latency on a large ledger, and reservations per second from many processes.

    python bench/quota_check.py [--rows 1000000] [--accounts 50] [--active 1000] [--calls 400]
                                [--reservers 8] [--reservations 250]
                                [--postgres postgresql+psycopg://postgres@127.0.0.1:5432/test]

For SQLite (a temporary FILEKEEPER_HOME) and PostgreSQL (a database created on that server for
the run, and dropped after): builds a ledger of ``--rows`` file rows (mostly deleted history;
``--active`` active files per account over ``--accounts`` accounts), times ``Keeper.check`` of one
small file against a random account (median and 95th percentile over ``--calls`` calls after a
warm-up), then has ``--reservers`` processes at once each make ``--reservations`` reservations
(the quota check and the pending row, in one locked transaction) on one account.
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
        for i in range(n):
            job = UploadJob(acct, account_id, Bytes(f"r-{pid}-{i}.pdf"), "assistants")  # type: ignore[arg-type]
            r = reserve(keeper.ledger, job, None)
            assert r.record is not None, r.violations


def reservations_per_second(args: argparse.Namespace) -> float:
    import subprocess

    env = {**os.environ}
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen([sys.executable, __file__, "--reserver", str(args.reservations)], env=env)
        for _ in range(args.reservers)
    ]
    assert all(p.wait() == 0 for p in procs)
    return args.reservers * args.reservations / (time.perf_counter() - t0)


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
    parser.add_argument("--reservations", type=int, default=250)
    parser.add_argument(
        "--postgres",
        default="postgresql+psycopg://postgres@127.0.0.1:5432/test",
        help="a PostgreSQL server to bench against too ('' to skip)",
    )
    parser.add_argument("--reserver", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reserver:
        reserver(args.reserver)
        return 0
    for database in ("sqlite", "postgresql") if args.postgres else ("sqlite",):
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
                keeper.check([sample], account=f"acct{rng.randrange(args.accounts)}")
            timings = []
            for _ in range(args.calls):
                name = f"acct{rng.randrange(args.accounts)}"
                t0 = time.perf_counter()
                result = keeper.check([sample], account=name)
                timings.append(time.perf_counter() - t0)
                assert result.ok and result.usage.files == args.active
            engine = keeper.ledger.engine.url.get_backend_name()
        timings.sort()
        median = statistics.median(timings) * 1000
        p95 = timings[int(len(timings) * 0.95)] * 1000
        print(
            f"quota check on {engine}: {args.rows:,} file rows ({args.active:,} active per account, "
            f"{args.accounts} accounts), built in {seconds:.1f} s"
        )
        print(f"  in-process check: median {median:.2f} ms, p95 {p95:.2f} ms over {args.calls} calls")
        rate = reservations_per_second(args)
        print(
            f"  reservations from {args.reservers} processes at once: {rate:,.0f}/s "
            f"({args.reservers} x {args.reservations}, one account)"
        )


if __name__ == "__main__":
    raise SystemExit(main())
