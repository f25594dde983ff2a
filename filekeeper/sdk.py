"""Track the uploads and deletes the official OpenAI SDK makes, by giving it filekeeper's HTTP client.

    client = openai.OpenAI(base_url=..., api_key=..., http_client=filekeeper.http_client(provider="moonshot"))

The client's transport sees every request the SDK sends. ``POST {base}/files`` goes through the
same upload workflow as ``filekeeper upload`` (:mod:`.upload`: checked and reserved before a byte
is sent, settled as ``active`` or ``failed``, a lost answer looked for in the listing), with the
SDK's request as the bytes to send; ``DELETE {base}/files/{id}`` through the delete workflow
(:mod:`.delete`). Everything else passes through untouched, streamed both ways.

A refusal by quota never reaches the provider: the SDK gets a 400 in the OpenAI error shape,
whose message names the limit, marked ``x-should-retry: false``. When the SDK retries an upload
(on a timeout or a 5xx, with ``x-stainless-retry-count``), an earlier attempt whose fate was left
unknown is settled first against the listing: a retry never reserves twice, and never sends a
second copy of a file that landed.

The client is the one the installed SDK expects: an ``httpx2`` client for openai 3.x, an
``httpx`` one for openai 1.x and 2.x. The form fields are read from the HTTP library's own
multipart stream (``MultipartStream.fields``, as in httpx 0.27-0.28 and httpx2 2.x).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from types import ModuleType
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from .errors import FilekeeperError, FileNotFoundAtProvider, ProviderError, QuotaExceeded, ResponseLost, UsageError

if TYPE_CHECKING:
    from .config import Account
    from .keeper import Keeper
    from .providers import Provider, Uploaded
    from .providers.base import HashingReader
    from .quota import EvictMode

#: keyword arguments of ``Client`` that configure connections: they go to the transport beneath
_TRANSPORT_ARGS = ("verify", "cert", "http1", "http2", "limits", "proxy", "uds", "local_address", "retries")
_FILE_ID = re.compile(r"/files/([^/]+)$")


def http_client(
    *,
    provider: str | None = None,
    account: str | None = None,
    evict: EvictMode | None = None,
    **kwargs: Any,
) -> Any:
    """An HTTP client for ``openai.OpenAI(http_client=...)`` that records the SDK's uploads and
    deletes in the ledger of ``account`` (or ``provider``'s implicit account), and refuses an
    upload that would not fit before anything is sent. ``evict`` ("expired" or "oldest") makes
    room instead of refusing, as ``filekeeper upload --evict`` does. Other keyword arguments are
    the HTTP client's own (``timeout``, ``proxy``, ``verify``, ``limits``, ``transport``, …)."""
    return _client(provider, account, evict, kwargs, asynchronous=False)


def async_http_client(
    *,
    provider: str | None = None,
    account: str | None = None,
    evict: EvictMode | None = None,
    **kwargs: Any,
) -> Any:
    """:func:`http_client` for ``openai.AsyncOpenAI``: an ``AsyncClient``. The ledger is written
    from a worker thread, so the event loop is not held while it is."""
    return _client(provider, account, evict, kwargs, asynchronous=True)


def _client(
    provider: str | None, account: str | None, evict: EvictMode | None, kwargs: dict[str, Any], *, asynchronous: bool
) -> Any:
    lib = library()
    tracker = _Tracker(provider, account, evict)
    transport_args = {k: kwargs.pop(k) for k in _TRANSPORT_ARGS if k in kwargs}
    if "trust_env" in kwargs:
        transport_args["trust_env"] = kwargs["trust_env"]
    if asynchronous:
        inner = kwargs.pop("transport", None) or lib.AsyncHTTPTransport(**transport_args)
        return lib.AsyncClient(transport=_async_transport(lib)(inner, tracker), **kwargs)
    inner = kwargs.pop("transport", None) or lib.HTTPTransport(**transport_args)
    return lib.Client(transport=_sync_transport(lib)(inner, tracker), **kwargs)


def library() -> ModuleType:
    """The HTTP library the installed openai SDK runs on: httpx2 from openai 3.0, httpx before
    (and without the SDK, httpx2 where it is installed)."""
    try:
        major = int(version("openai").split(".")[0])
    except (PackageNotFoundError, ValueError):
        major = None
    name = "httpx" if major is not None and major < 3 else "httpx2"
    try:
        lib = import_module(name)
    except ImportError:
        if major is not None:
            raise UsageError(f"openai {version('openai')} runs on {name}, which is not installed") from None
        lib = import_module("httpx")
    return lib


# --- what the transports share -----------------------------------------------------------------------


@dataclass
class _Tracker:
    """One client's account, ledger and memory of uploads whose fate is still unknown."""

    provider: str | None
    account_name: str | None
    evict: EvictMode | None
    keeper: Keeper = field(init=False)
    account: Account = field(init=False)
    _remote: Provider | None = field(default=None, init=False)
    _key: str | None = field(default=None, init=False)
    _account_id: int | None = field(default=None, init=False)
    #: (filename, size, purpose) -> ledger ids of reservations left pending by a lost answer
    _unknown: dict[tuple[str, int, str], list[int]] = field(default_factory=dict, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def __post_init__(self) -> None:
        from .keeper import Keeper
        from .providers import ADAPTERS
        from .providers.openai import OpenAIShaped

        if self.evict not in (None, "expired", "oldest"):
            raise UsageError(f"evict must be 'expired' or 'oldest', not {self.evict!r}")
        self.keeper = Keeper()
        self.account = self.keeper.account(self.provider, self.account_name)
        if not issubclass(ADAPTERS[self.account.provider], OpenAIShaped):
            raise UsageError(
                f"{self.account.provider}'s Files API is not OpenAI-shaped: the OpenAI SDK cannot upload there "
                "(use `filekeeper upload`, or its own SDK and `filekeeper reconcile --adopt`)"
            )

    # --- where a request goes -----------------------------------------------------------------------

    def route(self, request: Any) -> tuple[str, str | None]:
        """("upload" | "delete" | "elsewhere" | "pass", file id)."""
        from .config import identity_url

        method, path = request.method, request.url.path.rstrip("/")
        if method == "POST" and path.endswith("/files"):
            kind, file_id, base = "upload", None, path[: -len("/files")]
        elif method == "DELETE" and (m := _FILE_ID.search(path)):
            kind, file_id, base = "delete", unquote(m.group(1)), path[: m.start()]
        else:
            return "pass", None
        url = request.url
        origin = f"{url.scheme}://{url.host}" + (f":{url.port}" if url.port else "")
        mine, here = identity_url(self.account.base_url), identity_url(origin + base)
        if here == mine:
            return kind, file_id
        if here.startswith(mine + "/") and here[len(mine) + 1 :].count("/") >= 1:
            # Another API's files under the same base, named by its collection and id
            # (/vector_stores/vs_1/files attaches and detaches, it uploads and deletes nothing).
            return "pass", None
        # Another host, port or base (the provider's /v1 alias of its root, say): not this
        # account's, or not as the ledger knows it. Refused rather than sent untracked.
        return "elsewhere", None

    def elsewhere(self, request: Any, lib: ModuleType) -> Any:
        from .providers import PROFILES

        url = request.url
        variable = PROFILES[self.account.provider].base_url_env
        where = f"${variable}, or base_url in config.toml" if variable else "base_url in config.toml"
        return refusal(
            lib,
            request,
            400,
            f"filekeeper: this client records account {self.account.name!r} at {self.account.base_url}, but the SDK "
            f"sends to {url.scheme}://{url.host}{f':{url.port}' if url.port else ''}{url.path}: give the SDK the "
            "account's base URL, or point the account at the SDK's "
            f"({where}); nothing was sent",
            "filekeeper_wrong_account",
        )

    def connect(self, request: Any) -> tuple[Provider, int, Account]:
        """filekeeper's own adapter for the account (to list it), its ledger id, and the account as
        reached with the key the SDK sends."""
        auth = request.headers.get("authorization", "")
        scheme, _, key = auth.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise UsageError("the SDK's request carries no API key (Authorization: Bearer ...)")
        if self.account.key_is_set() and self.account.api_key() != key.strip():
            # Another key is another account, perhaps another team's: its uploads recorded here
            # would count against this quota, and the next reconcile would call them missing.
            raise UsageError(
                f"the SDK sends another API key than account {self.account.name!r} is configured with "
                f"({self.account.key_variable}); give http_client() the account this key belongs to "
                "(account=...), or the SDK this account's key"
            )
        with self._lock:
            account = self.account.with_key(key.strip())
            if self._remote is None or key.strip() != self._key:
                if self._remote is not None:
                    self._remote.close()
                self._key = key.strip()
                self._account_id = self.keeper.ledger.ensure_account(account)
                self._remote = self.keeper.connect(account)
            assert self._account_id is not None
            return self._remote, self._account_id, account

    def close(self) -> None:
        with self._lock:
            if self._remote is not None:
                self._remote.close()
                self._remote = None
            self.keeper.close()

    # --- an upload ------------------------------------------------------------------------------------

    def upload(self, request: Any, lib: ModuleType, send: Callable[[Any], Any]) -> Any:
        """The SDK's ``POST /files``, through the upload workflow; the response to hand the SDK
        (or the exception its transport raised, re-raised so that the SDK retries as it would)."""
        from .quota import Request, unsupported
        from .upload import UploadJob, settle_unknown, upload_one

        form = read_form(request, lib)
        if isinstance(form, str):
            return refusal(lib, request, 400, f"filekeeper: {form}; nothing was sent", "filekeeper_unreadable_upload")
        if form.expires_after is not None and form.expires_after <= 0:
            # Already expired on arrival: the next reconcile would delete it as past its expiry.
            return refusal(
                lib,
                request,
                400,
                f"filekeeper: expires_after must be a number of seconds above zero, not {form.expires_after}; "
                "nothing was sent",
                "filekeeper_bad_expiry",
            )
        purpose = form.purpose or self.account.default_purpose
        why = unsupported(self.account.provider, self.account.rules, [Request(form.filename, form.size, purpose)])
        if why is not None:
            return refusal(lib, request, 400, f"filekeeper: {why}; nothing was sent", "filekeeper_unsupported")
        try:
            remote, account_id, account = self.connect(request)
        except FilekeeperError as e:
            return refusal(lib, request, 400, f"filekeeper: {e}; nothing was sent", "filekeeper_error")
        key = (form.filename, form.size, purpose)
        attempt = _retry_count(request)
        with self._lock:
            waiting = self._unknown.get(key, [])
            earlier = waiting.pop() if attempt and waiting else None
        if earlier is not None:
            try:
                landed = settle_unknown(self.keeper.ledger, remote, account_id, earlier)
            except ProviderError as e:
                with self._lock:
                    self._unknown.setdefault(key, []).append(earlier)
                return refusal(
                    lib,
                    request,
                    503,
                    f"filekeeper: an earlier attempt of this upload (ledger row #{earlier}) was sent whole and may "
                    f"have landed, and the provider cannot tell ({e.message}); nothing was sent again: the row "
                    + (
                        "stays pending until `filekeeper reconcile` settles it"
                        if remote.lists_purpose(purpose)
                        else "stays pending: no listing can show it, look for it at the provider"
                    ),
                    "filekeeper_outcome_unknown",
                )
            if landed is not None:
                return file_response(lib, request, landed.id, landed.filename, landed.bytes, purpose, landed.created_at)
        payload = _SdkPayload(form.filename, form.size, request, form, send, remote)
        job = UploadJob(
            account,
            account_id,
            payload,
            purpose,
            ttl_seconds=form.expires_after,
            evict=self.evict,
            force=True,  # the SDK asked for an upload: it gets one, not another file's id
            detail={"source": "openai-sdk", "sdk_attempt": attempt},
            asks_retention_expiry=False,
        )
        result = upload_one(self.keeper.ledger, remote, job)
        if result.error is None and result.record is not None:
            if payload.answer is not None and payload.answer.is_success:
                return payload.answer  # the provider's own answer
            r = result.record  # found in the listing after a lost answer
            assert r.id is not None
            return file_response(lib, request, r.id, r.filename, r.bytes, r.purpose, r.created_at)
        error = result.error
        if isinstance(error, QuotaExceeded):
            return refusal(lib, request, 400, _refused(error), "filekeeper_quota_exceeded")
        if result.row is not None and result.row.status == "pending":
            with self._lock:
                self._unknown.setdefault(key, []).append(result.row.ledger_id)  # a retry settles it first
        if payload.raised is not None:
            raise payload.raised  # as the SDK would have met it without filekeeper: it retries as it would
        if payload.answer is not None:
            return payload.answer  # the provider's own refusal or failure
        status = 400 if isinstance(error, UsageError) else 503
        return refusal(lib, request, status, f"filekeeper: {error}", "filekeeper_error")

    # --- a delete -------------------------------------------------------------------------------------

    def delete(self, request: Any, lib: ModuleType, file_id: str, send: Callable[[Any], Any]) -> Any:
        from .delete import delete_files

        try:
            _, _, account = self.connect(request)
        except FilekeeperError as e:
            return refusal(lib, request, 400, f"filekeeper: {e}; nothing was sent", "filekeeper_error")
        sender = _SdkDelete(request, send, self.account.provider)
        try:
            [result] = delete_files(self.keeper.ledger, sender, account, [file_id])
        except FilekeeperError as e:
            if sender.answer is None and sender.raised is None:
                return refusal(lib, request, 503, f"filekeeper: {e}; nothing was sent", "filekeeper_error")
            result = None
        if sender.raised is not None:
            raise sender.raised
        if result is not None and result.error is None and result.already_gone and _retry_count(request):
            # The SDK's retry of a delete whose first answer was lost: gone now, so the first went
            # through. What the user asked for is done, and recorded: say so, not 404.
            return lib.Response(200, json={"id": file_id, "object": "file", "deleted": True}, request=request)
        return sender.answer


def _retry_count(request: Any) -> int:
    """Which retry of its request the SDK says this is (``x-stainless-retry-count``; 0: the first try)."""
    value = request.headers.get("x-stainless-retry-count", "0")
    return int(value) if value.isdigit() else 0


@dataclass
class Form:
    """What an upload's multipart form says, read before anything is sent."""

    filename: str
    size: int
    purpose: str | None
    expires_after: int | None
    field: Any  # the form's file field, whose file the upload reads


def read_form(request: Any, lib: ModuleType) -> Form | str:
    """The upload's fields from the HTTP library's multipart stream, or why they cannot be read."""
    stream = request.stream
    fields = getattr(stream, "fields", None)
    if not isinstance(fields, list):
        return "cannot read this upload's form (not a multipart stream this filekeeper knows)"
    data: dict[str, str] = {}
    file_field = None
    for f in fields:
        if hasattr(f, "filename") and hasattr(f, "file"):
            if f.name == "file" and file_field is None:
                file_field = f
        elif hasattr(f, "value"):
            value = f.value
            data[f.name] = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    if file_field is None:
        return "the upload carries no file part"
    content = file_field.file
    size: int | None
    if isinstance(content, bytes | bytearray | str):
        size = len(content.encode() if isinstance(content, str) else content)
    elif not _regular_or_seekable(content):
        # A pipe's or a socket's fstat says 0 bytes, and the HTTP library built its Content-Length on that.
        return "the file's size cannot be known before sending (a pipe or a socket): pass a file or bytes"
    else:
        size = import_module(f"{lib.__name__}._utils").peek_filelike_length(content)
    if size is None:
        # A stream of unknown length: reserve by what the request says it will send (an upper bound).
        header = request.headers.get("content-length")
        if not header or not header.isdigit():
            return "the file's size cannot be known before sending (a stream of unknown length): pass a file or bytes"
        size = int(header)
    expires = data.get("expires_after[seconds]") or data.get("expires_after")
    try:
        expires_after = int(expires) if expires else None
    except ValueError:
        expires_after = None  # the provider judges it
    return Form(str(file_field.filename or "upload"), size, data.get("purpose"), expires_after, file_field)


def _regular_or_seekable(content: Any) -> bool:
    import os
    import stat

    try:
        return stat.S_ISREG(os.fstat(content.fileno()).st_mode)
    except (AttributeError, OSError, ValueError):
        return True  # no file descriptor: its tell/seek, if any, decide


@dataclass
class _SdkPayload:
    """The SDK's request as the bytes of one upload: sent as the SDK built it, its file hashed on
    the way (:class:`~.providers.base.HashingReader`), its answer kept for the SDK."""

    filename: str
    size: int
    request: Any
    form: Form
    forward: Callable[[Any], Any]
    remote: Provider
    resend_after_loss: bool = False  # the SDK retries itself; a retry settles this attempt first
    answer: Any = None
    raised: BaseException | None = None
    _sha256: str | None = None

    def sha256(self) -> str | None:
        return self._sha256

    def send(
        self,
        remote: Provider,
        *,
        purpose: str,
        expires_after: int | None,
        on_progress: Callable[[int], None] | None,
        cancel: threading.Event | None = None,
        on_sent: Callable[[str], None] | None = None,
    ) -> Uploaded:
        import io

        from .providers import Uploaded
        from .providers._http import parse_error
        from .providers.base import HashingReader

        content = self.form.field.file
        if isinstance(content, str):
            content = content.encode()
        source = io.BytesIO(content) if isinstance(content, bytes | bytearray) else content
        reader = HashingReader(source, self.size, on_progress, cancel, on_sent)
        self.form.field.file = reader
        try:
            self.answer = self.forward(self.request)
        except Exception as e:
            if isinstance(e, FilekeeperError):
                raise  # the file changed while it was sent, or Ctrl-C: the workflow records it
            self.raised = e
            raise _lost_or_not_sent(e, remote.name, reader) from None
        self._sha256 = _digest(reader, self.size)
        if self.answer.is_success:
            try:
                stored = remote.parse_file(self.answer.json())  # type: ignore[attr-defined]
            except (ValueError, ProviderError) as e:
                raise ResponseLost(f"the answer to the upload could not be read ({e})", provider=remote.name) from None
            return Uploaded(remote=stored, sha256=self._sha256 or "", size=self.size)
        error = parse_error(remote.name, self.answer)
        if error.status is not None and (error.status in (408, 409) or error.status >= 500):
            raise ResponseLost(f"{error.message} (the upload may or may not have been stored)", provider=remote.name)
        raise error


@dataclass
class _SdkDelete:
    """The SDK's ``DELETE`` as the delete workflow's sender."""

    request: Any
    forward: Callable[[Any], Any]
    provider: str
    answer: Any = None
    raised: BaseException | None = None

    def delete(self, file_id: str) -> bool:
        from .providers._http import parse_error

        try:
            self.answer = self.forward(self.request)
        except Exception as e:
            self.raised = e
            raise _lost_or_not_sent(e, self.provider, None) from None
        if self.answer.is_success:
            return True
        error = parse_error(self.provider, self.answer)
        if isinstance(error, FileNotFoundAtProvider):
            return False
        raise error


def _lost_or_not_sent(e: BaseException, provider: str, reader: HashingReader | None) -> ProviderError:
    """A transport exception as the workflows read it: never sent (nothing can have happened) or
    lost on the way (it may have)."""
    name = type(e).__name__
    if name in ("ConnectError", "ConnectTimeout", "PoolTimeout", "UnsupportedProtocol", "ProxyError"):
        return ProviderError(f"not sent: {name}: {e}", provider=provider)
    if reader is not None and reader.count < reader.size and name in ("WriteError", "WriteTimeout"):
        return ProviderError(f"not sent whole: {name}: {e}", provider=provider)
    return ResponseLost(f"{name} after the request went out: {e or 'no answer'}", provider=provider)


def _digest(reader: HashingReader, size: int) -> str | None:
    return reader.hash.hexdigest() if reader.count == size else None


def _refused(error: QuotaExceeded) -> str:
    parts = []
    for v in error.violations:
        used = f"{v.current} of {v.max} used; " if isinstance(v.current, int) and isinstance(v.max, int) else ""
        parts.append(f"{v.limit}: {used}{v.message}")
    return "filekeeper refused the upload, nothing was sent: " + "; ".join(parts or [str(error)])


def refusal(lib: ModuleType, request: Any, status: int, message: str, code: str) -> Any:
    """An answer of filekeeper's own, in the OpenAI error shape every OpenAI-compatible SDK reads,
    that the SDK must not retry."""
    body = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
    return lib.Response(status, json=body, headers={"x-should-retry": "false"}, request=request)


def file_response(
    lib: ModuleType, request: Any, file_id: str, filename: str, size: int, purpose: str, created_at: datetime
) -> Any:
    """An OpenAI file object for an upload whose own answer was lost (it was found in the listing)."""
    body = {
        "id": file_id,
        "object": "file",
        "bytes": size,
        "created_at": int(created_at.timestamp()),
        "filename": filename,
        "purpose": purpose,
        "status": "processed",
    }
    return lib.Response(200, json=body, request=request)


# --- the transports, for whichever library the SDK runs on -------------------------------------------


def _sync_transport(lib: ModuleType) -> type:
    class Transport(lib.BaseTransport):  # type: ignore[name-defined,misc]
        """The SDK's requests: uploads and deletes recorded, everything else passed through."""

        def __init__(self, inner: Any, tracker: _Tracker) -> None:
            self._inner = inner
            self._tracker = tracker

        def handle_request(self, request: Any) -> Any:
            kind, file_id = self._tracker.route(request)
            if kind == "pass":
                return self._inner.handle_request(request)
            if kind == "elsewhere":
                return self._tracker.elsewhere(request, lib)
            if kind == "upload":
                return self._tracker.upload(request, lib, self._send_read)
            assert file_id is not None
            return self._tracker.delete(request, lib, file_id, self._send_read)

        def _send_read(self, request: Any) -> Any:
            response = self._inner.handle_request(request)
            try:
                raw = b"".join(response.iter_raw())
            finally:
                response.close()
            return lib.Response(
                response.status_code,
                headers=response.headers,
                content=raw,
                request=request,
                extensions=response.extensions,
            )

        def close(self) -> None:
            self._inner.close()
            self._tracker.close()

    return Transport


def _async_transport(lib: ModuleType) -> type:
    class AsyncTransport(lib.AsyncBaseTransport):  # type: ignore[name-defined,misc]
        """:func:`_sync_transport`'s twin: the workflows run in a worker thread (they write the
        ledger), and send through the async transport on the event loop."""

        def __init__(self, inner: Any, tracker: _Tracker) -> None:
            self._inner = inner
            self._tracker = tracker

        async def handle_async_request(self, request: Any) -> Any:
            import anyio.to_thread

            kind, file_id = self._tracker.route(request)
            if kind == "pass":
                return await self._inner.handle_async_request(request)
            if kind == "elsewhere":
                return self._tracker.elsewhere(request, lib)
            if kind == "upload":
                return await anyio.to_thread.run_sync(self._tracker.upload, request, lib, self._send_from_thread)
            assert file_id is not None
            return await anyio.to_thread.run_sync(self._tracker.delete, request, lib, file_id, self._send_from_thread)

        def _send_from_thread(self, request: Any) -> Any:
            import anyio.from_thread

            return anyio.from_thread.run(self._send_read, request)

        async def _send_read(self, request: Any) -> Any:
            response = await self._inner.handle_async_request(request)
            try:
                raw = b"".join([chunk async for chunk in response.aiter_raw()])
            finally:
                await response.aclose()
            return lib.Response(
                response.status_code,
                headers=response.headers,
                content=raw,
                request=request,
                extensions=response.extensions,
            )

        async def aclose(self) -> None:
            await self._inner.aclose()
            self._tracker.close()

    return AsyncTransport
