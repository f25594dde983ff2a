"""Peak RSS of a 100 MB upload: filekeeper, the official OpenAI SDK, and the SDK with
filekeeper.http_client() (every upload checked and recorded), same emulator.

    python bench/upload_memory.py [--size-mb 100]

Each client runs in a fresh child process that reports its RSS after imports and its peak RSS
after the upload (Linux ru_maxrss); the emulator runs in a process of its own so that its
memory is not counted. Prints one line per client and the growth over the post-import RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from emulator_process import EmulatorProcess

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-bench-upload-memory"


def rss_now_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def child(client: str, url: str, path: str) -> None:
    if client == "filekeeper":
        import filekeeper
        import filekeeper.keeper
        import filekeeper.providers._http  # what an upload loads: httpx, tenacity (as the SDK loads httpx2)

        after_imports = rss_now_kb()
        os.environ.update({"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": url})
        with filekeeper.Keeper() as keeper:
            [record] = keeper.upload_files([path], provider="openai")
        uploaded = record.bytes
    elif client == "openai-sdk+filekeeper":
        from openai import OpenAI

        import filekeeper
        import filekeeper.keeper
        import filekeeper.providers._http
        import filekeeper.sdk

        after_imports = rss_now_kb()
        os.environ["OPENAI_BASE_URL"] = url  # the account the client records: the one the SDK sends to
        sdk = OpenAI(api_key=KEY, base_url=url, http_client=filekeeper.http_client(provider="openai"))
        with open(path, "rb") as f:
            uploaded = sdk.files.create(file=f, purpose="assistants").bytes
        with filekeeper.Keeper() as keeper:  # it really went through the ledger
            [record] = keeper.files(provider="openai")
            assert record.status == "active" and record.bytes == uploaded, record
    else:
        from openai import OpenAI

        after_imports = rss_now_kb()
        sdk = OpenAI(api_key=KEY, base_url=url)
        with open(path, "rb") as f:
            uploaded = sdk.files.create(file=f, purpose="assistants").bytes
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"client": client, "after_imports_kb": after_imports, "peak_kb": peak, "bytes": uploaded}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=100)
    parser.add_argument("--child", nargs=3, metavar=("CLIENT", "URL", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return 0

    emulator = EmulatorProcess("openai", "--api-key", KEY, "--max-file-bytes", str(10**10))
    try:
        url = emulator.url
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "big.jsonl"
            block = os.urandom(1 << 20)
            with path.open("wb") as f:
                for _ in range(args.size_mb):
                    f.write(block)
            clients = ["filekeeper"]
            try:
                import openai
            except ImportError:
                print("openai SDK not installed: pip install openai to compare", file=sys.stderr)
            else:
                clients += ["openai-sdk", "openai-sdk+filekeeper"]
                print(f"(openai SDK {openai.__version__})")
            print(f"upload of {args.size_mb} MiB to the emulator (python {sys.version.split()[0]})")
            for client in clients:
                home = Path(tmp) / client
                # The ledger exists already, as it does for any user after the first command.
                subprocess.run(
                    [sys.executable, "-m", "filekeeper", "db", "upgrade"],
                    env={**os.environ, "FILEKEEPER_HOME": str(home)},
                    cwd=ROOT,
                    check=True,
                    capture_output=True,
                )
                out = subprocess.run(
                    [sys.executable, __file__, "--child", client, url, str(path)],
                    env={**os.environ, "FILEKEEPER_HOME": str(home)},
                    cwd=ROOT,
                    capture_output=True,
                    text=True,
                    check=True,
                )
                r = json.loads(out.stdout.strip().splitlines()[-1])
                growth = (r["peak_kb"] - r["after_imports_kb"]) / 1024
                print(
                    f"  {client:<21} RSS after imports {r['after_imports_kb'] / 1024:7.1f} MiB   "
                    f"peak {r['peak_kb'] / 1024:7.1f} MiB   growth {growth:+7.1f} MiB"
                )
    finally:
        emulator.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
