"""The small interface every provider adapter implements, and the behaviour they share.

An adapter differs from another only where its provider does: how a listing pages, which
extra upload fields express an expiry, whether retrieve exists. Everything else (multipart
streaming, hashing, the list loop's safety stops, error envelopes) lives here or in ``_http``.
"""

from __future__ import annotations

import hashlib
import mimetypes
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, ClassVar
from urllib.parse import quote

from ..errors import FileChanged, FileNotFoundAtProvider, IncompleteListing, Interrupted, ProviderError, ResponseLost
from ..profiles import Profile

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

    @property
    def failed(self) -> bool:
        return self.status == "error"


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


def parse_file(obj: Any, provider: str, generated_purposes: frozenset[str] = frozenset()) -> RemoteFile:
    if not isinstance(obj, dict) or not isinstance(obj.get("id"), str) or not obj["id"]:
        raise ProviderError(f"the provider sent a file object without an id: {str(obj)[:120]}", provider=provider)
    size = obj.get("bytes")
    purpose = obj.get("purpose")
    return RemoteFile(
        id=obj["id"],
        filename=str(obj.get("filename") or ""),
        bytes=size if isinstance(size, int) and not isinstance(size, bool) else None,
        created_at=to_datetime(obj.get("created_at")),
        purpose=purpose,
        status=obj.get("status"),
        expires_at=to_datetime(obj.get("expires_at")),
        generated=purpose in generated_purposes,
    )


class _HashingReader:
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


class Provider:
    """Base adapter: an OpenAI-shaped Files API. Subclasses override what their provider changes."""

    #: what filekeeper knows of this provider before any config: its name, key, URL, limits
    profile: ClassVar[Profile]
    #: items per list request we ask for (providers cap it themselves too)
    page_limit: ClassVar[int] = 100
    #: the lifetimes (seconds) the provider accepts as an expiry of its own; None: it takes none
    expires_after_range: ClassVar[tuple[int, int] | None] = None
    #: purposes of the files the provider writes itself (batch results): never orphans
    generated_purposes: ClassVar[frozenset[str]] = frozenset()
    #: whether GET files/{id} exists; without it an absence is confirmed by a second listing
    has_retrieve: ClassVar[bool] = True

    def __init__(self, http: HTTP) -> None:
        self.http = http

    @property
    def name(self) -> str:
        return self.profile.name

    def close(self) -> None:
        self.http.close()

    # --- upload ---------------------------------------------------------------------------

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
        ``size`` is what the file held when it was checked against the quota: it must still."""
        name = filename or path.name
        content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        with path.open("rb") as f:
            now = os.fstat(f.fileno()).st_size
            if size is not None and now != size:
                raise FileChanged(f"the file changed since it was checked ({size:,} bytes then, {now:,} now)")
            size = now
            reader = _HashingReader(f, size, on_progress, cancel, on_sent)
            try:
                body = self.http.json(
                    "POST",
                    "files",
                    idempotent=False,
                    data={"purpose": purpose, **self.expiry_fields(expires_after)},
                    files={"file": (name, reader, content_type)},
                )
                remote = self.parse_file(body)
            except ResponseLost:
                raise
            except ProviderError as e:
                if (e.status is not None and 200 <= e.status < 300) or "without an id" in e.message:
                    # A success whose answer cannot be read: the file may well be stored. Look first.
                    raise ResponseLost(
                        f"the answer to the upload could not be read ({e.message})", provider=self.name
                    ) from None
                raise
        return Uploaded(remote=remote, sha256=reader.hash.hexdigest(), size=size)

    def expiry_fields(self, seconds: int | None) -> dict[str, str]:
        """Multipart fields that ask the provider to expire the file itself, when it takes that lifetime."""
        bounds = self.expires_after_range
        if seconds is None or bounds is None or not bounds[0] <= seconds <= bounds[1]:
            return {}
        return self.expiry_form(seconds)

    def expiry_form(self, seconds: int) -> dict[str, str]:
        """How this provider spells an expiry in an upload's form (with ``expires_after_range``)."""
        raise NotImplementedError

    # --- list -----------------------------------------------------------------------------

    def list_files(
        self, *, on_page: Callable[[int, int], None] | None = None, track_ids: bool = True
    ) -> Iterator[RemoteFile]:
        """Everything the account holds, page by page, or IncompleteListing.

        Stops on an empty page or a page that names no next cursor (no ``has_more``, no token).
        Raises on a cursor seen before, a page repeated, a file id listed twice (``track_ids``;
        a caller that detects repeats itself may turn it off) or more than :data:`MAX_PAGES`
        pages: a listing that cannot be read to its end must never pass for complete, and one
        that cycles must end rather than run for ever.
        """
        seen: set[str] = set()
        listed: set[str] = set()
        cursor: str | None = None
        previous_ids: set[str] = set()
        pages = count = 0
        while True:
            if pages >= MAX_PAGES:
                raise IncompleteListing(
                    f"the listing went on past {MAX_PAGES:,} pages ({count:,} files); stopped", provider=self.name
                )
            try:
                body = self.http.json("GET", "files", params=self.list_params(cursor))
            except ProviderError as e:
                raise IncompleteListing(
                    f"listing failed after {pages} page(s): {e.message}",
                    provider=self.name,
                    status=e.status,
                    code=e.code,
                ) from None
            page = self.parse_page(body)
            ids = {f.id for f in page.files}
            if ids and ids <= previous_ids:
                # A server that ignores the cursor but hands out fresh ones would loop for ever.
                raise IncompleteListing("the provider sent the same page twice; listing stopped", provider=self.name)
            for f in page.files if track_ids else ():
                if f.id in listed:
                    raise IncompleteListing(
                        f"the provider listed file {f.id} twice (page {pages + 1}); the listing cannot be trusted, "
                        "stopped",
                        provider=self.name,
                    )
                listed.add(f.id)
            previous_ids = ids
            pages += 1
            count += len(page.files)
            if on_page:
                on_page(pages, count)
            yield from page.files
            if not page.files:
                if page.claims_more:
                    raise IncompleteListing(
                        "the provider said more files follow but sent an empty page", provider=self.name
                    )
                return
            if page.next_cursor is None:
                return
            if page.next_cursor in seen:
                raise IncompleteListing(
                    f"the provider repeated the cursor {page.next_cursor!r}; listing stopped", provider=self.name
                )
            seen.add(page.next_cursor)
            cursor = page.next_cursor

    def first_page(self) -> Page:
        """One list request, the first page: enough to know the key and URL work (`doctor --online`)."""
        return self.parse_page(self.http.json("GET", "files", params=self.list_params(None)))

    def list_params(self, cursor: str | None) -> dict[str, str | int]:
        params: dict[str, str | int] = {"limit": self.page_limit}
        if cursor:
            params["after"] = cursor
        return params

    def parse_page(self, body: Any) -> Page:
        """``{data, has_more, last_id?}``: follow ``has_more``; a missing ``has_more`` ends it."""
        files = self._data(body)
        has_more = body.get("has_more")
        if has_more is not True or not files:
            return Page(files, None, claims_more=has_more is True)
        # has_more is trusted over a short page: a server that caps the page size below our
        # limit still says has_more, and stopping there would hide files.
        last = body.get("last_id") if isinstance(body.get("last_id"), str) else None
        return Page(files, last or files[-1].id, claims_more=True)

    def _data(self, body: Any) -> list[RemoteFile]:
        if not isinstance(body, dict) or not isinstance(body.get("data"), list):
            raise IncompleteListing(f"unexpected listing shape: {str(body)[:120]}", provider=self.name)
        return [self.parse_file(item) for item in body["data"]]

    # --- one file -------------------------------------------------------------------------

    def retrieve(self, file_id: str) -> RemoteFile:
        return self.parse_file(self.http.json("GET", f"files/{quote(file_id, safe='')}"))

    def parse_file(self, obj: Any) -> RemoteFile:
        return parse_file(obj, self.name, self.generated_purposes)

    def delete(self, file_id: str) -> bool:
        """Delete a file; False when the provider no longer had it (its own not-found answer).
        Any 2xx is a delete done, whatever its body says, unless it says ``deleted: false``."""
        try:
            response = self.http.request("DELETE", f"files/{quote(file_id, safe='')}")
        except FileNotFoundAtProvider:
            return False
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and body.get("deleted") is False:
            raise ProviderError(f"the provider refused to delete {file_id}", provider=self.name)
        return True
