"""reconcile --apply against the plain loop people write with the official OpenAI SDK.

    python bench/reconcile.py [--files 5000] [--orphans 1000] [--latency 0.05] [--page-size 100]
                              [--rss-files 100000]

Each contender gets a fresh emulator (its own process) holding ``--files`` files, ``--orphans`` of
which are unknown to the ledger, every request delayed by ``--latency`` seconds:

- filekeeper: `filekeeper reconcile --provider openai --apply --min-age 0` (a fresh process);
- the SDK loop: list everything with the auto-pager, then delete what is not in our records,
  one by one.

Then the peak RSS of a `filekeeper reconcile` (plan) over ``--rss-files`` remote files (10% orphans),
measured on the child process.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
from emulator_process import EmulatorProcess

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
KEY = "sk-bench-reconcile"


class Emulator(EmulatorProcess):
    def __init__(self, files: int, latency: float, page_size: int) -> None:
        super().__init__(
            "openai",
            "--api-key",
            KEY,
            "--seed-files",
            str(files),
            "--latency",
            str(latency),
            "--page-size",
            str(page_size),
        )

    def ids(self) -> list[str]:
        return [f["id"] for f in self.files()]

    def files(self) -> list[dict[str, object]]:
        out: list[dict[str, object]] = []
        after = None
        with httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as c:
            while True:
                body = c.get("/files", params={"limit": 10000, **({"after": after} if after else {})}).json()
                out += body["data"]
                if not body.get("has_more"):
                    return out
                after = body["data"][-1]["id"]


def make_ledger(home: Path, url: str, known: list[dict[str, object]]) -> dict[str, str]:
    """A ledger that knows ``known`` (remote file objects) as active files of the openai account."""
    env = {**os.environ, "FILEKEEPER_HOME": str(home), "OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": url}
    subprocess.run(
        [sys.executable, "-m", "filekeeper", "db", "upgrade"], env=env, check=True, capture_output=True, cwd=ROOT
    )
    os.environ.update({"FILEKEEPER_HOME": str(home), "OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": url})
    from sqlalchemy import insert

    from filekeeper import Keeper
    from filekeeper.schema import files

    with Keeper() as keeper:
        account_id = keeper.ledger.ensure_account(keeper.account(provider="openai"))
        now = datetime.now(UTC)
        with keeper.ledger.engine.begin() as conn:
            for start in range(0, len(known), 10_000):
                conn.execute(
                    insert(files),
                    [
                        {
                            "account_id": account_id,
                            "file_id": f["id"],
                            "filename": f["filename"],
                            "bytes": f["bytes"],
                            "purpose": "assistants",
                            "status": "active",
                            "created_at": now,
                            "sha256": None,
                        }
                        for f in known[start : start + 10_000]
                    ],
                )
    return env


def run_filekeeper(args: argparse.Namespace) -> tuple[float, int]:
    emu = Emulator(args.files, args.latency, args.page_size)
    try:
        remote = emu.files()
        with tempfile.TemporaryDirectory() as tmp:
            env = make_ledger(Path(tmp), emu.url, remote[args.orphans :])
            t0 = time.perf_counter()
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "filekeeper",
                    "reconcile",
                    "--provider",
                    "openai",
                    "--apply",
                    "--min-age",
                    "0",
                    "--max-delete",
                    str(args.orphans),
                ],
                env=env,
                check=True,
                cwd=ROOT,
                capture_output=True,
            )
            seconds = time.perf_counter() - t0
        left = len(emu.ids())
    finally:
        emu.close()
    return seconds, args.files - left


def run_sdk(args: argparse.Namespace) -> tuple[float, int]:
    from openai import OpenAI

    emu = Emulator(args.files, args.latency, args.page_size)
    try:
        ids = emu.ids()
        known = set(ids[args.orphans :])
        t0 = time.perf_counter()
        client = OpenAI(api_key=KEY, base_url=emu.url)
        listed = [f.id for f in client.files.list()]
        deleted = 0
        for file_id in listed:
            if file_id not in known:
                client.files.delete(file_id)
                deleted += 1
        seconds = time.perf_counter() - t0
    finally:
        emu.close()
    return seconds, deleted


def peak_rss(args: argparse.Namespace) -> float:
    emu = Emulator(args.rss_files, 0.0, args.page_size)
    try:
        remote = emu.files()
        with tempfile.TemporaryDirectory() as tmp:
            env = make_ledger(Path(tmp), emu.url, remote[args.rss_files // 10 :])
            proc = subprocess.Popen(
                [sys.executable, "-m", "filekeeper", "reconcile", "--provider", "openai"],
                env=env,
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            assert proc.returncode == 0, proc.returncode
    finally:
        emu.close()
    return usage.ru_maxrss / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--orphans", type=int, default=1000)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--page-size", type=int, default=100)
    parser.add_argument("--rss-files", type=int, default=100_000)
    parser.add_argument("--skip-sdk", action="store_true")
    args = parser.parse_args()
    print(
        f"{args.files:,} remote files in pages of {args.page_size}, {args.orphans:,} orphans, "
        f"{args.latency * 1000:.0f} ms per request"
    )
    ours, deleted = run_filekeeper(args)
    print(f"  filekeeper reconcile --apply   {ours:7.1f} s   deleted {deleted:,}")
    if not args.skip_sdk:
        import openai

        sdk, sdk_deleted = run_sdk(args)
        print(f"  OpenAI SDK {openai.__version__:<8} loop      {sdk:7.1f} s   deleted {sdk_deleted:,}")
        print(f"  speed-up {sdk / ours:.1f}x")
    if args.rss_files:
        print(
            f"peak RSS of `filekeeper reconcile` (plan) over {args.rss_files:,} remote files, "
            f"{args.rss_files // 10:,} orphans: {peak_rss(args):.0f} MiB"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
