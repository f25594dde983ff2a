"""The one HTTP layer every provider adapter shares: auth, timeouts, retries, error envelopes.

Retries (tenacity) cover connect failures, 429 and, for requests that are safe to repeat,
5xx and lost responses. An upload is never repeated blindly: when its outcome is unknown
(a 5xx or a lost response) this layer raises :class:`ResponseLost` and the caller looks for
the file before trying again.
"""

from __future__ import annotations

import email.utils
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from queue import Empty, SimpleQueue
from typing import Any

import httpx
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
)
from tenacity.wait import wait_exponential, wait_random

from ..errors import FileNotFoundAtProvider, ProviderError, ResponseLost
from ._resend import BEFORE_RESENDING

log = logging.getLogger("filekeeper.http")

# A 429 that means "pay or raise your limit", not "slow down": retrying only burns time.
# Z.AI business codes 1113 (balance) and 1308 (usage cap); OpenAI/xAI/Moonshot wording and types.
# Anthropic's tier spend cap (enforced_spend_limit_reached) and Google's per-day quotas too.
_EXHAUSTED_CODES = {
    "1113",
    "1308",
    "insufficient_quota",
    "exceeded_current_quota_error",
    "billing_hard_limit_reached",
    "enforced_spend_limit_reached",
}
_EXHAUSTED_TEXT = re.compile(
    r"balance|credit|spending limit|spend limit|billing|insufficient[_ ]quota|exceeded your current quota|usage cap"
    r"|arrear|per ?day|PerDay",
    re.IGNORECASE,
)
# Google's RetryInfo.retryDelay: "38s", "1.5s".
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")
# A 404 about the URL, not the file: what servers say for a route they do not have.
_ROUTE_NOT_FOUND = re.compile(
    r"invalid url|unknown (request )?url|no route|route not found|cannot (get|post|delete) |^not found$|<html",
    re.IGNORECASE,
)
# Sent but no response: the server may have acted on it.
_LOST = (httpx.ReadError, httpx.ReadTimeout, httpx.RemoteProtocolError)
# Never reached the server (or not all of it): safe to send again.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.WriteError, httpx.WriteTimeout)


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    total_seconds: float = 120.0
    # Like the OpenAI SDK: a server asking us to wait longer than this is not waited for.
    max_retry_after: float = 120.0
    backoff_initial: float = 0.5
    backoff_max: float = 8.0


@dataclass(frozen=True)
class Timeouts:
    connect: float = 10.0
    read: float = 60.0
    write: float = 60.0
    pool: float = 30.0


class RetryableError(ProviderError):
    """A failure worth another attempt; carries the server's requested delay, if any."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, retryable=True, **kw)
        self.retry_after = retry_after


def parse_retry_after(headers: httpx.Headers) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date)."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _google_retry_delay(details: Any) -> float | None:
    """The wait a Google error asks for in its details (``google.rpc.RetryInfo``), if any."""
    for item in details if isinstance(details, list) else ():
        if isinstance(item, dict) and str(item.get("@type", "")).endswith("RetryInfo"):
            m = _DURATION.match(str(item.get("retryDelay", "")))
            if m:
                return float(m.group(1))
    return None


def parse_error(provider: str, response: httpx.Response, *, secret: str = "") -> ProviderError:
    """One ProviderError from any provider's error envelope (both shapes where docs disagree).

    Shapes: ``{"error": {"message", "type", "code"}}`` (OpenAI, Moonshot, xAI seed, Z.AI live,
    Anthropic's inside ``{"type": "error"}``), ``{"error": {"code", "message", "status"}}``
    (Google, sometimes wrapped in a one-item list), ``{"code", "message"}`` (Z.AI seed) and
    ``{"code": "<status text>", "error": "<message>"}`` (xAI live). Anything else falls back to the
    body's text or the reason phrase.
    """
    status = response.status_code
    message: Any = None
    code: Any = None
    type_: Any = None
    retry_after = parse_retry_after(response.headers)
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, list) and len(body) == 1:
        body = body[0]
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            message, code, type_ = err.get("message"), err.get("code"), err.get("type") or err.get("status")
            details = err.get("details")
            if isinstance(details, dict) and details.get("error_code"):
                code = details["error_code"]  # Anthropic: why a 429 will not pass by waiting
            if retry_after is None:
                retry_after = _google_retry_delay(details)
        elif isinstance(err, str):
            message, code = err, body.get("code")
        else:
            message, code = body.get("message") or body.get("msg") or body.get("detail"), body.get("code")
    enveloped = bool(message) and isinstance(message, str)
    if not message:
        text = response.text.strip() if body is None else ""
        message = text[:200] if text else (response.reason_phrase or f"HTTP {status}")
    message = str(message)
    if secret:
        message = message.replace(secret, "[redacted]")
    code = None if code is None else str(code)
    type_ = None if type_ is None else str(type_)
    kw = {"provider": provider, "status": status, "code": code, "type": type_}
    if status == 404:
        if enveloped and not _ROUTE_NOT_FOUND.search(message):
            return FileNotFoundAtProvider(message, **kw)
        # Not the provider saying "no such file": the URL itself is unknown (a wrong base URL,
        # a proxy's page). Nothing may be concluded about any file from it.
        return ProviderError(f"{message} (the URL itself was not found: is the base URL right?)", **kw)
    if status == 429:
        exhausted = code in _EXHAUSTED_CODES or type_ in _EXHAUSTED_CODES or _EXHAUSTED_TEXT.search(message)
        if not exhausted:
            return RetryableError(message, retry_after=retry_after, **kw)
    if status in (408, 409) or status >= 500:
        return RetryableError(message, retry_after=retry_after, **kw)
    if status == 413:
        return ProviderError(f"{message} (the provider refused the file as too large)", **kw)
    return ProviderError(message, **kw)


def should_retry_header(error: ProviderError, headers: httpx.Headers, provider: str) -> ProviderError:
    """``x-should-retry: true|false``, which overrides the status's own verdict (as the official
    SDKs do; only those two exact words count)."""
    verdict = headers.get("x-should-retry")
    if verdict == "false" and isinstance(error, RetryableError):
        return ProviderError(error.message, provider=provider, status=error.status, code=error.code, type=error.type)
    if verdict == "true" and not isinstance(error, RetryableError):
        return RetryableError(
            error.message,
            retry_after=parse_retry_after(headers),
            provider=provider,
            status=error.status,
            code=error.code,
            type=error.type,
        )
    return error


class HTTP:
    """An httpx client for one account, with filekeeper's retry and error rules."""

    def __init__(
        self,
        provider: str,
        base_url: str,
        api_key: str,
        *,
        key_hint: str = "",
        headers: Mapping[str, str] | None = None,
        retry: RetryPolicy | None = None,
        timeouts: Timeouts | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        from .._version import __version__

        self.provider = provider
        self.retry = retry or RetryPolicy()
        self._secret = api_key
        self._key_hint = key_hint
        self._sleep = sleep
        # Exponential with jitter, so that many workers backing off do not retry in step.
        self._backoff = wait_exponential(
            multiplier=self.retry.backoff_initial, max=self.retry.backoff_max
        ) + wait_random(0, self.retry.backoff_initial)
        t = timeouts or Timeouts()
        self._config: dict[str, Any] = {
            "base_url": base_url.rstrip("/") + "/",
            "headers": {
                **(headers if headers is not None else {"Authorization": f"Bearer {api_key}"}),
                "User-Agent": f"filekeeper/{__version__}",
            },
            "timeout": httpx.Timeout(connect=t.connect, read=t.read, write=t.write, pool=t.pool),
            "transport": transport,
        }
        if transport is None:
            # One SSL context for every client below (each would load the CA bundle again).
            self._config["verify"] = httpx.create_ssl_context()
        self.client = httpx.Client(**self._config)
        # A client per request in flight, each with its own connections, instead of one client
        # shared by every thread: httpx's connection pool takes one lock for each request and
        # each response, and 32 threads deleting at once spent more time queued on that lock
        # than on the wire (the same 1,000 deletes: 2.2-2.3 s shared, 1.9-2.1 s like this).
        self._clients = [self.client]
        self._idle: SimpleQueue[httpx.Client] = SimpleQueue()
        self._idle.put(self.client)
        self._adding = threading.Lock()

    def close(self) -> None:
        with self._adding:
            for client in self._clients:
                client.close()

    @contextmanager
    def _borrowed(self) -> Iterator[httpx.Client]:
        """An idle client, or a new one (as many exist as requests were ever in flight at once)."""
        try:
            client = self._idle.get_nowait()
        except Empty:
            client = httpx.Client(**self._config)
            with self._adding:
                self._clients.append(client)
        try:
            yield client
        finally:
            self._idle.put(client)

    def request(self, method: str, path: str, *, idempotent: bool = True, **kwargs: Any) -> httpx.Response:
        """Send with retries; a 2xx response, or a ProviderError (or what the check of
        :func:`~._resend.checked_before_resending` raises before a retry)."""
        check = BEFORE_RESENDING.get()
        failed: list[BaseException | None] = [None]

        def before_sleep(state: RetryCallState) -> None:
            failed[0] = state.outcome.exception() if state.outcome else None
            self._log_retry(state)

        def before(state: RetryCallState) -> None:
            if check is not None and state.attempt_number > 1:
                check(failed[0])

        retrying = Retrying(
            retry=retry_if_exception(self._should_retry),
            stop=stop_after_attempt(self.retry.attempts) | stop_after_delay(self.retry.total_seconds),
            wait=self._wait,
            sleep=self._sleep,
            before=before,
            before_sleep=before_sleep,
            reraise=True,
        )
        return retrying(self._send_once, method, path, idempotent, kwargs)

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.request(method, path, **kwargs)
        try:
            return response.json()
        except ValueError:
            raise ProviderError(
                f"{method} {path} answered with something that is not JSON",
                provider=self.provider,
                status=response.status_code,
            ) from None

    def _send_once(self, method: str, path: str, idempotent: bool, kwargs: dict[str, Any]) -> httpx.Response:
        try:
            with self._borrowed() as client:
                response = client.request(method, path, **kwargs)
        except _NOT_SENT as e:
            raise RetryableError(
                f"cannot reach {self.client.base_url.host}: {_describe(e)}", provider=self.provider
            ) from None
        except _LOST as e:
            if idempotent:
                raise RetryableError(
                    f"no response from {self.client.base_url.host}: {_describe(e)}", provider=self.provider
                ) from None
            raise ResponseLost(
                f"the response to {method} {path} was lost ({_describe(e)})", provider=self.provider
            ) from None
        except httpx.HTTPError as e:
            raise ProviderError(f"{method} {path} failed: {_describe(e)}", provider=self.provider) from None
        except (httpx.InvalidURL, UnicodeError) as e:  # a URL httpx (or IDNA) cannot use: nothing was sent
            raise ProviderError(f"the base URL cannot be used: {e}", provider=self.provider) from None
        if response.is_success:
            return response
        error = should_retry_header(
            parse_error(self.provider, response, secret=self._secret), response.headers, self.provider
        )
        if (error.status in (401, 403) or "api key not valid" in error.message.lower()) and self._key_hint:
            error.message += f" (check {self._key_hint})"
        if not idempotent and error.status and (error.status in (408, 409) or error.status >= 500):
            # A 5xx, a 408 or a 409 says nothing of whether an upload was stored (a 429 says it was
            # not, and is retried as it asks; so is a 4xx the server marks x-should-retry: true).
            # The server may have stored the upload before failing: the caller must look first,
            # whatever x-should-retry says (a duplicate costs more than one listing).
            raise ResponseLost(
                f"{error.message} (the upload may or may not have been stored)",
                provider=self.provider,
                status=error.status,
                code=error.code,
            ) from None
        raise error

    def _should_retry(self, exc: BaseException) -> bool:
        if not isinstance(exc, RetryableError):
            return False
        return exc.retry_after is None or exc.retry_after <= self.retry.max_retry_after

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RetryableError) and exc.retry_after is not None:
            return exc.retry_after
        return self._backoff(state)

    def _log_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0
        log.info("%s: retrying in %.1fs after attempt %d: %s", self.provider, delay, state.attempt_number, exc)


def _describe(e: Exception) -> str:
    return str(e) or type(e).__name__
