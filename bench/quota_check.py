"""Latency of an in-process quota check on a large ledger.

    python bench/quota_check.py [--rows 1000000] [--accounts 50] [--active 1000] [--calls 400]
                                [--database-url URL]

Builds a ledger of ``--rows`` file rows (mostly deleted history; ``--active`` active files per
account over ``--accounts`` accounts), then times ``Keeper.check`` of one small file against a
random account: median and 95th percentile, over ``--calls`` calls after a warm-up.
SQLite in a temporary FILEKEEPER_HOME by default; ``--database-url`` for another database.
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
    with ledger.transaction(write=True) as conn:
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
                with ledger.transaction(write=True) as conn:
                    conn.execute(insert(files), batch)
                batch.clear()
    if batch:
        with ledger.transaction(write=True) as conn:
            conn.execute(insert(files), batch)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--accounts", type=int, default=50)
    parser.add_argument("--active", type=int, default=1000)
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--database-url")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        os.environ["FILEKEEPER_HOME"] = str(home)
        if args.database_url:
            os.environ["FILEKEEPER_DATABASE_URL"] = args.database_url
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
