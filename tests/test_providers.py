"""Adapter unit tests over httpx.MockTransport: envelopes, retry rules, every list loop's stops."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from filekeeper.errors import FileNotFoundAtProvider, IncompleteListing, NotResent, ProviderError, ResponseLost
from filekeeper.providers import ADAPTERS, checked_before_resending
from filekeeper.providers._http import HTTP, RetryPolicy, parse_error
from filekeeper.providers.base import LIST_AHEAD_PAGES, Provider

KEY = "sk-unit-0123456789abcdef"


def adapter(
    name: str, handler: Callable[[httpx.Request], httpx.Response], sleeps: list[float] | None = None, **retry: Any
) -> Provider:
    http = HTTP(
        name,
        "https://api.example.test/v1",
        KEY,
        key_hint="EXAMPLE_API_KEY",
        retry=RetryPolicy(**{"attempts": 4, **retry}),
        transport=httpx.MockTransport(handler),
        sleep=(sleeps.append if sleeps is not None else lambda _s: None),
    )
    return ADAPTERS[name](http)


def fobj(i: int | str, **extra: Any) -> dict[str, Any]:
    return {
        "id": f"file-{i}",
        "object": "file",
        "bytes": 10,
        "created_at": 1_700_000_000,
        "filename": f"{i}.txt",
        "purpose": "assistants",
        **extra,
    }


def response(status: int, body: Any = None, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, json=body, headers=headers)


# --- error envelopes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "message", "code"),
    [
        (
            400,
            {"error": {"message": "exceeded the max file count", "type": "invalid_request_error"}},
            "exceeded the max file count",
            None,
        ),
        (
            404,
            {
                "error": {
                    "message": "No such File object: file-x",
                    "type": "invalid_request_error",
                    "param": "id",
                    "code": None,
                }
            },
            "No such File object: file-x",
            None,
        ),
        (400, {"code": 1210, "message": "bad purpose"}, "bad purpose", "1210"),  # Z.AI seed
        (400, {"error": {"code": "1210", "message": "bad purpose"}, "request_id": "r"}, "bad purpose", "1210"),
        (400, {"code": "Bad Request", "error": "File type not supported"}, "File type not supported", "Bad Request"),
        (
            400,
            {"error": {"message": "too big", "type": "invalid_request_error", "code": "file_too_large"}},
            "too big",
            "file_too_large",
        ),
    ],
    ids=["moonshot", "openai-404", "zai-seed", "zai-live", "xai-live", "xai-seed"],
)
def test_every_error_envelope_parses(status: int, body: Any, message: str, code: str | None) -> None:
    error = parse_error("p", response(status, body))
    assert error.message == message
    assert error.code == code
    assert error.status == status
    assert isinstance(error, FileNotFoundAtProvider) == (status == 404)


def test_non_json_error_body_and_secret_redaction() -> None:
    assert parse_error("p", httpx.Response(502, text="<html>Bad Gateway</html>")).message == "<html>Bad Gateway</html>"
    assert parse_error("p", httpx.Response(503)).message == "Service Unavailable"
    error = parse_error("p", response(401, {"error": {"message": f"Incorrect API key provided: {KEY}"}}), secret=KEY)
    assert KEY not in str(error) and "[redacted]" in error.message


@pytest.mark.parametrize(
    ("body", "retryable"),
    [
        ({"error": {"message": "rate limit reached", "type": "rate_limit_reached_error"}}, True),
        ({"error": {"code": "1302", "message": "concurrency too high"}}, True),
        ({"error": {"code": "1113", "message": "余额不足"}}, False),
        ({"error": {"code": "1308", "message": "usage limit"}}, False),
        ({"code": "Too Many Requests", "error": "resource has been exhausted"}, True),
        ({"code": "Too Many Requests", "error": "resource has been exhausted: spending limit reached"}, False),
        ({"error": {"message": "You exceeded your current quota", "type": "insufficient_quota"}}, False),
    ],
)
def test_429_is_retried_unless_money_ran_out(body: Any, retryable: bool) -> None:
    assert parse_error("p", response(429, body)).retryable is retryable


# --- retries --------------------------------------------------------------------------------------


def test_retry_after_variants_are_honoured() -> None:
    date = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    answers = [
        response(429, {"error": {"message": "slow down"}}, {"retry-after-ms": "250"}),
        response(429, {"error": {"message": "slow down"}}, {"retry-after": "2"}),
        response(503, {"error": {"message": "busy"}}, {"retry-after": date}),
        response(200, {"id": "file-1", "deleted": True}),
    ]
    sleeps: list[float] = []
    provider = adapter("openai", lambda _r: answers.pop(0), sleeps)
    assert provider.delete("file-1") is True
    assert sleeps[:2] == [0.25, 2.0]
    assert 25 < sleeps[2] <= 30


def test_retries_are_bounded_and_the_last_error_is_raised() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return response(500, {"error": {"message": "internal"}})

    with pytest.raises(ProviderError, match="internal") as info:
        adapter("openai", handler).retrieve("file-1")
    assert info.value.status == 500
    assert len(calls) == 4


def test_a_check_before_resending_sees_the_failure_and_can_stop_the_retry() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return response(429, {"error": {"message": "slow down"}}, {"Retry-After": "0"})

    seen: list[BaseException | None] = []

    def check(failed: BaseException | None) -> None:
        seen.append(failed)
        if len(seen) == 2:
            raise NotResent("no longer wanted")

    with checked_before_resending(check), pytest.raises(NotResent, match="no longer wanted"):
        adapter("openai", handler).delete("file-1")
    assert len(calls) == 2  # the first attempt, one retry; the second retry was not sent
    assert all(isinstance(e, ProviderError) and "slow down" in str(e) for e in seen)
    with pytest.raises(ProviderError, match="slow down"):  # outside, retries run as before
        adapter("openai", handler).delete("file-1")
    assert len(calls) == 2 + 4


def test_a_retry_after_beyond_the_cap_is_not_waited_for() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return response(429, {"error": {"message": "come back tomorrow"}}, {"retry-after": "86400"})

    with pytest.raises(ProviderError, match="come back tomorrow"):
        adapter("openai", handler).retrieve("file-1")
    assert len(calls) == 1


def test_exhausted_balance_is_not_retried() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return response(429, {"error": {"code": "1113", "message": "insufficient balance"}})

    with pytest.raises(ProviderError, match="insufficient balance"):
        adapter("zai", handler).delete("f")
    assert len(calls) == 1


def test_connect_errors_are_retried_then_reported() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        raise httpx.ConnectError("connection refused")

    with pytest.raises(ProviderError, match=r"cannot reach api\.example\.test"):
        adapter("moonshot", handler).retrieve("f")
    assert len(calls) == 4


def test_requests_in_flight_at_once_each_have_a_connection_and_close_ends_them_all() -> None:
    """Each request borrows a client of its own (HTTP's pool of clients): requests one after
    another reuse one connection, eight at once get eight and none waits for another, and
    close() closes every one."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    together = threading.Barrier(8, timeout=30)
    peers: set[tuple[str, int]] = set()
    closed = threading.Semaphore(0)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            peers.add(self.client_address)
            if self.path.endswith("/together"):
                together.wait()  # all eight are in flight at once, or this fails
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def finish(self) -> None:
            super().finish()
            closed.release()  # the client hung up (keep-alive connections end only so)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        http = HTTP("openai", f"http://127.0.0.1:{server.server_address[1]}/v1", KEY)
        for _ in range(5):
            http.request("GET", "one")
        assert len(peers) == 1
        threads = [threading.Thread(target=http.request, args=("GET", "together")) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert not together.broken and len(peers) == 8  # the first connection served one of them
        http.close()
        assert all(closed.acquire(timeout=10) for _ in range(8))
    finally:
        server.shutdown()
        server.server_close()


def test_auth_errors_name_the_variable_and_never_the_key() -> None:
    body = {"error": {"message": f"Incorrect API key provided: {KEY}", "type": "invalid_request_error"}}
    with pytest.raises(ProviderError) as info:
        adapter("openai", lambda _r: response(401, body)).retrieve("f")
    assert "check EXAMPLE_API_KEY" in str(info.value)
    assert KEY not in str(info.value)


def test_an_upload_is_never_resent_after_a_lost_response_or_5xx(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes(b"hello")
    for failure in (httpx.ReadTimeout("timed out"), response(502, {"error": {"message": "bad gateway"}})):
        calls: list[httpx.Request] = []

        def handler(
            request: httpx.Request, failure: Any = failure, calls: list[httpx.Request] = calls
        ) -> httpx.Response:
            calls.append(request)
            if isinstance(failure, Exception):
                raise failure
            return failure

        with pytest.raises(ResponseLost):
            adapter("openai", handler).upload(path, purpose="assistants")
        assert len(calls) == 1


def test_upload_streams_hashes_and_sends_expiry_fields(tmp_path: Path) -> None:
    path = tmp_path / "notes.md"
    path.write_bytes(b"x" * 200_000)
    seen: dict[str, Any] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen["length"] = request.headers["content-length"]
        body = request.read()
        seen["body"] = body
        return response(200, fobj("up", bytes=200_000, filename="notes.md"))

    up = adapter("openai", handler).upload(path, purpose="assistants", expires_after=7200)
    assert up.size == 200_000 and up.remote.id == "file-up"
    assert up.sha256 == hashlib.sha256(b"x" * 200_000).hexdigest()
    assert int(seen["length"]) == len(seen["body"])  # streamed with a known length, not chunked
    assert b'name="expires_after[anchor]"\r\n\r\ncreated_at' in seen["body"]
    assert b'name="expires_after[seconds]"\r\n\r\n7200' in seen["body"]
    xai_body: dict[str, bytes] = {}

    def xai_handler(request: httpx.Request) -> httpx.Response:
        xai_body["b"] = request.read()
        return response(200, fobj("x"))

    adapter("xai", xai_handler).upload(path, purpose="assistants", expires_after=7200)
    body = xai_body["b"]
    assert body.index(b'name="expires_after"') < body.index(b'name="file"')


# --- listing --------------------------------------------------------------------------------------


def test_moonshot_takes_one_page_and_never_follows_a_cursor() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return response(200, {"object": "list", "data": [fobj(i) for i in range(3)]})

    assert [f.id for f in adapter("moonshot", handler).list_files()] == ["file-0", "file-1", "file-2"]
    assert len(calls) == 1 and "after" not in str(calls[0].url)


def test_has_more_pages_follow_after_and_a_short_page_does_not_hide_the_rest() -> None:
    pages = {None: ([0, 1], True), "file-1": ([2], True), "file-2": ([3, 4], False)}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.params.get("purpose") != "agent":  # Z.AI is listed once per purpose
            return response(200, {"object": "list", "data": [], "has_more": False})
        ids, more = pages[request.url.params.get("after")]
        return response(200, {"object": "list", "data": [fobj(i) for i in ids], "has_more": more})

    assert [f.id for f in adapter("zai", handler).list_files()] == [f"file-{i}" for i in range(5)]


def test_a_missing_has_more_ends_the_listing() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return response(200, {"object": "list", "data": [fobj(1)]})

    assert len(list(adapter("openai", handler).list_files())) == 1
    assert len(calls) == 1


def test_a_repeating_cursor_is_an_incomplete_listing() -> None:
    counter = iter(range(1000))

    def handler(request: httpx.Request) -> httpx.Response:
        return response(200, {"object": "list", "data": [fobj(next(counter))], "has_more": True, "last_id": "x"})

    with pytest.raises(IncompleteListing, match="repeated the cursor"):
        list(adapter("openai", handler).list_files())


def test_an_empty_page_that_claims_more_is_an_incomplete_listing() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.params.get("after"):
            return response(200, {"object": "list", "data": [], "has_more": True})
        return response(200, {"object": "list", "data": [fobj(1)], "has_more": True})

    with pytest.raises(IncompleteListing, match="empty page"):
        list(adapter("openai", handler).list_files())


def test_a_failed_page_is_an_incomplete_listing() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.params.get("after"):
            return response(500, {"error": {"message": "boom"}})
        return response(200, {"object": "list", "data": [fobj(1)], "has_more": True})

    with pytest.raises(IncompleteListing, match="after 1 page"):
        list(adapter("openai", handler).list_files())


def _numbered_pages(count: int, size: int = 2) -> Callable[[httpx.Request], httpx.Response]:
    """OpenAI pages of ``size`` files, ``count`` of them."""

    def handler(request: httpx.Request) -> httpx.Response:
        after = request.url.params.get("after")
        n = 0 if after is None else int(after.split("-")[1]) // size + 1
        ids = range(n * size, (n + 1) * size)
        return response(200, {"object": "list", "data": [fobj(i) for i in ids], "has_more": n + 1 < count})

    return handler


def test_a_listing_sends_its_first_request_when_it_is_begun_not_when_read() -> None:
    sent = threading.Event()
    pages = _numbered_pages(3)

    def handler(request: httpx.Request) -> httpx.Response:
        sent.set()
        return pages(request)

    listing = adapter("openai", handler).list_pages()
    assert sent.wait(10), "nothing was asked before the first page was"
    assert [[f.id for f in page] for page in listing] == [[f"file-{2 * n}", f"file-{2 * n + 1}"] for n in range(3)]


def test_a_listing_fetches_only_a_few_pages_ahead_of_its_reader() -> None:
    pages = _numbered_pages(40)
    taking = 0  # pages the reader has asked for
    ahead: list[int] = []  # at each request: how many pages beyond those it would be
    fourth = threading.Event()

    def handler(request: httpx.Request) -> httpx.Response:
        ahead.append(len(ahead) + 1 - taking)
        if len(ahead) == LIST_AHEAD_PAGES + 1:
            fourth.set()
        return pages(request)

    listing = adapter("openai", handler).list_pages()
    assert fourth.wait(10)  # the reader has asked for nothing yet: the thread fills what it may
    read = []
    while True:
        taking += 1
        try:
            read += next(listing)
        except StopIteration:
            break
    assert len(read) == 80 and len(ahead) == 40
    # the one the reader waits for, those kept for it, and one on the wire: never more
    assert max(ahead) <= LIST_AHEAD_PAGES + 1


def test_a_closed_listing_asks_for_no_more_pages() -> None:
    calls: list[httpx.Request] = []
    first = threading.Event()
    pages = _numbered_pages(1000)

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        first.set()
        return pages(request)

    listing = adapter("openai", handler).list_pages()
    assert first.wait(10)
    assert len(next(listing)) == 2
    listing.close()
    listing.thread.join(10)
    assert not listing.thread.is_alive()
    assert len(calls) <= 1 + LIST_AHEAD_PAGES + 1
    with pytest.raises(RuntimeError, match="closed"):  # never taken for a listing read to its end
        next(listing)


def test_a_closed_listing_sends_no_retry_of_a_page_that_failed() -> None:
    calls: list[httpx.Request] = []
    waiting, released = threading.Event(), threading.Event()

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if request.url.params.get("after"):
            return response(500, {"error": {"message": "down"}})
        return response(200, {"object": "list", "data": [fobj(1)], "has_more": True})

    def sleep(_seconds: float) -> None:  # the wait before a retry, held until the listing is closed
        waiting.set()
        assert released.wait(10)

    http = HTTP("openai", "https://api.example.test/v1", KEY, transport=httpx.MockTransport(handler), sleep=sleep)
    listing = ADAPTERS["openai"](http).list_pages()
    assert [f.id for f in next(listing)] == ["file-1"]
    assert waiting.wait(10)  # page two failed once; its retry waits
    listing.close()
    released.set()
    listing.thread.join(10)
    assert not listing.thread.is_alive()
    assert len(calls) == 2  # page one, page two once: its retry was not sent


def test_a_page_that_fails_ahead_is_raised_after_the_pages_before_it() -> None:
    pages = _numbered_pages(10)

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.params.get("after") == "file-5":
            return response(400, {"error": {"message": "bad cursor"}})
        return pages(request)

    listing = adapter("openai", handler).list_pages()
    got = [next(listing), next(listing), next(listing)]
    assert [f.id for page in got for f in page] == [f"file-{i}" for i in range(6)]
    for _ in range(2):  # asked again, the same: never taken for the listing's end
        with pytest.raises(IncompleteListing, match="after 3 page"):
            next(listing)


def test_xai_pagination_token_style_follows_tokens_and_ends_without_one() -> None:
    seen: list[dict[str, str]] = []
    pages = {None: ([*range(100)], "t1"), "t1": ([100, 101], "t2"), "t2": ([102], None)}

    def handler(request: httpx.Request) -> httpx.Response:
        params = dict(request.url.params)
        seen.append(params)
        ids, token = pages[params.get("pagination_token")]
        return response(200, {"data": [fobj(i) for i in ids], "pagination_token": token})

    # The short page with a token (a server capping its page size) does not end the listing.
    assert len(list(adapter("xai", handler).list_files())) == 103
    assert seen[1]["pagination_token"] == "t1" and "after" not in seen[1]
    assert len(seen) == 3


def test_fresh_cursors_over_the_same_page_are_an_incomplete_listing() -> None:
    tokens = iter(range(1000))

    def handler(request: httpx.Request) -> httpx.Response:
        return response(200, {"data": [fobj(1), fobj(2)], "pagination_token": f"t{next(tokens)}"})

    with pytest.raises(IncompleteListing, match="same page twice"):
        list(adapter("xai", handler).list_files())


def test_xai_seed_style_pages_with_after() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.params.get("after") == "file-0":
            return response(200, {"object": "list", "data": [fobj(1)], "has_more": False})
        return response(200, {"object": "list", "data": [fobj(0)], "has_more": True})

    assert [f.id for f in adapter("xai", handler).list_files()] == ["file-0", "file-1"]


def test_zai_millisecond_timestamps_are_detected() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        data = [fobj(1, created_at=1_700_000_000_123)] if request.url.params.get("purpose") == "batch" else []
        return response(200, {"object": "list", "data": data, "has_more": False})

    [f] = adapter("zai", handler).list_files()
    assert f.created_at == datetime.fromtimestamp(1_700_000_000.123, UTC)


def test_delete_treats_404_as_already_gone_and_quotes_ids() -> None:
    paths = []

    def handler(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.raw_path)
        return response(404, {"error": {"message": "No such File object"}})

    assert adapter("openai", handler).delete("../admin?x=1") is False
    assert paths == [b"/v1/files/..%2Fadmin%3Fx%3D1"]


def test_a_listing_of_the_wrong_shape_is_incomplete() -> None:
    with pytest.raises(IncompleteListing, match="unexpected listing shape"):
        list(adapter("openai", lambda _r: response(200, {"files": []})).list_files())
    body = json.dumps({"data": "nope"})
    with pytest.raises(IncompleteListing):
        list(adapter("openai", lambda _r: httpx.Response(200, content=body)).list_files())
