"""Wall time of `filekeeper check` against `python -c "import sqlalchemy, click"`, in one run.

    python bench/cli_startup.py [--runs 31]

Both commands are run alternately (so that machine noise falls on both alike) in fresh
processes; the ledger exists already, as for any user after the first command. filekeeper's
modules are byte-compiled first, as pip does on install (where PYTHONDONTWRITEBYTECODE is set, a
run from the checkout would otherwise compile every module on every start and measure that).
Prints the medians and their ratio (the goal: within 1.3x).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=31)
    args = parser.parse_args()
    import compileall

    import filekeeper

    compileall.compile_dir(Path(filekeeper.__file__).parent, quiet=1)
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["FILEKEEPER_HOME"] = tmp
        sample = Path(tmp) / "sample.txt"
        sample.write_text("hello\n")
        check = [sys.executable, "-m", "filekeeper", "check", str(sample), "--provider", "moonshot"]
        baseline = [sys.executable, "-c", "import sqlalchemy, click"]
        subprocess.run([sys.executable, "-m", "filekeeper", "db", "upgrade"], env=env, check=True, capture_output=True)
        for _ in range(3):  # warm the OS caches for both
            timed(check, env), timed(baseline, env)
        ours, base = [], []
        for _ in range(args.runs):
            ours.append(timed(check, env))
            base.append(timed(baseline, env))
    m_ours, m_base = statistics.median(ours), statistics.median(base)
    print(f"CLI start-up, median of {args.runs} alternating runs (python {sys.version.split()[0]}):")
    print(f"  python -c 'import sqlalchemy, click'  {m_base * 1000:6.0f} ms")
    print(f"  filekeeper check FILE --provider X    {m_ours * 1000:6.0f} ms   ratio {m_ours / m_base:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
