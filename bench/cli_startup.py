"""Start-up of the command line, against the floor of what it must import, in one run.

    python bench/cli_startup.py [--runs 31]

Two pairs, each run alternately (so that machine noise falls on both alike) in fresh processes:

- `filekeeper --help` against `python -c "import click"` (the goal: within 1.5x): help and shell
  completion must not pay for SQLAlchemy;
- `filekeeper check FILE --provider moonshot` against `python -c "import sqlalchemy, click"` (the
  goal: within 1.3x): a command that reads the ledger pays for SQLAlchemy Core, and little more.

filekeeper runs as the console script pip installs (else ``python -m filekeeper``); the ledger
exists already, as for any user after the first command. Its modules are byte-compiled first, as
pip does on install (where PYTHONDONTWRITEBYTECODE is set, a run from the checkout would otherwise
compile every module on every start and measure that). Prints the medians and their ratios.
"""

from __future__ import annotations

import argparse
import os
import shutil
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


def filekeeper_command() -> list[str]:
    script = Path(sys.executable).with_name("filekeeper")
    if script.exists():
        return [str(script)]
    found = shutil.which("filekeeper")
    return [found] if found else [sys.executable, "-m", "filekeeper"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=31)
    args = parser.parse_args()
    import compileall

    import filekeeper

    compileall.compile_dir(Path(filekeeper.__file__).parent, quiet=1)
    fk = filekeeper_command()
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["FILEKEEPER_HOME"] = tmp
        sample = Path(tmp) / "sample.txt"
        sample.write_text("hello\n")
        pairs = {
            "help": (
                [*fk, "--help"],
                [sys.executable, "-c", "import click"],
                1.5,
                "filekeeper --help",
                "python -c 'import click'",
            ),
            "check": (
                [*fk, "check", str(sample), "--provider", "moonshot"],
                [sys.executable, "-c", "import sqlalchemy, click"],
                1.3,
                "filekeeper check FILE --provider X",
                "python -c 'import sqlalchemy, click'",
            ),
        }
        subprocess.run([*fk, "db", "upgrade"], env=env, check=True, capture_output=True)
        times: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in pairs}
        for _ in range(3):  # warm the OS caches for all
            for ours, floor, *_ in pairs.values():
                timed(ours, env), timed(floor, env)
        for _ in range(args.runs):
            for name, (ours, floor, *_) in pairs.items():
                times[name][0].append(timed(ours, env))
                times[name][1].append(timed(floor, env))
    print(f"CLI start-up, median of {args.runs} alternating runs (python {sys.version.split()[0]}; {' '.join(fk)}):")
    for name, (_ours, _floor, goal, ours_label, floor_label) in pairs.items():
        m_ours, m_floor = statistics.median(times[name][0]), statistics.median(times[name][1])
        print(f"  {floor_label:<40} {m_floor * 1000:6.0f} ms")
        print(f"  {ours_label:<40} {m_ours * 1000:6.0f} ms   ratio {m_ours / m_floor:.2f}x (goal: within {goal}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
