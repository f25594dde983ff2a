"""Self-tests of the Files API emulator, over its real socket."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.emulator import Emulator, MultipartParser

KEY = "test-key"
REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def make() -> Iterator[Callable[..., Emulator]]:
    started: list[Emulator] = []

    def _make(flavor: str, **kw: Any) -> Emulator:
        emu = Emulator(flavor, **kw).start()
        started.append(emu)
        return emu

    yield _make
    for emu in started:
        emu.stop()


@pytest.fixture
def connect() -> Iterator[Callable[..., httpx.Client]]:
    clients: list[httpx.Client] = []

    def _connect(emu: Emulator, key: str = KEY) -> httpx.Client:
        client = httpx.Client(base_url=emu.url, headers={"Authorization": f"Bearer {key}"}, timeout=10)
        clients.append(client)
        return client

    yield _connect
    for client in clients:
        client.close()


def upload(client: httpx.Client, data: bytes, name: str = "a.txt", **fields: str) -> httpx.Response:
    return client.post("/files", files={"file": (name, data)}, data=fields)


# ---------------------------------------------------------------------------------- uploads


def test_upload_hashes_content_and_records_form_order(make, connect) -> None:
    emu = make("openai", keep_content=True)
    client = connect(emu)
    # Boundary look-alikes inside the payload must not end the part early.
    data = os.urandom(300_000) + b"\r\n--\r\n--" + os.urandom(70_000)
    fields = {
        "purpose": "batch",
        "expires_after[anchor]": "created_at",
        "expires_after[seconds]": "3600",
    }
    r = upload(client, data, 'we"ird name.jsonl', **fields)
    assert r.status_code == 200, r.text
    body = r.json()
    stored = emu.files[body["id"]]
    assert body["id"].startswith("file-") and len(body["id"]) == 29
    assert stored.bytes == body["bytes"] == len(data)
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert stored.content == data
    assert stored.filename == body["filename"] == 'we"ird name.jsonl'
    assert body["status"] == "processed"
    assert body["expires_at"] == body["created_at"] + 3600
    assert list(emu.requests[-1].form.items()) == list(fields.items())
    assert client.get(f"/files/{body['id']}/content").content == data


def test_chunked_upload_streams_without_buffering(make, connect) -> None:
    emu = make("moonshot")
    client = connect(emu)
    boundary = "emulator-test-boundary"
    block = os.urandom(64 * 1024)
    blocks = 256  # 16 MiB
    expected = hashlib.sha256()
    for _ in range(blocks):
        expected.update(block)

    def body() -> Iterator[bytes]:
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n'
            f"file-extract\r\n--{boundary}\r\n"
            f'Content-Disposition: form-data; name="file"; filename="big.bin"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        for _ in range(blocks):
            yield block
        yield f"\r\n--{boundary}--\r\n".encode()

    tracemalloc.start()
    try:
        r = client.post(
            "/files",
            content=body(),
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert r.status_code == 200, r.text
    stored = emu.files[r.json()["id"]]
    assert stored.bytes == len(block) * blocks
    assert stored.sha256 == expected.hexdigest()
    assert stored.content is None
    assert r.json()["status"] == "ok"
    assert peak < 4 * 1024 * 1024, f"peak {peak} bytes for a 16 MiB upload"


def test_parser_handles_one_byte_feeds() -> None:
    # Near-misses of the delimiter, which a one-byte feed splits at every position.
    payload = b"x\r\n--b\r\n--boun\r\n-" + os.urandom(500).replace(b"\r", b"") + b"\r\n--boun"
    body = (
        b"preamble\r\n--bound\r\n"
        b'Content-Disposition: form-data; name="purpose"\r\n\r\nagent\r\n--bound\r\n'
        b"Content-Disposition: form-data; name=\"file\"; filename*=UTF-8''na%C3%AFve.txt\r\n\r\n"
        + payload
        + b"\r\n--bound\r\n"
        b'Content-Disposition: form-data; name="other"; filename="skip.bin"\r\n\r\nzz\r\n'
        b"--bound\r\n"
        b'Content-Disposition: form-data; name="expires_after"\r\n\r\n3600\r\n'
        b"--bound--\r\nepilogue"
    )
    parser = MultipartParser(b"bound", keep_content=True)
    for i in range(len(body)):
        parser.feed(body[i : i + 1])
    parser.close()
    assert parser.error is None and parser.complete
    assert list(parser.fields.items()) == [("purpose", "agent"), ("expires_after", "3600")]
    assert parser.file is not None
    assert parser.file.filename == "naïve.txt"
    assert parser.file.content == payload
    assert parser.file.sha256 == hashlib.sha256(payload).hexdigest()

    truncated = MultipartParser(b"bound")
    truncated.feed(body[:200])
    truncated.close()
    assert truncated.error is not None and truncated.file is None


def test_upload_validation_per_flavor(make, connect) -> None:
    moon = make("moonshot", max_files=1, max_file_bytes=10)
    c = connect(moon)
    r = c.post("/files", data={"purpose": "file-extract"}, files={})
    assert r.status_code == 400
    assert upload(c, b"abc").status_code == 400  # purpose missing
    assert upload(c, b"abc", purpose="assistants").status_code == 400
    r = upload(c, b"", purpose="file-extract")
    assert (r.status_code, r.json()["error"]["message"]) == (400, "File size is zero")
    r = upload(c, b"x" * 11, purpose="file-extract")
    assert r.json()["error"]["message"] == "File size is too large"
    assert upload(c, b"abc", purpose="file-extract").status_code == 200
    r = upload(c, b"abc", purpose="file-extract")
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert "exceeded the max file count" in r.json()["error"]["message"]

    oa = connect(make("openai", max_total_bytes=5))
    assert upload(oa, b"abc", purpose="batch", expires_after="3600").status_code == 400
    bad_seconds = {"expires_after[anchor]": "created_at", "expires_after[seconds]": "60"}
    assert upload(oa, b"abc", purpose="batch", **bad_seconds).status_code == 400
    assert upload(oa, b"abc", purpose="batch").status_code == 200
    r = upload(oa, b"abc", purpose="batch")
    assert "exceeded your file storage quota" in r.json()["error"]["message"]

    zai = connect(make("zai", max_file_bytes=2))
    assert upload(zai, b"abc", purpose="agent").status_code == 435

    xai = make("xai", max_file_bytes=2)
    xc = connect(xai)
    r = upload(xc, b"ab", expires_after="7200")
    assert r.status_code == 200
    body = r.json()
    assert body["purpose"] == "assistants" and body["id"].startswith("file_")
    assert body["expires_at"] == body["created_at"] + 7200
    r = upload(xc, b"abc")
    # The live API's answer to a file too large (its limit: 50 MB).
    assert r.status_code == 413 and r.json() == {"code": "Request Entity Too Large", "error": "file exceeds 0 MB"}


# ---------------------------------------------------------------------------------- listing


def seed(emu: Emulator, n: int, purpose: str = "assistants") -> list[str]:
    """n files with distinct created_at, ids in ascending order."""
    return [emu.add_file(f"f{i}.txt", 10 + i, purpose=purpose, created_at=1_000 + i).id for i in range(n)]


def test_moonshot_list_ignores_cursors(make, connect) -> None:
    emu = make("moonshot", page_size=2)
    ids = seed(emu, 5, "file-extract")
    body = connect(emu).get("/files", params={"after": ids[-1], "limit": 2}).json()
    assert set(body) == {"object", "data"}
    assert [f["id"] for f in body["data"]] == ids
    assert body["data"][0]["status"] == "ok" and len(ids[0]) == 20


def test_openai_page_size_caps_limit_with_has_more(make, connect) -> None:
    emu = make("openai", page_size=3)
    ids = seed(emu, 7)
    client = connect(emu)
    seen: list[str] = []
    more_flags: list[bool] = []
    params: dict[str, Any] = {"limit": 5}
    while True:
        body = client.get("/files", params=params).json()
        page = [f["id"] for f in body["data"]]
        assert (body["first_id"], body["last_id"]) == (page[0], page[-1])
        seen += page
        more_flags.append(body["has_more"])
        if not body["has_more"]:
            break
        params["after"] = body["last_id"]
    assert seen == ids[::-1]  # desc by default
    assert more_flags == [True, True, False]
    asc = client.get("/files", params={"order": "asc", "after": ids[5]}).json()
    assert [f["id"] for f in asc["data"]] == [ids[6]] and asc["has_more"] is False
    unknown = client.get("/files", params={"after": "file-unknown"}).json()
    assert unknown["data"] == [] and unknown["has_more"] is False
    assert client.get("/files", params={"limit": 10_001}).status_code == 400


def test_cursor_survives_deleting_the_cursor_file(make, connect) -> None:
    emu = make("openai")
    ids = seed(emu, 5)
    client = connect(emu)
    first = client.get("/files", params={"order": "asc", "limit": 2}).json()
    assert client.delete(f"/files/{first['last_id']}").status_code == 200
    emu.add_file("late.txt", 1, created_at=2_000)
    rest = client.get("/files", params={"order": "asc", "limit": 2, "after": first["last_id"]})
    assert [f["id"] for f in rest.json()["data"]] == ids[2:4]


def test_xai_token_style_ends_on_short_page(make, connect) -> None:
    emu = make("xai")
    ids = seed(emu, 5)
    client = connect(emu)
    pages: list[list[str]] = []
    tokens: list[str | None] = []
    params: dict[str, Any] = {"limit": 2, "after": "ignored"}
    while True:
        body = client.get("/files", params=params).json()
        assert set(body) == {"data", "pagination_token"}
        pages.append([f["id"] for f in body["data"]])
        tokens.append(body["pagination_token"])
        if body["pagination_token"] is None:
            break
        params["pagination_token"] = body["pagination_token"]
    assert pages == [ids[0:2], ids[2:4], ids[4:]]
    assert tokens[-1] is None and all(tokens[:-1])
    assert client.get("/files", params={"limit": 101}).status_code == 400

    capped = make("xai", page_size=2)
    seed(capped, 2)
    body = connect(capped).get("/files").json()
    # A full page (capped below the asked limit) still hands out a token; the next is empty.
    assert len(body["data"]) == 2 and body["pagination_token"]
    nxt = connect(capped).get("/files", params={"pagination_token": body["pagination_token"]})
    assert nxt.json() == {"data": [], "pagination_token": None}


def test_xai_seed_style_pages_with_has_more(make, connect) -> None:
    emu = make("xai", xai_style="seed")
    ids = seed(emu, 3)
    client = connect(emu)
    body = client.get("/files", params={"limit": 2}).json()
    assert body["object"] == "list" and body["has_more"] is True
    body = client.get("/files", params={"limit": 2, "after": body["data"][-1]["id"]}).json()
    assert [f["id"] for f in body["data"]] == ids[2:] and body["has_more"] is False


def test_zai_list_limits_and_envelopes(make, connect) -> None:
    emu = make("zai", ms_timestamps=True)
    ids = seed(emu, 3, "agent")
    emu.add_file("other.jsonl", 5, purpose="batch", created_at=3_000)
    client = connect(emu)
    r = client.get("/files", params={"limit": 101})
    assert r.status_code == 400
    assert set(r.json()) == {"error", "request_id"}
    assert set(r.json()["error"]) == {"code", "message"}
    assert isinstance(r.json()["error"]["code"], str)
    body = client.get("/files", params={"limit": 2, "purpose": "agent"}).json()
    assert [f["id"] for f in body["data"]] == ids[:2] and body["has_more"] is True
    assert body["data"][0]["created_at"] == 1_000_000 and "status" not in body["data"][0]
    assert ids[0][:9].endswith("_") and len(ids[0]) == 9 + 32
    assert client.get(f"/files/{ids[0]}").status_code == 404  # no retrieve on Z.AI

    seed_style = make("zai", zai_envelope="seed")
    r = connect(seed_style).get("/files", params={"limit": 500})
    assert r.status_code == 400 and set(r.json()) == {"code", "message"}
    assert isinstance(r.json()["code"], int)


# ------------------------------------------------------------------------ auth and errors


@pytest.mark.parametrize("flavor", ["moonshot", "zai", "xai", "openai", "compatible"])
def test_401_echoes_the_presented_key(make, connect, flavor: str) -> None:
    emu = make(flavor)
    r = connect(emu, key="sk-wrong-secret-123").get("/files")
    assert r.status_code == 401
    assert "Incorrect API key provided: sk-wrong-secret-123" in r.text
    assert emu.requests[-1].status == 401
    assert emu.requests[-1].authorization == "Bearer sk-wrong-secret-123"


@pytest.mark.parametrize(
    ("flavor", "kw", "check"),
    [
        (
            "openai",
            {},
            lambda b: (
                b["error"]["message"] == "No such File object: nope" and b["error"]["type"] == "invalid_request_error"
            ),
        ),
        ("compatible", {}, lambda b: b["error"]["message"] == "No such File object: nope"),
        ("moonshot", {}, lambda b: set(b["error"]) >= {"message", "type"}),
        ("xai", {}, lambda b: b["code"] == "Not Found" and "nope" in b["error"]),
        ("xai", {"xai_style": "seed"}, lambda b: b["error"]["code"] == "file_not_found"),
        ("zai", {}, lambda b: set(b) == {"error", "request_id"}),
        ("zai", {"zai_envelope": "seed"}, lambda b: set(b) == {"code", "message"}),
    ],
)
def test_delete_unknown_is_404_in_flavor_envelope(make, connect, flavor, kw, check) -> None:
    emu = make(flavor, **kw)
    client = connect(emu)
    r = client.delete("/files/nope")
    assert r.status_code == 404 and check(r.json()), r.text
    known = emu.add_file("k.txt", 3)
    r = client.delete(f"/files/{known.id}")
    assert r.status_code == 200 and r.json()["deleted"] is True
    assert ("object" in r.json()) == (flavor != "xai")
    assert known.id not in emu.files


def test_inject_status_with_retry_after(make, connect) -> None:
    emu = make("openai")
    client = connect(emu)
    emu.inject("POST", "/files", status=429, headers={"Retry-After": "1"}, times=2)
    for _ in range(2):
        r = upload(client, b"abc", purpose="batch")
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "rate_limit_exceeded"
    assert emu.files == {}
    assert upload(client, b"abc", purpose="batch").status_code == 200
    assert emu.count("POST", "/files") == 3
    assert emu.count("POST", "/v1/files") == 3
    assert [q.status for q in emu.requests] == [429, 429, 200]

    zai = make("zai")
    body = zai.error_body(429, "balance exhausted", code="1113")
    zai.inject("GET", "/files", status=429, body=body, headers={"retry-after-ms": "10"})
    r = connect(zai).get("/files")
    assert r.status_code == 429 and r.json()["error"] == {
        "code": "1113",
        "message": "balance exhausted",
    }
    assert r.headers["retry-after-ms"] == "10"


def test_drop_response_after_store_keeps_the_file(make, connect) -> None:
    emu = make("moonshot")
    client = connect(emu)
    emu.inject("POST", "/files", drop_response=True, after_store=True)
    with pytest.raises(httpx.TransportError):
        upload(client, b"stored but unanswered", purpose="file-extract")
    assert [f.filename for f in emu.files.values()] == ["a.txt"]
    assert emu.requests[-1].status == 0
    assert emu.requests[-1].form == {"purpose": "file-extract"}

    emu.inject("POST", "/files", drop_response=True)
    with pytest.raises(httpx.TransportError):
        upload(client, b"never stored", purpose="file-extract")
    assert len(emu.files) == 1
    # The same client carries on over a fresh connection.
    assert len(client.get("/files").json()["data"]) == 1


# ------------------------------------------------------------------------------ lifecycle


def test_stop_cuts_keep_alive_connections(make, connect) -> None:
    emu = make("openai")
    client = connect(emu)
    assert client.get("/files").status_code == 200
    emu.stop()
    with pytest.raises(httpx.TransportError):
        client.get("/files")


def test_cli_serves_in_another_process() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.emulator", "--flavor", "zai", "--seed-files", "3"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("URL http://127.0.0.1:") and line.endswith("/api/paas/v4")
        url = line.split(" ", 1)[1]
        auth = {"Authorization": f"Bearer {KEY}"}
        r = httpx.get(f"{url}/files", params={"purpose": "file-extract"}, headers=auth, timeout=10)
        assert r.status_code == 200 and len(r.json()["data"]) == 3
        # Without a purpose, Z.AI's list is empty (not an error): the trap its adapter avoids.
        r = httpx.get(f"{url}/files", headers=auth, timeout=10)
        assert r.status_code == 200 and r.json()["data"] == []
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
