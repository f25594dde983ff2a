"""httpx or httpx2 under filekeeper's provider layer: the cost of each, and of both at once.

    python bench/http_stack.py [--runs 21]

Each line is a fresh interpreter that imports the named modules: the median wall time of
``--runs`` alternating runs, and the RSS after the imports (VmRSS), against a bare interpreter
measured in the same run. "httpx + httpx2" is what a process holds when it uses the OpenAI SDK
3.x (httpx2) and filekeeper's provider layer (httpx) together, as ``filekeeper.http_client()`` does.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

CASES = {
    "bare interpreter": "",
    "httpx": "import httpx",
    "httpx2": "import httpx2",
    "httpx + httpx2": "import httpx, httpx2",
    "openai (3.x, on httpx2)": "import openai",
    "openai + filekeeper's provider layer": "import openai, filekeeper.providers._http",
}

PROBE = """
{imports}
with open('/proc/self/status') as f:
    print(next(int(l.split()[1]) for l in f if l.startswith('VmRSS:')))
"""


def one(code: str) -> tuple[float, int]:
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", PROBE.format(imports=code)], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"{code!r} failed: {out.stderr.strip().splitlines()[-1]}")
    return wall, int(out.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=21)
    args = parser.parse_args()
    walls: dict[str, list[float]] = {name: [] for name in CASES}
    rss: dict[str, list[int]] = {name: [] for name in CASES}
    for _ in range(args.runs):  # alternating, so that the machine's noise falls on every case alike
        for name, code in CASES.items():
            wall, kb = one(code)
            walls[name].append(wall)
            rss[name].append(kb)
    base_wall = statistics.median(walls["bare interpreter"])
    base_rss = statistics.median(rss["bare interpreter"])
    print(f"python {sys.version.split()[0]}, median of {args.runs} runs each")
    for name in CASES:
        wall = statistics.median(walls[name])
        kb = statistics.median(rss[name])
        print(
            f"  {name:<38} import {1000 * (wall - base_wall):6.1f} ms over bare ({wall / base_wall:4.2f}x)   "
            f"RSS {kb / 1024:6.1f} MiB (+{(kb - base_rss) / 1024:5.1f})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
