"""Google's Gemini Files API.

Its own shape: ``x-goog-api-key``, a two-step resumable upload (a JSON ``start`` that answers
with an upload URL, then the raw bytes with ``upload, finalize``), file names like
``files/abc123`` as ids, ``{files, nextPageToken}`` listings where an empty project answers ``{}``,
sizes as strings, RFC 3339 times. Every file is deleted by Google 48 hours after its upload: the
profile says so, and the ledger records each file's ``expirationTime``.

A file that does not exist answers 403 PERMISSION_DENIED, as a file of another project does: a
retrieve proves nothing gone here (a second listing does), and a delete answered so is an error.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit, urlunsplit

from ..errors import FileNotFoundAtProvider, ProviderError, ResponseLost
from ..profiles import GB, HOUR, Limits, Profile
from .base import Page, Provider, RawBody, RemoteFile, from_rfc3339, require_id, sha256_of, to_int

if TYPE_CHECKING:
    from .base import HashingReader

_ID = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?")


class Gemini(Provider):
    profile = Profile(
        name="gemini",
        key_env="GEMINI_API_KEY",
        key_env_fallbacks=("GOOGLE_API_KEY",),
        base_url_env="GEMINI_BASE_URL",
        default_base_url="https://generativelanguage.googleapis.com",
        default_purpose="",
        # 2 GB per file and 20 GB per project, read as decimal: if Google means GiB, the decimal
        # reading refuses a little early, never lets an upload fail. No retention policy of ours
        # is needed: the provider's own 48 hours come first.
        limits=Limits(max_files=None, max_total_bytes=20 * GB, max_file_bytes=2 * GB, retention_days=0),
        purposes=frozenset(),
        expiry={"*": 48 * HOUR},
    )
    page_limit = 100  # its maximum
    retrieve_proves_absence = False

    @classmethod
    def auth_headers(cls, api_key: str) -> dict[str, str]:
        return {"x-goog-api-key": api_key}

    @classmethod
    def canonical_id(cls, file_id: str) -> str:
        # Google's own tools print "abc123" as often as "files/abc123": both name one file.
        return file_id if file_id.startswith("files/") or not _ID.fullmatch(file_id) else f"files/{file_id}"

    def send(self, reader: HashingReader, *, name: str, purpose: str, expires_after: int | None) -> RemoteFile:
        # Step 1 stores nothing (an unused upload session expires by itself): safe to repeat.
        started = self.http.request(
            "POST",
            "upload/v1beta/files",
            json={"file": {"display_name": name}},
            headers={
                "X-Goog-Upload-Protocol": "resumable",
                "X-Goog-Upload-Command": "start",
                "X-Goog-Upload-Header-Content-Length": str(reader.size),
                "X-Goog-Upload-Header-Content-Type": self.content_type(name),
            },
        )
        target = started.headers.get("x-goog-upload-url")
        if not target:
            raise ProviderError("no upload was started: the answer named no X-Goog-Upload-URL", provider=self.name)
        # Step 2 stores the file: never repeated blindly, and its answer is read with care.
        with self.answer():
            try:
                body = self.http.json(
                    "POST",
                    self._same_host(target),
                    idempotent=False,
                    content=RawBody(reader),
                    headers={
                        "X-Goog-Upload-Command": "upload, finalize",
                        "X-Goog-Upload-Offset": "0",
                        "Content-Length": str(reader.size),
                        "Content-Type": self.content_type(name),
                    },
                )
            except ProviderError as e:
                if e.status != 404:
                    raise
                # A session that is gone may be one that finished (a finalize repeated after its
                # answer was lost): whether the file is stored only the listing can say.
                raise ResponseLost(f"the upload session is gone ({e.message})", provider=self.name) from None
            return self.parse_file(body.get("file") if isinstance(body, dict) else body)

    def _same_host(self, url: str) -> str:
        # The upload URL authenticates itself, but our key goes with every request of this
        # client: it is sent to the configured host and no other (as the SDK does with a base URL).
        base = self.http.client.base_url
        parts = urlsplit(url)
        return urlunsplit((base.scheme, base.netloc.decode("ascii"), parts.path, parts.query, ""))

    def list_page(self, cursor: str | None, scope: str | None = None) -> Page:
        params: dict[str, str | int] = {"pageSize": self.page_limit}
        if cursor:
            params["pageToken"] = cursor
        body = self.http.json("GET", "v1beta/files", params=params)
        if not isinstance(body, dict) or "error" in body:  # an error answered as a success is no page
            raise self.shape_error(body)
        # Google leaves empty fields out: an empty project is {}, the last page has no token.
        raw = body.get("files", [])
        if not isinstance(raw, list):
            raise self.shape_error(body)
        token = body.get("nextPageToken")
        return Page([self.parse_file(item) for item in raw], token if isinstance(token, str) and token else None)

    def parse_file(self, obj: Any) -> RemoteFile:
        file_id = require_id(obj, "name", self.name)
        state = obj.get("state")
        return RemoteFile(
            id=file_id,
            filename=str(obj.get("displayName") or ""),
            bytes=to_int(obj.get("sizeBytes")),
            created_at=from_rfc3339(obj.get("createTime")),
            purpose="",
            status=state.lower() if isinstance(state, str) else None,
            expires_at=from_rfc3339(obj.get("expirationTime")),
            generated=obj.get("source") == "GENERATED",
            sha256=sha256_of(obj.get("sha256Hash")),
        )

    def _path(self, file_id: str) -> str:
        short = file_id.removeprefix("files/")
        if not _ID.fullmatch(short):
            # Not a name Gemini could have given (and not a path to send anywhere).
            raise FileNotFoundAtProvider(
                f"{file_id!r} is not a Gemini file name (files/ and up to 40 of a-z, 0-9, -)",
                provider=self.name,
                status=404,
            )
        return f"v1beta/files/{quote(short, safe='')}"

    def retrieve(self, file_id: str) -> RemoteFile:
        return self.parse_file(self.http.json("GET", self._path(file_id)))

    def delete(self, file_id: str) -> bool:
        try:
            self.http.request("DELETE", self._path(file_id))
        except FileNotFoundAtProvider:
            return False
        except ProviderError as e:
            if e.status == 403:
                raise ProviderError(
                    f"{e.message} (Gemini says this for a file that does not exist or has expired, files live 48 "
                    "hours, and for one this key's project cannot reach: nothing is known to be deleted)",
                    provider=self.name,
                    status=403,
                    code=e.code,
                ) from None
            raise
        return True
