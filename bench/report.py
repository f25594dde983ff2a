"""`filekeeper report --format csv` over a large audit log: time and peak memory.

    python bench/report.py [--events 1000000]

Builds a ledger with ``--events`` events (and one file row per ten events), then runs the CLI
in a fresh process writing the CSV to a file; prints the wall time and the child's peak RSS, and
the same for a tenth of the events, to show that memory does not grow with the event count.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def build(home: Path, n_events: int) -> None:
    os.environ["FILEKEEPER_HOME"] = str(home)
    from sqlalchemy import insert

    from filekeeper.config import load_settings
    from filekeeper.ledger import open_ledger
    from filekeeper.schema import accounts, events, files

    ledger = open_ledger(load_settings())
    start = datetime.now(UTC) - timedelta(days=30)
    with ledger.engine.begin() as conn:
        conn.execute(
            insert(accounts).values(
                id=1,
                name="moonshot",
                provider="moonshot",
                base_url="http://x",
                key_fingerprint="sha256:0",
                created_at=start,
            )
        )
    actions = ("reserve", "upload", "delete", "reconcile_delete", "refuse")
    for base in range(0, n_events, 50_000):
        file_rows, event_rows = [], []
        for i in range(base, min(base + 50_000, n_events)):
            at = start + timedelta(seconds=i * 2)
            if i % 10 == 0:
                file_rows.append(
                    {
                        "id": i // 10 + 1,
                        "account_id": 1,
                        "file_id": f"f{i // 10:09d}",
                        "filename": f'report, "q{i}".pdf',
                        "bytes": 1000 + i,
                        "sha256": None,
                        "purpose": "file-extract",
                        "status": "deleted",
                        "created_at": at,
                    }
                )
            event_rows.append(
                {
                    "at": at,
                    "account_id": 1,
                    "file_pk": i // 10 + 1,
                    "file_id": None,
                    "action": actions[i % 5],
                    "actor": "ci@runner-7",
                    "pid": 4242,
                    "detail": {"bytes": 1000 + i, "attempt": 1},
                }
            )
        with ledger.engine.begin() as conn:
            if file_rows:
                conn.execute(insert(files), file_rows)
            conn.execute(insert(events), event_rows)
    ledger.close()


def measure(home: Path) -> tuple[float, float, int]:
    out = home / "events.csv"
    env = {**os.environ, "FILEKEEPER_HOME": str(home)}
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "filekeeper", "report", "--format", "csv", "--since", "2000-01-01", "-o", str(out)],
        env=env,
        cwd=ROOT,
        stderr=subprocess.DEVNULL,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    assert os.waitstatus_to_exitcode(status) == 0
    with out.open("rb") as f:
        rows = sum(1 for _ in f)
    return seconds, usage.ru_maxrss / 1024, rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    args = parser.parse_args()
    for n in (args.events // 10, args.events):
        with tempfile.TemporaryDirectory() as tmp:
            home = Path(tmp)
            t0 = time.perf_counter()
            build(home, n)
            built = time.perf_counter() - t0
            seconds, rss, lines = measure(home)
            print(
                f"report --format csv over {n:>9,} events (ledger built in {built:.0f} s): {seconds:5.1f} s, "
                f"peak RSS {rss:5.1f} MiB, {lines - 1:,} rows"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
