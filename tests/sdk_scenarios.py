"""What a user's code does with the official OpenAI SDK and filekeeper's client, one scenario each.

Run as a process, so that each installed SDK (openai 3.x on httpx2; 2.x on httpx, from a
directory put first on PYTHONPATH) is driven by the same code::

    python -m tests.sdk_scenarios SCENARIO PROVIDER BASE_URL WORKDIR

Prints one JSON object: what the SDK returned or raised at each step.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import openai

import filekeeper


def _error(e: BaseException) -> dict[str, Any]:
    out: dict[str, Any] = {"error": type(e).__name__, "message": str(e)}
    if isinstance(e, openai.APIStatusError):
        out["status"] = e.status_code
        out["should_retry"] = e.response.headers.get("x-should-retry")
    return out


def _file(f: Any) -> dict[str, Any]:
    return {"id": f.id, "filename": f.filename, "bytes": f.bytes}


def _where(provider: str) -> dict[str, str]:
    """``moonshot`` names a provider's implicit account; ``account:NAME`` an account in config.toml."""
    return {"account": provider[len("account:") :]} if provider.startswith("account:") else {"provider": provider}


def _client(provider: str, base_url: str, **kw: Any) -> openai.OpenAI:
    kw.setdefault("max_retries", 2)
    return openai.OpenAI(
        base_url=base_url, api_key=_key(provider), http_client=filekeeper.http_client(**_where(provider)), **kw
    )


def _key(provider: str) -> str:
    import os

    # SDK_KEY: a key of the test's choosing in the user's code (another account's, say).
    return os.environ.get("SDK_KEY") or filekeeper.load_settings().resolve(**_where(provider)).api_key()


def _purpose(provider: str) -> str:
    return filekeeper.load_settings().resolve(**_where(provider)).default_purpose


def upload_and_delete(provider: str, base_url: str, work: Path) -> dict[str, Any]:
    from filekeeper.sdk import library

    out: dict[str, Any] = {"sdk": openai.__version__, "http": library().__name__}
    client = _client(provider, base_url)
    with open(write(work / "a.txt", b"hello from the sdk\n"), "rb") as fh:
        f = client.files.create(file=fh, purpose=_purpose(provider))  # type: ignore[arg-type]
    out["uploaded"] = _file(f)
    out["listed"] = sorted(x.id for x in client.files.list(purpose=_purpose(provider)).data)  # passed through
    out["deleted"] = client.files.delete(f.id).deleted
    try:
        client.files.delete("file-neverwas")
    except openai.APIStatusError as e:
        out["unknown"] = _error(e)
    client.close()
    return out


def upload(provider: str, base_url: str, work: Path) -> dict[str, Any]:
    """One upload of b.txt (what the test injected decides how it goes)."""
    client = _client(provider, base_url)
    try:
        f = client.files.create(file=("b.txt", b"bytes of b\n"), purpose=_purpose(provider))  # type: ignore[arg-type]
        return {"uploaded": _file(f)}
    except openai.APIError as e:
        return _error(e)
    finally:
        client.close()


def refused(provider: str, base_url: str, work: Path) -> dict[str, Any]:
    """Two uploads into an account that has room for one."""
    client = _client(provider, base_url)
    out: dict[str, Any] = {}
    out["first"] = _file(client.files.create(file=("one.txt", b"1\n"), purpose=_purpose(provider)))  # type: ignore[arg-type]
    try:
        client.files.create(file=("two.txt", b"2\n"), purpose=_purpose(provider))  # type: ignore[arg-type]
        out["second"] = "uploaded"
    except openai.APIStatusError as e:
        out["second"] = _error(e)
    client.close()
    return out


def delete(provider: str, base_url: str, work: Path) -> dict[str, Any]:
    """Upload one file, then delete it (what the test injected decides how the delete goes)."""
    client = _client(provider, base_url)
    f = client.files.create(file=("d.txt", b"to delete\n"), purpose=_purpose(provider))  # type: ignore[arg-type]
    out: dict[str, Any] = {"uploaded": _file(f)}
    try:
        out["deleted"] = client.files.delete(f.id).deleted
    except openai.APIError as e:
        out["deleted"] = _error(e)
    client.close()
    return out


def bad_expiry(provider: str, base_url: str, work: Path) -> dict[str, Any]:
    client = _client(provider, base_url)
    out: dict[str, Any] = {}
    for seconds in (0, -5):
        try:
            client.files.create(
                file=(f"e{seconds}.txt", b"x\n"),
                purpose=_purpose(provider),
                expires_after={"anchor": "created_at", "seconds": seconds},
            )  # type: ignore[arg-type]
            out[str(seconds)] = "uploaded"
        except openai.APIStatusError as e:
            out[str(seconds)] = _error(e)
    client.close()
    return out


def unsized(provider: str, base_url: str, work: Path) -> dict[str, Any]:
    """Uploads of streams whose size cannot be known before sending: a pipe, a reader with no seek."""
    import io
    import os

    class Reader(io.RawIOBase):
        def __init__(self) -> None:
            self.left = b"streamed bytes\n"

        def readable(self) -> bool:
            return True

        def readinto(self, b: Any) -> int:
            n = min(len(b), len(self.left))
            b[:n], self.left = self.left[:n], self.left[n:]
            return n

    r, w = os.pipe()
    os.write(w, b"piped bytes\n")
    os.close(w)
    client = _client(provider, base_url)
    out: dict[str, Any] = {}
    for name, source in (("pipe", os.fdopen(r, "rb")), ("reader", Reader())):
        try:
            client.files.create(file=(f"{name}.txt", source), purpose=_purpose(provider))  # type: ignore[arg-type]
            out[name] = "uploaded"
        except openai.APIStatusError as e:
            out[name] = _error(e)
    client.close()
    return out


def expires(provider: str, base_url: str, work: Path) -> dict[str, Any]:
    client = _client(provider, base_url)
    f = client.files.create(
        file=("e.jsonl", b'{"a": 1}\n'),
        purpose="batch",
        expires_after={"anchor": "created_at", "seconds": 7200},
    )  # type: ignore[arg-type]
    client.close()
    return {"uploaded": _file(f)}


def async_upload_and_delete(provider: str, base_url: str, work: Path) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        out: dict[str, Any] = {}
        client = openai.AsyncOpenAI(
            base_url=base_url,
            api_key=_key(provider),
            http_client=filekeeper.async_http_client(**_where(provider)),
            max_retries=2,
        )
        # Two at once: each is its own reservation, and the event loop is not held while they are written.
        made = await asyncio.gather(
            *(client.files.create(file=(f"c{i}.txt", f"{i}\n".encode()), purpose=_purpose(provider)) for i in range(2))  # type: ignore[arg-type]
        )
        out["uploaded"] = [_file(f) for f in made]
        try:
            await client.files.create(file=("c9.txt", b"9\n"), purpose=_purpose(provider))  # type: ignore[arg-type]
            out["third"] = "uploaded"
        except openai.APIStatusError as e:
            out["third"] = _error(e)
        out["deleted"] = (await client.files.delete(made[0].id)).deleted
        await client.close()
        return out

    return asyncio.run(go())


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


SCENARIOS = {
    f.__name__: f
    for f in (upload_and_delete, upload, delete, bad_expiry, refused, unsized, expires, async_upload_and_delete)
}

if __name__ == "__main__":
    name, provider, base_url, work = sys.argv[1:5]
    print(json.dumps(SCENARIOS[name](provider, base_url, Path(work))))
