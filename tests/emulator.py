"""A real-socket HTTP emulator of the providers' Files APIs, one flavor per instance.

Flavors: ``moonshot``, ``zai``, ``xai``, ``openai``, ``deepseek``, ``compatible`` (an
OpenAI-shaped service), ``anthropic`` and ``gemini``. Each models the quirks a client has to
survive: Moonshot's list that ignores cursors, Z.AI's two error envelopes, millisecond timestamps
and a list that shows nothing without a purpose, xAI's two list styles and its 413 above 50 MB,
OpenAI's ``expires_after[...]`` fields, DeepSeek's ``purpose`` that must come before the file,
Anthropic's headers and newest-first ``after_id`` pages, Gemini's resumable two-step upload, its
``{}`` for an empty project, its 403 for a file that does not exist and its 48-hour expiry;
per-flavor quotas and error shapes. Faults (status codes, Retry-After headers, responses lost
before or after the file was stored) are queued with :meth:`Emulator.inject`. The request that
stores a file is ``POST /files`` for every flavor (Gemini's: the ``upload, finalize`` step; its
``start`` step is ``POST /upload/files``).

Standard library only, so benchmarks can run it in a separate process with no extra installs::

    python -m tests.emulator --flavor moonshot --latency 0.05 --seed-files 500
"""

from __future__ import annotations

import argparse
import base64
import binascii
import bisect
import contextlib
import hashlib
import http
import json
import re
import secrets
import signal
import socket
import string
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

FLAVORS = ("moonshot", "zai", "xai", "openai", "deepseek", "anthropic", "gemini", "compatible")
#: the account the emulator's own ``api_key`` opens; :meth:`Emulator.add_key` adds others
MAIN = "main"

# None = the flavor takes any purpose.
_PURPOSES: dict[str, tuple[str, ...] | None] = {
    "moonshot": ("file-extract", "image", "video", "batch"),
    "zai": (
        "agent",
        "file-extract",
        "batch",
        "code-interpreter",
        "voice-clone-input",
        "retrieval",
        "fine-tune",
    ),
    "openai": ("assistants", "batch", "fine-tune", "vision", "user_data", "evals"),
    "deepseek": ("user_data", "text_recognition", "rich_layout_recognition"),
    "xai": None,
}
# Z.AI's list call takes these purposes (and shows nothing without one).
_ZAI_LISTED = ("agent", "batch", "file-extract", "code-interpreter")
# What the CLI seeds, so seeded files look like something the flavor would have accepted.
_SEED_PURPOSE = {
    "moonshot": "file-extract",
    "zai": "file-extract",
    "openai": "assistants",
    "compatible": "assistants",
    "deepseek": "user_data",
    "xai": "assistants",
    "anthropic": "",
    "gemini": "",
}

_EXPIRY_MIN, _EXPIRY_MAX = 3600, 2_592_000
_READ_CHUNK = 256 * 1024
_MAX_PART_HEADERS = 16 * 1024
_MAX_FIELD_BYTES = 64 * 1024
_LOWER_ALNUM = string.ascii_lowercase + string.digits
_ALNUM = string.ascii_letters + string.digits
# Z.AI answers with string business codes; these are the documented ones for each status.
_ZAI_CODES = {400: "1210", 401: "1000", 429: "1302", 500: "500"}
_EXTRA_REASONS = {435: "File Too Large", 529: "Overloaded"}
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_GOOGLE_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}
ANTHROPIC_VERSION = "2023-06-01"
ANTHROPIC_BETA = "files-api-2025-04-14"
#: Gemini deletes every file this long after its upload
GEMINI_LIFETIME = 48 * 3600
#: OpenAI expires batch files this long after upload unless the upload says otherwise
OPENAI_BATCH_LIFETIME = 30 * 86400
#: xAI's live API refuses files above this with a 413
XAI_MAX_FILE_BYTES = 50 * 10**6


@dataclass
class StoredFile:
    id: str
    filename: str
    bytes: int
    sha256: str
    purpose: str
    created_at: int
    expires_at: int | None = None
    status: str = "processed"
    content: bytes | None = None
    #: the provider account holding it (whose key sees it): "main" is the emulator's own key's
    owner: str = MAIN
    #: made by the provider (Anthropic's downloadable tool output, Gemini's GENERATED files)
    generated: bool = False
    mime_type: str = "text/plain"


@dataclass
class LoggedRequest:
    method: str
    path: str
    query: dict[str, str]
    status: int
    form: dict[str, str]
    #: the credential as presented (Authorization, x-api-key or x-goog-api-key)
    authorization: str | None
    #: the path as the flavor's routes see it ("/files"): see :meth:`Emulator.count`
    rel: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class _Fault:
    method: str
    path_prefix: str
    status: int
    body: dict[str, Any] | str | None
    headers: dict[str, str]
    remaining: int
    drop_response: bool
    after_store: bool


@dataclass
class _Reply:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


class _BodyError(Exception):
    """The request body could not be read to its end (client gone, bad framing)."""


def _status_text(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return _EXTRA_REASONS.get(status, "Error")


# --------------------------------------------------------------------------- multipart parsing

_PARAM_RE = re.compile(r";\s*([!#$%&'*+.^_`|~0-9A-Za-z-]+)\s*=\s*(?:\"((?:[^\"\\]|\\.)*)\"|([^;\s]*))")


def _header_params(value: str) -> tuple[str, dict[str, str]]:
    """Split ``type; a="b"; c=d`` into the lowercased first token and its parameters."""
    main, _, _rest = value.partition(";")
    params: dict[str, str] = {}
    for m in _PARAM_RE.finditer(value[len(main) :]):
        name = m.group(1).lower()
        if m.group(2) is not None:
            # Clients follow HTML5 here: quotes and newlines are percent-escaped, backslashes
            # doubled, rather than RFC 2616's backslash-escaped quotes. Undo both.
            raw = re.sub(r"\\(.)", r"\1", m.group(2))
            raw = raw.replace("%22", '"').replace("%0D", "\r").replace("%0A", "\n")
        else:
            raw = m.group(3)
        params[name] = raw
    ext = params.pop("filename*", None)
    if ext is not None:
        charset, _, rest = ext.partition("'")
        _lang, _, encoded = rest.partition("'")
        try:
            params["filename"] = unquote(encoded, encoding=charset or "utf-8", errors="replace")
        except LookupError:
            params["filename"] = unquote(encoded, errors="replace")
    return main.strip().lower(), params


@dataclass
class UploadedPart:
    filename: str
    size: int
    sha256: str
    content: bytes | None
    #: the filename as it stood in the part's header, escapes and all
    raw_filename: str = ""


class MultipartParser:
    """Incremental multipart/form-data parser: feed() it chunks, memory stays O(chunk).

    The part named ``file`` that carries a filename is hashed and counted as it streams (and
    kept only when ``keep_content``); other parts with a filename are skipped; the rest are
    text fields, recorded in arrival order.
    """

    _PREAMBLE, _AFTER_DELIM, _HEADERS, _BODY, _DONE, _ERROR = range(6)

    def __init__(self, boundary: bytes, *, keep_content: bool = False) -> None:
        self._delim = b"\r\n--" + boundary
        # A virtual CRLF in front makes the first delimiter look like all the others.
        self._buf = bytearray(b"\r\n")
        self._state = self._PREAMBLE
        self._keep = keep_content
        self._kind = ""  # "file", "field" or "skip" for the part being read
        self._name = ""
        self._filename = ""
        self._raw_filename = ""
        self._hasher = hashlib.sha256()
        self._size = 0
        self._data = bytearray()
        self.fields: dict[str, str] = {}
        self.file: UploadedPart | None = None
        #: the text fields that came before the file part (DeepSeek reads purpose only there)
        self.fields_before_file: frozenset[str] = frozenset()
        self.error: str | None = None

    @property
    def complete(self) -> bool:
        return self._state == self._DONE

    def feed(self, data: bytes) -> None:
        if self._state in (self._DONE, self._ERROR):
            return  # epilogue, or nothing more worth reading
        self._buf += data
        while self._step():
            pass

    def close(self) -> None:
        if self._state not in (self._DONE, self._ERROR):
            self._fail("body ended before the closing boundary")

    def _fail(self, why: str) -> bool:
        self.error = why
        self._state = self._ERROR
        self._buf.clear()
        return False

    def _step(self) -> bool:
        buf, delim = self._buf, self._delim
        if self._state == self._PREAMBLE:
            i = buf.find(delim)
            if i < 0:
                keep = len(delim) - 1
                if len(buf) > keep:
                    del buf[: len(buf) - keep]
                return False
            del buf[: i + len(delim)]
            self._state = self._AFTER_DELIM
            return True
        if self._state == self._AFTER_DELIM:
            # RFC 2046 allows transport padding between a boundary and its CRLF.
            while buf[:1] in (b" ", b"\t"):
                del buf[:1]
            if len(buf) < 2:
                return False
            if buf[:2] == b"--":
                self._state = self._DONE
                buf.clear()
                return False
            if buf[:2] != b"\r\n":
                return self._fail("garbage after a boundary")
            del buf[:2]
            self._state = self._HEADERS
            return True
        if self._state == self._HEADERS:
            if len(buf) < 2:
                return False
            if buf[:2] == b"\r\n":
                raw = b""
                del buf[:2]
            else:
                i = buf.find(b"\r\n\r\n")
                if i < 0:
                    if len(buf) > _MAX_PART_HEADERS:
                        return self._fail("part headers too long")
                    return False
                raw = bytes(buf[:i])
                del buf[: i + 4]
            self._start_part(raw)
            self._state = self._BODY
            return True
        if self._state == self._BODY:
            i = buf.find(delim)
            if i >= 0:
                self._emit(buf[:i])
                del buf[: i + len(delim)]
                self._end_part()
                self._state = self._AFTER_DELIM
                return True
            # Hold back what could be the start of a delimiter split across two chunks.
            safe = len(buf) - (len(delim) - 1)
            if safe > 0:
                self._emit(buf[:safe])
                del buf[:safe]
            return False
        return False

    def _start_part(self, raw: bytes) -> None:
        disposition = ""
        for line in raw.split(b"\r\n"):
            name, sep, value = line.partition(b":")
            if sep and name.strip().lower() == b"content-disposition":
                disposition = value.strip().decode("utf-8", "replace")
        _, params = _header_params(disposition)
        self._name = params.get("name", "")
        self._filename = params.get("filename", "")
        raw = re.search(r'filename="((?:[^"\\]|\\.)*)"', disposition)
        self._raw_filename = raw.group(1) if raw else self._filename
        if "filename" in params:
            self._kind = "file" if self._name == "file" and self.file is None else "skip"
            if self._kind == "file":
                self.fields_before_file = frozenset(self.fields)
        else:
            self._kind = "field"
        self._hasher = hashlib.sha256()
        self._size = 0
        self._data = bytearray()

    def _emit(self, chunk: bytearray) -> None:
        if not chunk:
            return
        if self._kind == "file":
            self._hasher.update(chunk)
            self._size += len(chunk)
            if self._keep:
                self._data += chunk
        elif self._kind == "field":
            if len(self._data) + len(chunk) > _MAX_FIELD_BYTES:
                self._fail("form field too large")
                return
            self._data += chunk

    def _end_part(self) -> None:
        if self._kind == "file":
            self.file = UploadedPart(
                filename=self._filename,
                raw_filename=self._raw_filename,
                size=self._size,
                sha256=self._hasher.hexdigest(),
                content=bytes(self._data) if self._keep else None,
            )
        elif self._kind == "field":
            self.fields[self._name] = self._data.decode("utf-8", "replace")
        self._data = bytearray()


# ------------------------------------------------------------------------------- HTTP plumbing


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], emulator: Emulator) -> None:
        self.emulator = emulator
        self.conns: set[socket.socket] = set()
        self.conns_lock = threading.Lock()
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client hanging up mid-request is routine in fault tests; only real bugs are noisy.
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)

    def close_connections(self) -> None:
        # Idle keep-alive handlers block in readline for ever; cutting their sockets is what
        # makes a stopped emulator really unreachable instead of serving pooled connections.
        with self.conns_lock:
            conns = list(self.conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; with Nagle on, the body waits for the
    # client's delayed ACK and every response costs ~40 ms.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        with self.server.conns_lock:
            self.server.conns.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        finally:
            with self.server.conns_lock:
                self.server.conns.discard(self.connection)

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_DELETE = do_PUT = do_PATCH = do_GET

    def _body_chunks(self) -> Iterator[bytes]:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                line = self.rfile.readline(1024)
                if not line.endswith(b"\n"):
                    raise _BodyError("chunk size line truncated")
                try:
                    size = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError as exc:
                    raise _BodyError("bad chunk size") from exc
                if size == 0:
                    while True:  # trailers, up to the blank line
                        line = self.rfile.readline(65536)
                        if not line:
                            raise _BodyError("trailers truncated")
                        if line in (b"\r\n", b"\n"):
                            return
                yield from self._read_exact(size)
                if self.rfile.readline(1024) not in (b"\r\n", b"\n"):
                    raise _BodyError("chunk not followed by CRLF")
        else:
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError as exc:
                raise _BodyError("bad Content-Length") from exc
            yield from self._read_exact(length)

    def _read_exact(self, n: int) -> Iterator[bytes]:
        while n > 0:
            if self.server.emulator.body_delay:
                time.sleep(self.server.emulator.body_delay)
            data = self.rfile.read(min(n, _READ_CHUNK))
            if not data:
                raise _BodyError("body truncated")
            n -= len(data)
            yield data

    def _read_form(self) -> MultipartParser | None:
        mtype, params = _header_params(self.headers.get("Content-Type", ""))
        boundary = params.get("boundary", "")
        parser = None
        if mtype == "multipart/form-data" and boundary:
            parser = MultipartParser(boundary.encode("utf-8"), keep_content=self.server.emulator.keep_content)
        for chunk in self._body_chunks():
            if parser is not None:
                parser.feed(chunk)
        if parser is not None:
            parser.close()
        return parser

    def _read_raw(self) -> UploadedPart:
        """A raw request body (Gemini's upload step), hashed and counted as it streams."""
        hasher, size = hashlib.sha256(), 0
        kept = bytearray() if self.server.emulator.keep_content else None
        for chunk in self._body_chunks():
            hasher.update(chunk)
            size += len(chunk)
            if kept is not None:
                kept += chunk
        return UploadedPart("", size, hasher.hexdigest(), bytes(kept) if kept is not None else None)

    def _read_json(self) -> Any:
        raw = bytearray()
        for chunk in self._body_chunks():
            if len(raw) + len(chunk) > _MAX_FIELD_BYTES:
                raise _BodyError("JSON body too large")
            raw += chunk
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return None

    def _dispatch(self) -> None:
        emu = self.server.emulator
        split = urlsplit(self.path)
        path = split.path
        query = dict(parse_qsl(split.query, keep_blank_values=True))
        rel = emu._relative(path, query)
        headers = {k.lower(): v for k, v in self.headers.items()}
        log = LoggedRequest(self.command, path, query, 0, {}, emu._credential(headers, query), rel, headers)
        with emu.lock:
            emu.arrived.append((self.command, path))  # seen, before it is answered
        if emu.latency > 0:
            time.sleep(emu.latency)
        body: Any = None
        try:
            if self.command == "POST" and rel == "/files":
                body = self._read_raw() if emu._family == "gemini" else self._read_form()
            elif self.command == "POST" and rel == "/upload/files":
                body = self._read_json()
            else:
                for _ in self._body_chunks():
                    pass
        except (_BodyError, OSError):
            emu._log(log)
            self.close_connection = True
            return
        if isinstance(body, MultipartParser):
            log.form = dict(body.fields)
        try:
            reply = emu._respond(self.command, rel, path, query, body, headers)
        except Exception:
            traceback.print_exc()
            reply = emu._err(500, "emulator internal error")
        if reply is None:
            emu._log(log)
            self._drop()
            return
        log.status = reply.status
        # Logged before the first byte goes out, so a client holding the response can rely
        # on the log (and on emulator.files) already reflecting its request.
        emu._log(log)
        self._send(reply)

    def _send(self, reply: _Reply) -> None:
        try:
            self.send_response(reply.status, _status_text(reply.status))
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(reply.body)))
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(reply.body)
        except OSError:
            self.close_connection = True

    def _drop(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)
        self.connection.close()


# ----------------------------------------------------------------------------------- emulator


class Emulator:
    """One provider's Files API on 127.0.0.1, served from a daemon thread."""

    def __init__(
        self,
        flavor: str,
        *,
        api_key: str = "test-key",
        page_size: int | None = None,
        max_files: int | None = None,
        max_total_bytes: int | None = None,
        max_file_bytes: int | None = None,
        latency: float = 0.0,
        keep_content: bool = False,
        ms_timestamps: bool = False,
        xai_style: str = "token",
        zai_envelope: str = "live",
        cycling_tokens: bool = False,
        inclusive_cursor: bool = False,
        filenames: str = "decoded",
        dedupe_content: bool = False,
        body_delay: float = 0.0,
    ) -> None:
        if flavor not in FLAVORS:
            raise ValueError(f"unknown flavor {flavor!r}; expected one of {FLAVORS}")
        if xai_style not in ("token", "seed"):
            raise ValueError("xai_style must be 'token' or 'seed'")
        if zai_envelope not in ("live", "seed"):
            raise ValueError("zai_envelope must be 'live' or 'seed'")
        if page_size is not None and page_size < 1:
            raise ValueError("page_size must be >= 1")
        self.flavor = flavor
        self.api_key = api_key
        self.page_size = page_size
        self.max_files = max_files
        self.max_total_bytes = max_total_bytes
        self.max_file_bytes = max_file_bytes
        self.latency = latency
        self.keep_content = keep_content
        self.ms_timestamps = ms_timestamps
        self.xai_style = xai_style
        self.zai_envelope = zai_envelope
        self.files: dict[str, StoredFile] = {}
        #: API key -> the account it opens: a teammate's key reaches another account at the same URL
        self.keys: dict[str, str] = {api_key: MAIN}
        #: ids the list endpoint leaves out though the files are there (a lagging index, a proxy
        #: that truncates): retrieve and delete still find them
        self.hidden: set[str] = set()
        #: filenames whose processing fails once stored (OpenAI-shaped status "error", Gemini FAILED)
        self.failing: set[str] = set()
        # xAI token style: every page hands out a fresh token, but the pages only alternate
        # between the first two (a server that cycles; a client must notice the repeated files).
        self.cycling_tokens = cycling_tokens
        # OpenAI style: ``after`` includes the cursor's own file (an off-by-one server), so each
        # page repeats the previous page's last file.
        self.inclusive_cursor = inclusive_cursor
        self._cycle_page = 0
        # How an uploaded filename is kept: "decoded" (the multipart escapes undone), "raw" (as it
        # stood in the header: %22, %0A, %09 and doubled backslashes, as some servers keep it) or
        # "nfd" (decoded, then Unicode-decomposed, as a macOS-backed store may hand it back).
        if filenames not in ("decoded", "raw", "nfd"):
            raise ValueError("filenames must be 'decoded', 'raw' or 'nfd'")
        self.filenames = filenames
        # Like some OpenAI-compatible servers: an upload of content it holds already answers with
        # that file instead of storing a second one.
        self.dedupe_content = dedupe_content
        # Seconds to wait per 256 KiB of request body read: a slow link, so a test can interrupt
        # an upload while its body is still on the way.
        self.body_delay = body_delay
        self.requests: list[LoggedRequest] = []
        #: (method, path) of every request as it arrives, before any latency or answer
        self.arrived: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.url = ""
        self._family = "openai" if flavor in ("compatible", "deepseek") else flavor
        self._prefix = {"zai": "/api/paas/v4", "gemini": "/v1beta", "deepseek": ""}.get(flavor, "/v1")
        # Anthropic, Gemini and DeepSeek are reached at the API's root, the others at /v1 (or Z.AI's).
        self._url_path = "" if flavor in ("anthropic", "gemini", "deepseek") else self._prefix
        #: Z.AI: a list without a purpose answers with an empty list, as the live API does
        self.zai_list_needs_purpose = True
        #: Gemini upload sessions: upload_id -> (display name, declared size, mime type, owner)
        self.sessions: dict[str, tuple[str, int, str, str]] = {}
        self._faults: list[_Fault] = []
        # Sort keys of every id ever stored: a cursor naming a file deleted in the meantime
        # must still resume at its place rather than end the listing early.
        self._cursor_keys: dict[str, tuple[int, str]] = {}
        # Every (created_at, id) ever stored, kept sorted, so a page costs a bisect rather than
        # a sort of the whole account; entries whose file is gone are skipped when read.
        self._order: list[tuple[int, str]] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._bind_port = 0

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Emulator:
        if self._server is not None:
            return self
        server = _Server(("127.0.0.1", self._bind_port), self)
        port = server.server_address[1]
        self.url = f"http://127.0.0.1:{port}{self._url_path}"
        # A short poll interval keeps stop() fast; the cost is a few idle wakeups a second.
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"emulator-{self.flavor}-{port}",
            daemon=True,
        )
        self._server = server
        self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        self._server = self._thread = None
        server.shutdown()
        server.server_close()
        server.close_connections()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ test helpers

    def add_file(
        self,
        filename: str,
        size: int,
        *,
        purpose: str | None = None,
        created_at: int | None = None,
        expires_at: int | None = None,
        owner: str = MAIN,
        file_id: str | None = None,
        generated: bool = False,
    ) -> StoredFile:
        """Put a file at the provider, as if uploaded (``file_id``: an id of the test's choosing;
        ``purpose``: the flavor's usual one; ``generated``: made by the provider's own tools).
        A Gemini file expires 48 hours after ``created_at`` unless ``expires_at`` says otherwise."""
        digest = hashlib.sha256(f"{filename}:{size}".encode()).hexdigest()
        purpose = _SEED_PURPOSE[self.flavor] if purpose is None else purpose
        with self.lock:
            stored = self._insert(filename, size, digest, purpose, created_at, expires_at, None, owner, file_id)
            stored.generated = generated
            return stored

    def seed(self, count: int, *, purpose: str | None = None) -> None:
        """``count`` files at once, as ``--seed-files`` puts them (``seed-000000.txt``, 1024 bytes
        and up): ids made from their number rather than drawn at random, and the listing order
        sorted once, so a million cost seconds rather than a million random ids and insertions."""
        purpose = _SEED_PURPOSE[self.flavor] if purpose is None else purpose
        now = int(time.time())
        with self.lock:
            for i in range(count):
                fid = self._seed_id(i)
                name, size = f"seed-{i:06d}.txt", 1024 + i
                digest = hashlib.sha256(f"{name}:{size}".encode()).hexdigest()
                stored = StoredFile(fid, name, size, digest, purpose, now, None, "processed", None)
                if self._family == "moonshot":
                    stored.status = "ok"
                if self._family == "gemini":
                    stored.expires_at = now + GEMINI_LIFETIME
                self.files[fid] = stored
                self._cursor_keys[fid] = (now, fid)
                self._order.append((now, fid))
            self._order.sort()

    def _seed_id(self, i: int) -> str:
        """A seeded file's id, shaped like the flavor's own (unlike a random one, it can be made a
        million times in a second)."""
        if self._family == "moonshot":
            return f"seed{i:016d}"
        if self.flavor == "deepseek":
            return f"file-api-{i:032x}"
        if self._family == "anthropic":
            return f"file_011seed{i:020d}"
        if self._family == "gemini":
            return f"files/seed{i:08d}"
        if self._family == "openai":
            return f"file-seed{i:020d}"
        if self._family == "xai":
            return f"file_{uuid.UUID(int=i)}"
        return f"seed_{i:032x}"

    def add_key(self, key: str, owner: str) -> None:
        """Accept another API key, opening account ``owner`` (a new one, or ``MAIN`` for a rotated key)."""
        with self.lock:
            self.keys[key] = owner

    def ids(self, owner: str = MAIN) -> set[str]:
        """The ids one account holds now."""
        with self.lock:
            return {fid for fid, f in self.files.items() if f.owner == owner}

    def inject(
        self,
        method: str,
        path_prefix: str,
        *,
        status: int = 500,
        body: dict[str, Any] | str | None = None,
        headers: dict[str, str] | None = None,
        times: int = 1,
        drop_response: bool = False,
        after_store: bool = False,
    ) -> None:
        if times < 1:
            return
        fault = _Fault(
            method=method.upper(),
            path_prefix=path_prefix,
            status=status,
            body=body,
            headers=dict(headers or {}),
            remaining=times,
            drop_response=drop_response,
            after_store=after_store,
        )
        with self.lock:
            self._faults.append(fault)

    def file_object(self, stored: StoredFile) -> dict[str, Any]:
        """A stored file as this flavor serves it (for tests that craft a listing page)."""
        return self._serve(stored)

    def count(self, method: str, path_prefix: str = "") -> int:
        """Logged requests with this method ("*" = any) whose path starts with path_prefix.

        The prefix may be relative to the API prefix ("/files") or absolute ("/v1/files").
        """
        method = method.upper()
        with self.lock:
            logged = list(self.requests)
        n = 0
        for req in logged:
            if method not in ("*", req.method):
                continue
            if req.path.startswith(path_prefix) or (req.rel is not None and req.rel.startswith(path_prefix)):
                n += 1
        return n

    def error_body(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        type_: str | None = None,
    ) -> dict[str, Any]:
        return self._envelope(status, message, code=code, type_=type_)

    # ------------------------------------------------------------------ internals

    def _log(self, entry: LoggedRequest) -> None:
        with self.lock:
            self.requests.append(entry)

    def _relative(self, path: str, query: dict[str, str] | None = None) -> str | None:
        if self._family == "gemini" and path.rstrip("/") == "/upload/v1beta/files":
            # The step that stores the file is POST /files, as for every flavor; starting is not.
            return "/files" if "upload_id" in (query or {}) else "/upload/files"
        prefix = self._prefix
        if prefix and path != prefix and not path.startswith(prefix + "/"):
            return None
        return path[len(prefix) :].rstrip("/") or "/"

    def _new_id(self) -> str:
        while True:
            if self._family == "moonshot":
                fid = "".join(secrets.choice(_LOWER_ALNUM) for _ in range(20))
            elif self.flavor == "deepseek":
                fid = "file-api-" + secrets.token_hex(16)
            elif self._family == "anthropic":
                fid = "file_011" + "".join(secrets.choice(_ALNUM) for _ in range(24))
            elif self._family == "gemini":
                fid = "files/" + "".join(secrets.choice(_LOWER_ALNUM) for _ in range(12))
            elif self._family == "openai":
                fid = "file-" + "".join(secrets.choice(_ALNUM) for _ in range(24))
            elif self._family == "xai":
                fid = f"file_{uuid.uuid4()}"
            else:
                fid = time.strftime("%Y%m%d_") + uuid.uuid4().hex
            if fid not in self.files and fid not in self._cursor_keys:
                return fid

    def _insert(
        self,
        filename: str,
        size: int,
        digest: str,
        purpose: str,
        created_at: int | None,
        expires_at: int | None,
        content: bytes | None,
        owner: str = MAIN,
        file_id: str | None = None,
    ) -> StoredFile:
        """Store a file; the caller holds self.lock."""
        fid = file_id or self._new_id()
        if self._family == "gemini" and expires_at is None:
            expires_at = (int(time.time()) if created_at is None else created_at) + GEMINI_LIFETIME
        stored = StoredFile(
            id=fid,
            filename=filename,
            bytes=size,
            sha256=digest,
            purpose=purpose,
            created_at=int(time.time()) if created_at is None else created_at,
            expires_at=expires_at,
            status="ok" if self._family == "moonshot" else "processed",
            content=content,
            owner=owner,
        )
        self.files[fid] = stored
        self._cursor_keys[fid] = (stored.created_at, fid)
        bisect.insort(self._order, (stored.created_at, fid))
        return stored

    def _take_fault(self, method: str, rel: str) -> _Fault | None:
        with self.lock:
            for fault in self._faults:
                if fault.method in ("*", method) and rel.startswith(fault.path_prefix):
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def _respond(
        self,
        method: str,
        rel: str | None,
        path: str,
        query: dict[str, str],
        body: Any,
        headers: dict[str, str],
    ) -> _Reply | None:
        """The reply to send, or None to drop the connection without answering."""
        if rel is None:
            return self._err(404, f"Invalid URL ({method} {path})")
        owner = self._check_auth(headers, query, rel)
        if isinstance(owner, _Reply):
            return owner
        fault = self._take_fault(method, rel)
        if fault is None:
            return self._route(method, rel, path, query, body, owner, headers)
        if fault.after_store:
            # The operation really happens; only its answer is replaced or lost.
            self._route(method, rel, path, query, body, owner, headers)
        return None if fault.drop_response else self._fault_reply(fault)

    def _credential(self, headers: dict[str, str], query: dict[str, str]) -> str | None:
        """The key as the request presents it, in the flavor's own header."""
        if self._family == "anthropic":
            return headers.get("x-api-key")
        if self._family == "gemini":
            return headers.get("x-goog-api-key") or query.get("key")
        return headers.get("authorization")

    def _fault_reply(self, fault: _Fault) -> _Reply:
        headers = {k: v for k, v in fault.headers.items() if k.lower() != "content-length"}
        ctype = next((v for k, v in headers.items() if k.lower() == "content-type"), None)
        headers = {k: v for k, v in headers.items() if k.lower() != "content-type"}
        if fault.body is None:
            body = self._envelope(fault.status, f"Emulated fault: {_status_text(fault.status)}")
            return _Reply(fault.status, _json(body), ctype or "application/json", headers)
        if isinstance(fault.body, str):
            return _Reply(fault.status, fault.body.encode(), ctype or "text/plain; charset=utf-8", headers)
        return _Reply(fault.status, _json(fault.body), ctype or "application/json", headers)

    def _check_auth(self, headers: dict[str, str], query: dict[str, str], rel: str) -> _Reply | str:
        """The account the request's key opens, or the error to answer."""
        if self._family == "anthropic":
            return self._anthropic_auth(headers)
        if self._family == "gemini":
            if rel == "/files" and "upload_id" in query:
                return MAIN  # an upload URL authenticates itself: its session knows the account
            key = (self._credential(headers, query) or "").strip()
            if not key:
                return self._err(403, "Method doesn't allow unregistered callers. Please use an API Key.")
            if key not in self.keys:
                return self._err(400, "API key not valid. Please pass a valid API key.")
            return self.keys[key]
        value = (headers.get("authorization") or "").strip()
        if not value:
            return self._err(
                401,
                "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.",
                zai_code="1001",
            )
        scheme, _, key = value.partition(" ")
        key = key.strip()
        if scheme.lower() == "bearer" and key in self.keys:
            return self.keys[key]
        # Real providers echo what they were given; the client must keep it out of its logs.
        presented = key if scheme.lower() == "bearer" else value
        return self._err(401, f"Incorrect API key provided: {presented}", zai_code="1002")

    def _anthropic_auth(self, headers: dict[str, str]) -> _Reply | str:
        key = (headers.get("x-api-key") or "").strip()
        if not key:
            return self._err(401, "x-api-key header is required")
        if key not in self.keys:
            return self._err(401, "invalid x-api-key")
        if headers.get("anthropic-version") != ANTHROPIC_VERSION:
            return self._err(400, "anthropic-version: header is required")
        betas = {b.strip() for b in headers.get("anthropic-beta", "").split(",")}
        if ANTHROPIC_BETA not in betas:
            return self._err(400, f"The Files API is in beta: send anthropic-beta: {ANTHROPIC_BETA}")
        return self.keys[key]

    def _envelope(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        type_: str | None = None,
        param: str | None = None,
        xai_code: str | None = None,
        zai_code: str | None = None,
    ) -> dict[str, Any]:
        family = self._family
        if family == "anthropic":
            return {
                "type": "error",
                "error": {"type": type_ or _ANTHROPIC_TYPES.get(status, "api_error"), "message": message},
                "request_id": "req_" + secrets.token_hex(12),
            }
        if family == "gemini":
            status_name = code or _GOOGLE_STATUS.get(status, "UNKNOWN")
            return {"error": {"code": status, "message": message, "status": status_name}}
        if family == "zai":
            zcode = code or zai_code or _ZAI_CODES.get(status, str(status))
            if self.zai_envelope == "seed":
                return {"code": int(zcode) if zcode.isdigit() else status, "message": message}
            return {"error": {"code": zcode, "message": message}, "request_id": str(uuid.uuid4())}
        if family == "xai" and self.xai_style == "token":
            return {"code": code or _status_text(status), "error": message}
        err: dict[str, Any] = {"message": message, "type": type_ or self._default_type(status)}
        if family == "moonshot":
            if code is not None:
                err["code"] = code
            return {"error": err}
        err["param"] = param
        err["code"] = code or xai_code or self._default_code(status)
        return {"error": err}

    def _default_type(self, status: int) -> str:
        family = self._family
        if status == 401:
            return {"moonshot": "invalid_authentication_error", "xai": "authentication_error"}.get(
                family, "invalid_request_error"
            )
        if status == 403:
            return "permission_denied_error"
        if status == 404:
            return {"moonshot": "resource_not_found_error", "xai": "not_found_error"}.get(
                family, "invalid_request_error"
            )
        if status == 429:
            return {"moonshot": "rate_limit_reached_error", "xai": "rate_limit_error"}.get(family, "requests")
        if status >= 500:
            return "server_error"
        return "invalid_request_error"

    def _default_code(self, status: int) -> str | None:
        if status == 401:
            return "invalid_api_key"
        if status == 429:
            return "rate_limit_exceeded"
        return None

    def _err(self, status: int, message: str, **kw: Any) -> _Reply:
        return _Reply(status, _json(self._envelope(status, message, **kw)))

    def _ok(self, payload: Any) -> _Reply:
        return _Reply(200, _json(payload))

    def _serve(self, f: StoredFile) -> dict[str, Any]:
        if self._family == "anthropic":
            return {
                "type": "file",
                "id": f.id,
                "filename": f.filename,
                "mime_type": f.mime_type,
                "size_bytes": f.bytes,
                "created_at": _rfc3339(f.created_at, digits=3),
                "downloadable": f.generated,
            }
        if self._family == "gemini":
            obj = {
                "name": f.id,
                "displayName": f.filename,
                "mimeType": f.mime_type,
                "sizeBytes": str(f.bytes),  # Google's JSON encoding of an int64
                "createTime": _rfc3339(f.created_at, digits=9),
                "updateTime": _rfc3339(f.created_at, digits=9),
                "expirationTime": _rfc3339(f.expires_at or f.created_at + GEMINI_LIFETIME, digits=9),
                # base64 of the hex digest's text, as the live API sends it
                "sha256Hash": base64.b64encode(f.sha256.encode()).decode(),
                "uri": f"{self.url}/v1beta/{f.id}",
                "state": "ACTIVE" if f.status != "error" else "FAILED",
                "source": "GENERATED" if f.generated else "UPLOADED",
            }
            return obj
        obj: dict[str, Any] = {
            "id": f.id,
            "object": "file",
            "bytes": f.bytes,
            "created_at": f.created_at,
            "filename": f.filename,
            "purpose": f.purpose,
        }
        if self._family == "moonshot":
            obj["status"] = f.status
            obj["status_details"] = ""
        elif self._family == "zai":
            if self.ms_timestamps:
                obj["created_at"] = f.created_at * 1000
        elif self.flavor == "deepseek":
            if f.expires_at is not None:  # present only when the upload asked for an expiry
                obj["expires_at"] = f.expires_at
        else:
            obj["status"] = f.status
            obj["expires_at"] = f.expires_at
        return obj

    # ------------------------------------------------------------------ routes

    def _route(
        self,
        method: str,
        rel: str,
        path: str,
        query: dict[str, str],
        body: Any,
        owner: str = MAIN,
        headers: dict[str, str] | None = None,
    ) -> _Reply:
        parts = rel.split("/")
        headers = headers or {}
        if self._family == "gemini":
            with self.lock:
                self._expire_due()
            if rel == "/upload/files" and method == "POST":
                return self._gemini_start(body, headers, owner)
            if rel == "/files" and method == "POST":
                return self._gemini_finalize(query, headers, body)
        if rel == "/files":
            if method == "GET":
                return self._list(query, owner)
            if method == "POST":
                return self._upload(body, owner)
        elif len(parts) == 3 and parts[1] == "files" and parts[2]:
            file_id = unquote(parts[2])
            if self._family == "gemini":
                file_id = "files/" + file_id
            if method == "GET":
                return self._retrieve(file_id, owner)
            if method == "DELETE":
                return self._delete(file_id, owner)
        elif len(parts) == 4 and parts[1] == "files" and parts[3] == "content" and method == "GET":
            return self._content(unquote(parts[2]), owner)
        return self._err(404, f"Invalid URL ({method} {path})")

    def _not_found(self, file_id: str) -> _Reply:
        if self._family == "gemini":
            # Google's answer for a file that does not exist, has expired, or is another project's.
            short = file_id.removeprefix("files/")
            return self._err(403, f"You do not have permission to access the File {short} or it may not exist.")
        if self._family == "openai":
            return self._err(404, f"No such File object: {file_id}", param="id")
        if self._family == "xai":
            return self._err(404, f"No file found with id '{file_id}'", xai_code="file_not_found")
        return self._err(404, f"File not found: {file_id}")

    def _owned(self, file_id: str, owner: str) -> StoredFile | None:
        """The file, if this account holds it (another account's file is not found); caller holds the lock."""
        stored = self.files.get(file_id)
        return stored if stored is not None and stored.owner == owner else None

    def _retrieve(self, file_id: str, owner: str = MAIN) -> _Reply:
        if self._family == "zai":
            # Z.AI's SDK has no retrieve; clients must not depend on it.
            return self._err(404, "Not Found")
        with self.lock:
            stored = self._owned(file_id, owner)
        return self._not_found(file_id) if stored is None else self._ok(self._serve(stored))

    def _delete(self, file_id: str, owner: str = MAIN) -> _Reply:
        with self.lock:
            stored = self._owned(file_id, owner)
            if stored is not None:
                del self.files[file_id]
                self._cursor_keys[file_id] = (stored.created_at, stored.id)
        if stored is None:
            return self._not_found(file_id)
        if self._family == "xai":
            return self._ok({"id": file_id, "deleted": True})
        if self._family == "anthropic":
            return self._ok({"id": file_id, "type": "file_deleted"})
        if self._family == "gemini":
            return self._ok({})  # google.protobuf.Empty
        return self._ok({"id": file_id, "object": "file", "deleted": True})

    def _content(self, file_id: str, owner: str = MAIN) -> _Reply:
        with self.lock:
            stored = self._owned(file_id, owner)
        if stored is None:
            return self._not_found(file_id)
        if stored.content is not None:
            return _Reply(200, stored.content, "application/octet-stream")
        text = f"emulated content of {stored.filename}\n".encode()
        return _Reply(200, text, "text/plain; charset=utf-8")

    # ------------------------------------------------------------------ list

    def _limit(self, query: dict[str, str], default: int, low: int, high: int | None) -> int | _Reply:
        raw = query.get("limit")
        if raw is None or raw == "":
            return default
        try:
            value = int(raw)
        except ValueError:
            return self._err(400, f"Invalid 'limit': expected an integer, got {raw!r}.", param="limit")
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f">= {low}"
            return self._err(400, f"Invalid 'limit': must be {bound}, got {value}.", param="limit")
        return value

    def _page(
        self,
        *,
        purpose: str | None,
        desc: bool,
        after: str | None,
        limit: int,
        owner: str = MAIN,
    ) -> tuple[list[dict[str, Any]], bool]:
        """One page of the account's listed files in (created_at, id) order after the cursor id,
        and whether more follow."""
        with self.lock:
            cursor_key: tuple[int, str] | None = None
            if after:
                cursor = self.files.get(after)
                cursor_key = (cursor.created_at, cursor.id) if cursor else self._cursor_keys.get(after)
                if cursor_key is None:
                    return [], False
            order = self._order
            inclusive = self.inclusive_cursor and cursor_key is not None
            if desc:
                start = len(order) if cursor_key is None else bisect.bisect_left(order, cursor_key)
                positions: Iterable[int] = range(start - (0 if inclusive else 1), -1, -1)
            else:
                start = 0 if cursor_key is None else bisect.bisect_right(order, cursor_key)
                positions = range(start - (1 if inclusive else 0), len(order))
            page: list[StoredFile] = []
            more = False
            for i in positions:
                created_at, fid = order[i]
                f = self.files.get(fid)
                if f is None or f.created_at != created_at or (purpose and f.purpose != purpose):
                    continue
                if f.owner != owner or fid in self.hidden:
                    continue
                if len(page) == limit:
                    more = True
                    break
                page.append(f)
            return [self._serve(f) for f in page], more

    def _cap(self, limit: int) -> int:
        # Like a compatible service that silently caps page size below what was asked.
        return limit if self.page_size is None else min(limit, self.page_size)

    def _list(self, query: dict[str, str], owner: str = MAIN) -> _Reply:
        family = self._family
        if family == "anthropic":
            return self._list_anthropic(query, owner)
        if family == "gemini":
            return self._list_gemini(query, owner)
        if family == "moonshot":
            # Everything at once; cursors, limits and page_size are all ignored.
            data, _ = self._page(purpose=None, desc=False, after=None, limit=sys.maxsize, owner=owner)
            return self._ok({"object": "list", "data": data})
        if family == "openai":
            deepseek = self.flavor == "deepseek"
            order = query.get("order") or ("asc" if deepseek else "desc")
            if order not in ("asc", "desc"):
                return self._err(400, f"Invalid 'order': expected 'asc' or 'desc', got {order!r}.", param="order")
            limit = self._limit(query, 1000, 1, 1000) if deepseek else self._limit(query, 10_000, 1, 10_000)
            if isinstance(limit, _Reply):
                return limit
            data, more = self._page(
                purpose=query.get("purpose") or None,
                desc=order == "desc",
                after=query.get("after") or None,
                limit=self._cap(limit),
                owner=owner,
            )
            return self._ok(
                {
                    "object": "list",
                    "data": data,
                    "first_id": data[0]["id"] if data else None,
                    "last_id": data[-1]["id"] if data else None,
                    "has_more": more,
                }
            )
        if family == "zai" or self.xai_style == "seed":
            limit = self._limit(query, 20, 1, 100 if family == "zai" else None)
            if isinstance(limit, _Reply):
                return limit
            if family == "zai" and self.zai_list_needs_purpose and not query.get("purpose"):
                # The live API: purpose is required, and a list without one is empty, not an error.
                return self._ok({"object": "list", "data": [], "has_more": False})
            data, more = self._page(
                purpose=query.get("purpose") or None,
                desc=query.get("order") == "desc",
                after=query.get("after") or None,
                limit=self._cap(limit),
                owner=owner,
            )
            return self._ok({"object": "list", "data": data, "has_more": more})
        return self._list_xai_token(query, owner)

    def _list_anthropic(self, query: dict[str, str], owner: str) -> _Reply:
        """Newest first, ``after_id`` to go on (to older files), ``before_id`` to go back."""
        limit = self._limit(query, 20, 1, 1000)
        if isinstance(limit, _Reply):
            return limit
        after, before = query.get("after_id") or None, query.get("before_id") or None
        if after and before:
            return self._err(400, "after_id and before_id cannot be used together")
        if before:
            data, more = self._page(purpose=None, desc=False, after=before, limit=self._cap(limit), owner=owner)
            data.reverse()
        else:
            data, more = self._page(purpose=None, desc=True, after=after, limit=self._cap(limit), owner=owner)
        return self._ok(
            {
                "data": data,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
                "has_more": more,
            }
        )

    def _list_gemini(self, query: dict[str, str], owner: str) -> _Reply:
        """``pageSize`` (10 by default, at most 100: more is taken as 100), an opaque ``pageToken``;
        empty fields left out, so an empty project answers ``{}``."""
        raw = query.get("pageSize") or "10"
        try:
            size = min(int(raw), 100)
        except ValueError:
            return self._err(400, f"Invalid value at 'page_size' (TYPE_INT32), {raw!r}")
        if size < 1:
            size = 10
        after = None
        token = query.get("pageToken")
        if token:
            after = _decode_token(token)
            if after is None:
                return self._err(400, "Invalid page token.")
        data, more = self._page(purpose=None, desc=True, after=after, limit=self._cap(size), owner=owner)
        body: dict[str, Any] = {}
        if data:
            body["files"] = data
        if more and data:
            body["nextPageToken"] = _encode_token(data[-1]["name"])
        return self._ok(body)

    def _list_xai_token(self, query: dict[str, str], owner: str = MAIN) -> _Reply:
        limit = self._limit(query, 100, 1, 100)
        if isinstance(limit, _Reply):
            return limit
        after = None
        token = query.get("pagination_token")
        if token:
            after = _decode_token(token)
            if after is None:
                return self._err(400, f"Invalid pagination_token: {token!r}")
        effective = self._cap(limit)
        if self.cycling_tokens:
            with self.lock:
                which, self._cycle_page = self._cycle_page, (self._cycle_page + 1) % 2
            first, _ = self._page(purpose=None, desc=False, after=None, limit=effective, owner=owner)
            data = first
            if which and first:
                data, _ = self._page(purpose=None, desc=False, after=first[-1]["id"], limit=effective, owner=owner)
            return self._ok({"data": data, "pagination_token": _encode_token(secrets.token_hex(8))})
        data, _ = self._page(purpose=None, desc=query.get("order") == "desc", after=after, limit=effective, owner=owner)
        # The live API hands out a token for every full page, even when nothing follows, so a
        # client must also stop on an empty page.
        next_token = _encode_token(data[-1]["id"]) if data and len(data) == effective else None
        return self._ok({"data": data, "pagination_token": next_token})

    # ------------------------------------------------------------------ upload

    def _upload(self, form: MultipartParser | None, owner: str = MAIN) -> _Reply:
        family = self._family
        if form is not None and form.error is not None:
            return self._err(400, f"Invalid multipart/form-data body: {form.error}")
        part = form.file if form is not None else None
        if part is None:
            return self._err(400, "Missing required parameter: 'file'.", param="file")
        fields = form.fields if form is not None else {}
        purpose = fields.get("purpose", "")
        if family == "anthropic":
            purpose = ""  # its files have none; a purpose field is ignored
        elif not purpose:
            if family != "xai":
                return self._err(400, "Missing required parameter: 'purpose'.", param="purpose")
            purpose = "assistants"
        elif self.flavor == "deepseek" and form is not None and "purpose" not in form.fields_before_file:
            return self._err(400, "'purpose' must come before 'file' in the form", param="purpose")
        allowed = _PURPOSES.get(self.flavor, _PURPOSES.get(family)) if family != "anthropic" else None
        if allowed is not None and purpose not in allowed:
            choices = ", ".join(repr(p) for p in allowed)
            return self._err(
                400,
                f"Invalid value for 'purpose': {purpose!r}. Supported values are: {choices}.",
                param="purpose",
            )
        expiry = self._expiry(fields)
        if isinstance(expiry, _Reply):
            return expiry
        if expiry is None and self.flavor == "openai" and purpose == "batch":
            expiry = OPENAI_BATCH_LIFETIME  # "files with purpose=batch expire after 30 days" by default
        if part.size == 0:
            message = "File size is zero" if family == "moonshot" else "File is empty."
            return self._err(400, message, param="file")
        too_large = self._too_large_for(part.size)
        if too_large is not None:
            return too_large
        return self._store(part, purpose, expiry, owner, self._stored_name(part))

    def _too_large_for(self, size: int) -> _Reply | None:
        limit = self.max_file_bytes
        if limit is None and self._family == "xai" and self.xai_style == "token":
            limit = XAI_MAX_FILE_BYTES
        return self._too_large(limit) if limit is not None and size > limit else None

    def _store(
        self, part: UploadedPart, purpose: str, expiry: int | None, owner: str, name: str, mime: str = "text/plain"
    ) -> _Reply:
        failure: _Reply | None = None
        stored: StoredFile | None = None
        with self.lock:
            held = [f for f in self.files.values() if f.owner == owner]
            twin = next((f for f in held if f.sha256 == part.sha256), None) if self.dedupe_content else None
            if twin is not None:
                return self._ok(self._serve(twin))  # "you sent this before": the file it already had
            if self.max_files is not None and len(held) >= self.max_files:
                failure = self._quota_error(f"exceeded the max file count {self.max_files}")
            elif self.max_total_bytes is not None and (sum(f.bytes for f in held) + part.size > self.max_total_bytes):
                failure = self._quota_error(f"exceeded the max total file size {self.max_total_bytes} bytes")
            else:
                now = int(time.time())
                stored = self._insert(
                    name,
                    part.size,
                    part.sha256,
                    purpose,
                    now,
                    now + expiry if expiry is not None else None,
                    part.content,
                    owner,
                )
                stored.mime_type = mime
                if name in self.failing:
                    stored.status = "error"  # stored, and its processing failed (Gemini: FAILED)
        if stored is None:
            return failure or self._err(500, "upload not stored")
        served = self._serve(stored)
        if self._family == "gemini":
            return _Reply(200, _json({"file": served}), headers={"X-Goog-Upload-Status": "final"})
        return self._ok(served)

    # ------------------------------------------------------------------ Gemini's resumable upload

    def _gemini_start(self, body: Any, headers: dict[str, str], owner: str) -> _Reply:
        if headers.get("x-goog-upload-protocol") != "resumable" or headers.get("x-goog-upload-command") != "start":
            return self._err(400, "Expected X-Goog-Upload-Protocol: resumable and X-Goog-Upload-Command: start")
        try:
            size = int(headers.get("x-goog-upload-header-content-length", ""))
        except ValueError:
            return self._err(400, "X-Goog-Upload-Header-Content-Length is required")
        meta = body.get("file") if isinstance(body, dict) else None
        meta = meta if isinstance(meta, dict) else {}
        name = meta.get("display_name") or meta.get("displayName") or ""
        mime = headers.get("x-goog-upload-header-content-type") or "application/octet-stream"
        upload_id = secrets.token_urlsafe(24)
        with self.lock:
            self.sessions[upload_id] = (str(name), size, mime, owner)
        url = f"{self.url}/upload/v1beta/files?upload_id={upload_id}&upload_protocol=resumable"
        return _Reply(200, b"", "text/plain", {"X-Goog-Upload-URL": url, "X-Goog-Upload-Status": "active"})

    def _gemini_finalize(self, query: dict[str, str], headers: dict[str, str], part: Any) -> _Reply:
        upload_id = query.get("upload_id", "")
        with self.lock:
            session = self.sessions.pop(upload_id, None)
        if session is None:
            return self._err(404, "No such upload session (it was finalized, or never started)", code="NOT_FOUND")
        name, declared, mime, owner = session
        command = {c.strip() for c in headers.get("x-goog-upload-command", "").split(",")}
        if command != {"upload", "finalize"} or headers.get("x-goog-upload-offset") != "0":
            return self._err(400, "Expected one X-Goog-Upload-Command: upload, finalize at X-Goog-Upload-Offset: 0")
        if not isinstance(part, UploadedPart) or part.size != declared:
            got = part.size if isinstance(part, UploadedPart) else 0
            return self._err(400, f"Upload size {got} does not match the declared {declared}")
        if part.size == 0:
            return self._err(400, "File is empty.")
        too_large = self._too_large_for(part.size)
        if too_large is not None:
            return too_large
        return self._store(part, "", None, owner, name, mime)

    def _expire_due(self) -> None:
        """Gemini deletes every file at its expirationTime; the caller holds the lock."""
        now = time.time()
        for fid in [fid for fid, f in self.files.items() if f.expires_at is not None and f.expires_at <= now]:
            del self.files[fid]

    def _stored_name(self, part: UploadedPart) -> str:
        if self.filenames == "raw":
            return part.raw_filename
        if self.filenames == "nfd":
            import unicodedata

            return unicodedata.normalize("NFD", part.filename)
        return part.filename

    def _too_large(self, limit: int) -> _Reply:
        family = self._family
        if family == "moonshot":
            return self._err(400, "File size is too large")
        if family == "zai":
            return self._err(435, f"File size exceeds the limit of {limit} bytes")
        if family == "xai":
            if self.xai_style == "token":
                return self._err(413, f"file exceeds {limit // 10**6} MB")
            return self._err(
                400,
                f"File size exceeds the maximum allowed size of {limit} bytes",
                xai_code="file_too_large",
            )
        if family == "anthropic":
            return self._err(413, f"File size exceeds the maximum of {limit} bytes")
        if family == "gemini":
            return self._err(400, f"File size exceeds the limit of {limit} bytes")
        return self._err(400, f"File is too large. The maximum file size is {limit} bytes.", param="file")

    def _quota_error(self, what: str) -> _Reply:
        if self._family == "openai":
            return self._err(400, f"You have exceeded your file storage quota ({what}). Delete some files.")
        if self._family == "moonshot":
            return self._err(400, f"You have {what}, please delete some files")
        return self._err(400, f"You have {what}")

    def _expiry(self, fields: dict[str, str]) -> int | _Reply | None:
        if self._family == "openai":
            if "expires_after" in fields:
                return self._err(
                    400,
                    "Invalid type for 'expires_after': expected an object with 'anchor' and "
                    "'seconds', but got a string instead.",
                    param="expires_after",
                )
            anchor = fields.get("expires_after[anchor]")
            seconds = fields.get("expires_after[seconds]")
            if anchor is None and seconds is None:
                return None
            if anchor != "created_at":
                return self._err(
                    400,
                    f"Invalid value for 'expires_after.anchor': expected 'created_at', got {anchor!r}.",
                    param="expires_after.anchor",
                )
            return self._expiry_seconds(seconds, "expires_after.seconds")
        if self._family == "xai":
            # Only the flat field counts; the bracketed OpenAI form is silently ignored.
            raw = fields.get("expires_after")
            return None if raw is None else self._expiry_seconds(raw, "expires_after")
        return None

    def _expiry_seconds(self, raw: str | None, param: str) -> int | _Reply:
        try:
            seconds = int(raw or "")
        except ValueError:
            seconds = -1
        if not _EXPIRY_MIN <= seconds <= _EXPIRY_MAX:
            return self._err(
                400,
                f"Invalid '{param}': expected an integer between {_EXPIRY_MIN} and {_EXPIRY_MAX}, got {raw!r}.",
                param=param,
            )
        return seconds


def _rfc3339(seconds: int, *, digits: int) -> str:
    """Unix seconds as RFC 3339 in UTC with a Z, and ``digits`` fractional digits (Google: 9)."""
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return f"{text}.{'0' * digits}Z" if digits else f"{text}Z"


def _json(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def _encode_token(file_id: str) -> str:
    raw = json.dumps({"after": file_id}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_token(token: str) -> str | None:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        after = json.loads(raw)["after"]
    except (binascii.Error, ValueError, KeyError, TypeError):
        return None
    return after if isinstance(after, str) else None


# ---------------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m tests.emulator",
        description="Serve one provider flavor of the Files API emulator until killed.",
    )
    ap.add_argument("--flavor", required=True, choices=FLAVORS)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--latency", type=float, default=0.0)
    ap.add_argument("--page-size", type=int, default=None)
    ap.add_argument("--seed-files", type=int, default=0)
    ap.add_argument("--api-key", default="test-key")
    ap.add_argument("--max-files", type=int, default=None)
    ap.add_argument("--max-total-bytes", type=int, default=None)
    ap.add_argument("--max-file-bytes", type=int, default=None)
    ap.add_argument("--keep-content", action="store_true")
    ap.add_argument("--ms-timestamps", action="store_true")
    ap.add_argument("--xai-style", choices=("token", "seed"), default="token")
    ap.add_argument("--zai-envelope", choices=("live", "seed"), default="live")
    args = ap.parse_args(argv)

    emu = Emulator(
        args.flavor,
        api_key=args.api_key,
        page_size=args.page_size,
        max_files=args.max_files,
        max_total_bytes=args.max_total_bytes,
        max_file_bytes=args.max_file_bytes,
        latency=args.latency,
        keep_content=args.keep_content,
        ms_timestamps=args.ms_timestamps,
        xai_style=args.xai_style,
        zai_envelope=args.zai_envelope,
    )
    emu._bind_port = args.port
    emu.seed(args.seed_files)

    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    emu.start()
    print(f"URL {emu.url}", flush=True)
    try:
        stopping.wait()
    except KeyboardInterrupt:
        pass
    finally:
        emu.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
