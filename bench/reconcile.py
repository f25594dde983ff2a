"""reconcile --apply against the plain loop people write with the official OpenAI SDK and
against its floor; then a reconcile plan at 100,000 and 1,000,000 remote files.

    python bench/reconcile.py [--files 5000] [--orphans 1000] [--latency 0.05] [--page-size 100]
                              [--concurrency 32] [--scale 100000,1000000] [--scale-page-size 10000]
                              [--skip-sdk] [--skip-apply] [--profile FILE]

Each contender gets a fresh emulator (its own process) holding ``--files`` files, ``--orphans`` of
which are unknown to the ledger, every request delayed by ``--latency`` seconds:

- filekeeper: `filekeeper reconcile --provider openai --apply --min-age 0` (a fresh process, its
  modules byte-compiled first, as pip does on install);
- the SDK loop: list everything with the auto-pager, then delete what is not in our records,
  one by one;
- bare httpx: the same pages and deletes, the deletes from ``--concurrency`` threads over one
  client, with no ledger and no checks (what the HTTP library alone costs here, in this run).

The floor is what no client can beat with ``--concurrency`` deletes in flight: the pages, one after
another (each cursor comes from the page before), then the deletes, which must wait for the whole
listing: pages x RTT + deletes x RTT / concurrency.

Then a `filekeeper reconcile` (plan) over each of ``--scale`` remote files, in OpenAI's pages of
10,000, 10% of them orphans: its wall time and peak RSS (measured on the child process), and how
they grow from the first size to the last (Linux: the child reports its own VmHWM).
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
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


def byte_compile() -> dict[str, str]:
    """filekeeper's modules byte-compiled, as pip does on install, and the environment to run it
    in: where PYTHONDONTWRITEBYTECODE is set, a run from the checkout would otherwise compile every
    module on every start (about 0.15 s here) and measure that (as bench/cli_startup.py does)."""
    import compileall

    compileall.compile_dir(ROOT / "filekeeper", quiet=1)
    return {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def make_ledger(home: Path, url: str, known: list[dict[str, object]]) -> dict[str, str]:
    """A ledger that knows ``known`` (remote file objects) as active files of the openai account."""
    env = {**byte_compile(), "FILEKEEPER_HOME": str(home), "OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": url}
    subprocess.run(
        [sys.executable, "-m", "filekeeper", "db", "upgrade"], env=env, check=True, capture_output=True, cwd=ROOT
    )
    os.environ.update({"FILEKEEPER_HOME": str(home), "OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": url})
    from sqlalchemy import insert, update

    from filekeeper import Keeper
    from filekeeper.schema import accounts, files

    with Keeper() as keeper:
        account_id = keeper.ledger.ensure_account(keeper.account(provider="openai"))
        now = datetime.now(UTC)
        with keeper.ledger.engine.begin() as conn:
            # As if an applying reconcile had listed the account long before the orphans were made:
            # they are orphans to delete, not someone else's files from before the ledger (unclaimed).
            baseline = now - timedelta(days=400)
            conn.execute(update(accounts).where(accounts.c.id == account_id).values(baselined_at=baseline))
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
            command = [sys.executable, "-m", "filekeeper"]
            if args.profile:
                command = [sys.executable, "-m", "cProfile", "-o", args.profile, "-m", "filekeeper"]
            t0 = time.perf_counter()
            subprocess.run(
                [
                    *command,
                    "reconcile",
                    "--provider",
                    "openai",
                    "--apply",
                    "--min-age",
                    "0",
                    "--max-delete",
                    str(args.orphans),
                    "--concurrency",
                    str(args.concurrency),
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


def run_bare_httpx(args: argparse.Namespace) -> float:
    """The same requests with nothing but httpx, as a script would send them: the pages one after
    another, then the orphans' deletes from ``--concurrency`` threads over one shared client. No
    ledger, no checks: what the HTTP library alone costs on this machine in this run."""
    from concurrent.futures import ThreadPoolExecutor

    emu = Emulator(args.files, args.latency, args.page_size)
    try:
        known = set(emu.ids()[args.orphans :])
        limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
        t0 = time.perf_counter()
        with httpx.Client(base_url=emu.url, headers={"Authorization": f"Bearer {KEY}"}, limits=limits) as c:
            listed: list[str] = []
            after = None
            while True:
                body = c.get("/files", params={"limit": args.page_size, **({"after": after} if after else {})}).json()
                listed += [f["id"] for f in body["data"]]
                if not body.get("has_more"):
                    break
                after = body["data"][-1]["id"]
            with ThreadPoolExecutor(args.concurrency) as pool:
                answers = list(pool.map(lambda i: c.delete(f"/files/{i}"), [i for i in listed if i not in known]))
        seconds = time.perf_counter() - t0
        assert len(answers) == args.orphans and all(a.is_success for a in answers)
    finally:
        emu.close()
    return seconds


# Run as the child: filekeeper itself, reporting its own peak RSS (VmHWM) on the way out. Its
# rusage would not do: Linux carries the parent's high-water mark over fork and exec, and this
# parent holds the whole listing it seeded the ledger from.
PEAK_CHILD = """
import atexit, os, runpy, sys

def report():
    with open("/proc/self/status") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    with open(os.environ["FK_BENCH_PEAK"], "w") as out:
        out.write(str(kib))

atexit.register(report)
sys.argv = ["filekeeper", *sys.argv[1:]]
runpy.run_module("filekeeper", run_name="__main__", alter_sys=True)
"""


def plan_at_scale(files: int, page_size: int) -> tuple[float, float]:
    """Wall time and peak RSS (MiB) of a `filekeeper reconcile` plan, a fresh process, over
    ``files`` remote files of which the ledger knows 90%."""
    emu = Emulator(files, 0.0, page_size)
    try:
        remote = emu.files()
        with tempfile.TemporaryDirectory() as tmp:
            env = make_ledger(Path(tmp), emu.url, remote[files // 10 :])
            del remote
            peak = Path(tmp) / "peak"
            t0 = time.perf_counter()
            subprocess.run(
                [sys.executable, "-c", PEAK_CHILD, "reconcile", "--provider", "openai"],
                env={**env, "FK_BENCH_PEAK": str(peak)},
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                check=True,
            )
            seconds = time.perf_counter() - t0
            rss = int(peak.read_text()) / 1024
    finally:
        emu.close()
    return seconds, rss


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--orphans", type=int, default=1000)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--page-size", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--scale", default="100000,1000000", help="remote file counts for the plan at scale ('' to skip)"
    )
    parser.add_argument("--scale-page-size", type=int, default=10_000)
    parser.add_argument("--skip-sdk", action="store_true")
    parser.add_argument("--skip-apply", action="store_true")
    parser.add_argument("--profile", help="write a cProfile of filekeeper's --apply run to this file")
    args = parser.parse_args()
    if not args.skip_apply:
        pages = max(1, math.ceil(args.files / args.page_size))
        floor = pages * args.latency + args.orphans * args.latency / args.concurrency
        print(
            f"{args.files:,} remote files in pages of {args.page_size}, {args.orphans:,} orphans, "
            f"{args.latency * 1000:.0f} ms per request, {args.concurrency} deletes in flight"
        )
        ours, deleted = run_filekeeper(args)
        assert deleted == args.orphans, f"filekeeper deleted {deleted} of the {args.orphans} orphans"
        print(f"  filekeeper reconcile --apply   {ours:7.2f} s   deleted {deleted:,}")
        print(
            f"  floor (pages x RTT + deletes x RTT / {args.concurrency}) {floor:7.2f} s   "
            f"filekeeper / floor = {ours / floor:.2f}x"
        )
        bare = run_bare_httpx(args)
        print(f"  bare httpx, no ledger          {bare:7.2f} s   filekeeper / bare httpx = {ours / bare:.2f}x")
        if not args.skip_sdk:
            import openai

            sdk, sdk_deleted = run_sdk(args)
            print(f"  OpenAI SDK {openai.__version__:<8} loop      {sdk:7.2f} s   deleted {sdk_deleted:,}")
            print(f"  speed-up over the SDK loop {sdk / ours:.1f}x")
    sizes = [int(n) for n in args.scale.split(",") if n.strip()]
    results = []
    for n in sizes:
        seconds, rss = plan_at_scale(n, args.scale_page_size)
        results.append((n, seconds, rss))
        print(
            f"`filekeeper reconcile` (plan) over {n:,} remote files in pages of {args.scale_page_size:,}, "
            f"{n // 10:,} orphans: {seconds:6.1f} s, peak RSS {rss:.0f} MiB"
        )
    if len(results) >= 2:
        (n0, t0, r0), (n1, t1, r1) = results[0], results[-1]
        print(
            f"  {n1:,} vs {n0:,} files: peak RSS {r1 / r0:.2f}x, wall time {t1 / t0:.1f}x "
            f"for {n1 / n0:.0f}x the files ({t1 / t0 / (n1 / n0):.2f}x linear)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
