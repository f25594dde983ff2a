"""The small interface every provider adapter implements, and what all of them share.

An adapter answers four questions in its provider's own terms: how to upload one file, how to
fetch one page of the listing, how to retrieve and how to delete one file. What no adapter should
get wrong on its own lives here: the list loop's safety stops (a cursor seen twice, a page
repeated, an id listed twice, a listing that never ends), streaming a file from disk while hashing
it, and reading an upload's answer that cannot be parsed as "it may have landed". Transport, auth,
retries and error envelopes are ``_http``'s. The OpenAI shape is one family of adapters
(:mod:`.openai`); Anthropic and Gemini are others.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import mimetypes
import os
import re
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, ClassVar

from ..errors import FileChanged, IncompleteListing, Interrupted, NotResent, ProviderError, ResponseLost
from ..profiles import Profile
from ._resend import checked_before_resending

if TYPE_CHECKING:
    from threading import Event

    from ._http import HTTP

ProgressCallback = Callable[[int], None]

#: the most pages one listing may take: far beyond any real account, it only stops a listing that
#: never ends (a server handing out fresh cursors for ever)
MAX_PAGES = 100_000


@dataclass(frozen=True, slots=True)
class RemoteFile:
    """A file as the provider describes it."""

    id: str
    filename: str
    bytes: int | None
    created_at: datetime | None
    purpose: str | None
    status: str | None
    expires_at: datetime | None
    #: made by the provider (a batch's output, a tool's file), not uploaded by anyone
    generated: bool = False
    #: the content's sha256 (hex), where the provider reports it (Gemini)
    sha256: str | None = None

    def __post_init__(self) -> None:
        if "\x00" in self.filename:
            # No PostgreSQL text can hold a NUL: one planted name would fail every reconcile.
            object.__setattr__(self, "filename", self.filename.replace("\x00", "\N{REPLACEMENT CHARACTER}"))

    @property
    def failed(self) -> bool:
        """Stored, but unusable: its processing failed (OpenAI-shaped ``error``, Gemini ``FAILED``)."""
        return (self.status or "").lower() in ("error", "failed")


def more_follows(body: dict[str, Any], provider: str) -> bool:
    """A page's ``has_more``: absent or false ends the listing, true goes on, and anything else
    (``1``, ``"yes"``) is a page that cannot be read: taken for "no more" it would end a listing
    early, and a listing taken for complete must be complete."""
    value = body.get("has_more")
    if value is None or value is False:
        return False
    if value is True:
        return True
    raise IncompleteListing(f"a page says has_more: {str(value)[:40]!r}, neither true nor false", provider=provider)


@dataclass(frozen=True)
class Uploaded:
    remote: RemoteFile
    sha256: str
    size: int


@dataclass(frozen=True)
class Page:
    files: list[RemoteFile]
    next_cursor: str | None  # None: this was the last page
    claims_more: bool = False  # the provider said more follows (has_more: true)


# RFC 3339 with any number of fractional digits (Google sends nanoseconds) and Z or an offset.
_RFC3339 = re.compile(r"(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(?:\.(\d+))?(Z|z|[+-]\d{2}:?\d{2})?")


def to_datetime(value: Any) -> datetime | None:
    """Unix seconds, or milliseconds (Z.AI may send them: anything above 1e11 is ms)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if number > 1e11:
        number /= 1000
    if not 0 <= number < 253402300800:  # NaN, negative or past the year 9999: no usable time
        return None
    return datetime.fromtimestamp(number, UTC)


def from_rfc3339(value: Any) -> datetime | None:
    """An RFC 3339 timestamp (``2025-03-31T12:39:16.139536164Z``) as an aware datetime, or None."""
    if not isinstance(value, str):
        return None
    m = _RFC3339.fullmatch(value.strip())
    if m is None:
        return None
    day, clock, fraction, zone = m.groups()
    zone = "+00:00" if zone in (None, "Z", "z") else zone
    text = f"{day}T{clock}.{(fraction or '0')[:6].ljust(6, '0')}{zone}"
    try:
        return datetime.fromisoformat(text).astimezone(UTC)
    except ValueError:
        return None


def to_int(value: Any) -> int | None:
    """A size as the provider sent it: an integer, or (Google's int64 encoding) a string of digits."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    return None


def sha256_of(value: Any) -> str | None:
    """A provider's content hash as hex: Gemini's ``sha256Hash`` is base64, of the hex digest's
    text in practice and of the raw 32 bytes by its docs; either is read, anything else is None."""
    if not isinstance(value, str) or not value:
        return None
    try:
        raw = base64.b64decode(value + "=" * (-len(value) % 4), validate=False)
    except (binascii.Error, ValueError):
        return None
    if len(raw) == 32:
        return raw.hex()
    with contextlib.suppress(UnicodeDecodeError):
        text = raw.decode("ascii").lower()
        if re.fullmatch(r"[0-9a-f]{64}", text):
            return text
    return None


def require_id(obj: Any, key: str, provider: str) -> str:
    if not isinstance(obj, dict) or not isinstance(obj.get(key), str) or not obj[key]:
        raise ProviderError(f"the provider sent a file object without an id: {str(obj)[:120]}", provider=provider)
    return str(obj[key])


class HashingReader:
    """Feeds httpx's multipart encoder from disk, hashing and counting on the way.

    httpx seeks to 0 before each attempt, so a retried request hashes from scratch. It finds
    the length with fstat(fileno()), so the body is streamed with a Content-Length. It sends
    exactly the ``size`` bytes the file had when the upload began: a file that ends early, or
    goes on past that, stops the request half-way with :class:`FileChanged` (an incomplete
    multipart body, which no provider stores), and so does ``cancel`` (Ctrl-C). ``on_sent``
    hears the content's sha256 just before the last chunk is handed over.
    """

    def __init__(
        self,
        f: BinaryIO,
        size: int,
        on_progress: ProgressCallback | None,
        cancel: Event | None,
        on_sent: Callable[[str], None] | None,
    ) -> None:
        self._f = f
        self._size = size
        self._on_progress = on_progress
        self._cancel = cancel
        self._on_sent = on_sent
        self.hash = hashlib.sha256()
        self.count = 0

    @property
    def size(self) -> int:
        return self._size

    def fileno(self) -> int:
        return self._f.fileno()

    def tell(self) -> int:
        return self._f.tell()

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if (offset, whence) == (0, os.SEEK_SET):
            if self._on_progress and self.count:
                self._on_progress(-self.count)
            self.hash, self.count = hashlib.sha256(), 0
        return self._f.seek(offset, whence)

    def read(self, n: int = -1) -> bytes:
        if self._cancel is not None and self._cancel.is_set():
            raise Interrupted("cancelled (interrupted) before its last byte was sent: nothing was stored")
        left = self._size - self.count
        want = left if n is None or n < 0 else min(n, left)
        chunk = self._f.read(want) if want else b""
        began = f"it had {self._size:,} bytes when the upload began"
        if len(chunk) < want:
            raise FileChanged(f"the file shrank while it was being uploaded ({began})")
        if self.count + len(chunk) == self._size and self._f.read(1):
            raise FileChanged(f"the file grew while it was being uploaded ({began})")
        self.hash.update(chunk)
        self.count += len(chunk)
        if self.count == self._size and chunk and self._on_sent is not None:
            # Before the last chunk goes: once the provider has all of it, the file may land.
            self._on_sent(self.hash.hexdigest())
        if self._on_progress and chunk:
            self._on_progress(len(chunk))
        return chunk

    def chunks(self, size: int = 1 << 16) -> Iterator[bytes]:
        while chunk := self.read(size):
            yield chunk


class RawBody:
    """A :class:`HashingReader` as a raw request body (not multipart): every attempt httpx makes
    starts again from the first byte. Send it with an explicit Content-Length."""

    def __init__(self, reader: HashingReader) -> None:
        self._reader = reader

    def __iter__(self) -> Iterator[bytes]:
        self._reader.seek(0)
        return self._reader.chunks()


class Provider:
    """Base adapter. A subclass says how its provider uploads, pages, retrieves and deletes;
    the list loop and the streaming of files are shared."""

    #: what filekeeper knows of this provider before any config: its name, key, URL, limits
    profile: ClassVar[Profile]
    #: the lifetimes (seconds) the provider accepts as an expiry of its own; None: it takes none
    expires_after_range: ClassVar[tuple[int, int] | None] = None
    #: whether a retrieve's "not found" proves a file gone; where it cannot (no retrieve, or an
    #: answer that also means "not yours"), an absence is confirmed by a second listing
    retrieve_proves_absence: ClassVar[bool] = True
    #: whether a retrieve that finds a file is one request (Z.AI's falls back to a whole listing)
    retrieve_proves_presence: ClassVar[bool] = True

    def __init__(self, http: HTTP) -> None:
        self.http = http

    @classmethod
    def auth_headers(cls, api_key: str) -> dict[str, str]:
        """The headers every request carries: the key, and whatever version the API insists on."""
        return {"Authorization": f"Bearer {api_key}"}

    @property
    def name(self) -> str:
        return self.profile.name

    def close(self) -> None:
        self.http.close()

    # --- what each adapter says in its provider's terms -----------------------------------------

    def upload(
        self,
        path: Path,
        *,
        purpose: str,
        filename: str | None = None,
        expires_after: int | None = None,
        on_progress: ProgressCallback | None = None,
        cancel: Event | None = None,
        on_sent: Callable[[str], None] | None = None,
        size: int | None = None,
    ) -> Uploaded:
        """Stream one file up; never holds it in memory. Raises ResponseLost when unsure,
        FileChanged if the file changes under it, Interrupted if ``cancel`` is set meanwhile.
        ``on_sent(sha256)`` is called before the last chunk goes (the file may land from then on).
        ``size`` is what the file held when it was checked against the quota: it must still.
        ``expires_after`` is asked of the provider only where :attr:`expires_after_range` allows."""
        with self.reading(path, size, on_progress, cancel, on_sent) as reader:
            remote = self.send(reader, name=filename or path.name, purpose=purpose, expires_after=expires_after)
        return Uploaded(remote=remote, sha256=reader.hash.hexdigest(), size=reader.size)

    def send(self, reader: HashingReader, *, name: str, purpose: str, expires_after: int | None) -> RemoteFile:
        """Send one file's bytes from ``reader`` as the provider takes them, and read back what it
        stored. The request that stores the file goes inside :meth:`answer`."""
        raise NotImplementedError

    def list_page(self, cursor: str | None, scope: str | None = None) -> Page:
        """One list request: the page after ``cursor`` (None: the first) of ``scope`` (see
        :meth:`list_scopes`). Raises ProviderError; a body it cannot read is IncompleteListing."""
        raise NotImplementedError

    def retrieve(self, file_id: str) -> RemoteFile:
        """One file's metadata; FileNotFoundAtProvider only on the provider's own "no such file"."""
        raise NotImplementedError

    def delete(self, file_id: str) -> bool:
        """Delete a file; False when the provider said it no longer had it (its own not-found)."""
        raise NotImplementedError

    def list_scopes(self) -> Iterable[str | None]:
        """The separate listings that together show everything (None: one listing of it all)."""
        return (None,)

    def lists_purpose(self, purpose: str) -> bool:
        """Whether a listing shows files of this purpose (a reconcile judges no other's absence)."""
        return True

    @classmethod
    def canonical_id(cls, file_id: str) -> str:
        """A file id as the provider spells it, from the way a person may type it."""
        return file_id

    # --- shared ------------------------------------------------------------------------------------

    @classmethod
    def takes_expiry(cls, seconds: int) -> bool:
        """Whether the provider can be asked to delete a file by itself after this many seconds."""
        bounds = cls.expires_after_range
        return bounds is not None and bounds[0] <= seconds <= bounds[1]

    def expiry_fields(self, seconds: int | None) -> dict[str, str]:
        """Upload fields that ask the provider to expire the file itself, when it takes that lifetime."""
        if seconds is None or not self.takes_expiry(seconds):
            return {}
        return self.expiry_form(seconds)

    def expiry_form(self, seconds: int) -> dict[str, str]:
        """How this provider spells an expiry in an upload (with ``expires_after_range``)."""
        raise NotImplementedError

    @contextlib.contextmanager
    def reading(
        self,
        path: Path,
        size: int | None,
        on_progress: ProgressCallback | None,
        cancel: Event | None,
        on_sent: Callable[[str], None] | None,
    ) -> Iterator[HashingReader]:
        """The file opened for one upload, as a hashing reader of exactly the size it was checked at."""
        with path.open("rb") as f:
            now = os.fstat(f.fileno()).st_size
            if size is not None and now != size:
                raise FileChanged(f"the file changed since it was checked ({size:,} bytes then, {now:,} now)")
            yield HashingReader(f, now, on_progress, cancel, on_sent)

    @contextlib.contextmanager
    def answer(self) -> Iterator[None]:
        """Around reading an upload's answer: a success that cannot be read means the file may
        well be stored, so it is a lost response (look first), not a failure."""
        try:
            yield
        except ResponseLost:
            raise
        except ProviderError as e:
            if (e.status is not None and 200 <= e.status < 300) or "without an id" in e.message:
                raise ResponseLost(
                    f"the answer to the upload could not be read ({e.message})", provider=self.name
                ) from None
            raise

    @staticmethod
    def content_type(name: str) -> str:
        return mimetypes.guess_type(name)[0] or "application/octet-stream"

    def list_files(self, *, track_ids: bool = True) -> Iterator[RemoteFile]:
        """Everything the account holds, file by file (see :meth:`list_pages`)."""
        for page in self.list_pages(track_ids=track_ids):
            yield from page

    def list_pages(self, *, track_ids: bool = True) -> Listing:
        """Everything the account holds, page by page (scope by scope), or IncompleteListing.

        The pages are fetched by a thread of their own (:class:`Listing`), from when this is
        called: a caller with other work to do first (reconcile opening the ledger) does it while
        the first requests are on the wire, and what it does with each page (reconcile stages it
        in the ledger) overlaps the next round trip instead of adding to it.

        Stops on an empty page or a page that names no next cursor (no ``has_more``, no token).
        Raises on a cursor seen before, a page repeated, a file id listed twice (``track_ids``;
        a caller that detects repeats itself may turn it off) or more than :data:`MAX_PAGES`
        pages: a listing that cannot be read to its end must never pass for complete, and one
        that cycles must end rather than run for ever.
        """
        return Listing(self._pages(track_ids))

    def _pages(self, track_ids: bool) -> Iterator[list[RemoteFile]]:
        listed: set[str] = set()
        totals = [0, 0]  # pages, files
        for scope in self.list_scopes():
            yield from self._walk(scope, listed, totals, track_ids)

    def _walk(
        self, scope: str | None, listed: set[str], totals: list[int], track_ids: bool
    ) -> Iterator[list[RemoteFile]]:
        seen: set[str] = set()
        cursor: str | None = None
        previous_ids: set[str] = set()
        pages = 0
        while True:
            try:
                page = self.list_page(cursor, scope)
            except IncompleteListing:
                raise
            except ProviderError as e:
                raise IncompleteListing(
                    f"listing failed after {totals[0]} page(s): {e.message}",
                    provider=self.name,
                    status=e.status,
                    code=e.code,
                ) from None
            ids = {f.id for f in page.files}
            if ids and ids <= previous_ids:
                # A server that ignores the cursor but hands out fresh ones would loop for ever.
                raise IncompleteListing("the provider sent the same page twice; listing stopped", provider=self.name)
            for f in page.files if track_ids else ():
                if f.id in listed:
                    raise IncompleteListing(
                        f"the provider listed file {f.id} twice (page {totals[0] + 1}); the listing cannot be "
                        "trusted, stopped",
                        provider=self.name,
                    )
                listed.add(f.id)
            previous_ids = ids
            pages += 1
            totals[0] += 1
            totals[1] += len(page.files)
            if not page.files and page.claims_more:
                raise IncompleteListing(
                    "the provider said more files follow but sent an empty page", provider=self.name
                )
            last = not page.files or page.next_cursor is None
            if not last:
                if page.next_cursor in seen:
                    raise IncompleteListing(
                        f"the provider repeated the cursor {page.next_cursor!r}; listing stopped",
                        provider=self.name,
                    )
                if pages >= MAX_PAGES:
                    raise IncompleteListing(
                        f"the listing went on past {MAX_PAGES:,} pages ({totals[1]:,} files); stopped",
                        provider=self.name,
                    )
                seen.add(page.next_cursor)
                cursor = page.next_cursor
            yield page.files
            if last:
                return

    def first_page(self) -> Page:
        """One list request, the first page: enough to know the key and URL work (`doctor --online`)."""
        return self.list_page(None, next(iter(self.list_scopes())))

    def shape_error(self, body: Any) -> IncompleteListing:
        return IncompleteListing(f"unexpected listing shape: {str(body)[:120]}", provider=self.name)


class Listing(Iterator[list[RemoteFile]]):
    """A listing under way (:meth:`Provider.list_pages`): its pages, in order, and when it began.

    A thread of its own fetches them, at most :data:`LIST_AHEAD_PAGES` pages (and
    :data:`LIST_AHEAD_FILES` files) beyond the one the caller has, and one more on the wire, so
    that memory does not grow with the listing. Closed (or dropped), it asks for no more pages;
    a request on the wire then finishes unread, on a daemon thread that never holds up an exit."""

    def __init__(self, pages: Iterator[list[RemoteFile]]) -> None:
        self.began = datetime.now(UTC)
        self._ahead = _Ahead()
        weakref.finalize(self, self._ahead.stop)
        self.thread = threading.Thread(target=self._ahead.fill, args=(pages,), name="listing", daemon=True)
        self.thread.start()

    def __next__(self) -> list[RemoteFile]:
        return self._ahead.take()

    def close(self) -> None:
        self._ahead.stop()


#: pages a listing fetches ahead of its caller, and files (a whole page at least): enough to
#: cover the ledger's opening and each page's staging, few enough that a listing its caller finds
#: repeating itself is stopped after a handful of requests more
LIST_AHEAD_PAGES = 3
LIST_AHEAD_FILES = 5_000


class _Ahead:
    """The pages between a listing's thread and its caller (see :class:`Listing`)."""

    def __init__(self) -> None:
        self._ready = threading.Condition()
        self._pages: deque[list[RemoteFile]] = deque()
        self._files = 0
        self._error: BaseException | None = None
        self._ended = False
        self._stopped = False

    def fill(self, pages: Iterator[list[RemoteFile]]) -> None:
        try:
            # Once closed, a page's request that failed is not sent again: a listing no one reads
            # must not go on retrying beside the one that replaced it.
            with checked_before_resending(self._not_stopped):
                self._fill(pages)
        except BaseException as e:  # raised to the caller, in its thread, where the page would be
            with self._ready:
                self._error = e
        finally:
            with self._ready:
                self._ended = True
                self._ready.notify_all()

    def _not_stopped(self, _failed: BaseException | None) -> None:
        if self._stopped:
            raise NotResent("the listing was closed")

    def _fill(self, pages: Iterator[list[RemoteFile]]) -> None:
        for page in pages:
            with self._ready:
                while self._pages and self._full() and not self._stopped:
                    self._ready.wait()
                if self._stopped:
                    return
                self._pages.append(page)
                self._files += len(page)
                self._ready.notify_all()

    def _full(self) -> bool:
        return len(self._pages) >= LIST_AHEAD_PAGES or self._files >= LIST_AHEAD_FILES

    def take(self) -> list[RemoteFile]:
        with self._ready:
            while not self._pages and not self._ended and not self._stopped:
                self._ready.wait()
            if self._stopped:  # never taken for the listing's end: it was not read to it
                raise RuntimeError("the listing was closed")
            if self._pages:
                page = self._pages.popleft()
                self._files -= len(page)
                self._ready.notify_all()
                return page
            if self._error is not None:  # each time it is asked: never taken for the end
                raise self._error
            raise StopIteration

    def stop(self) -> None:
        with self._ready:
            self._stopped = True
            self._pages.clear()
            self._ready.notify_all()
