"""Anthropic's Files API, as its beta header shapes it.

Its own shape: ``x-api-key`` with a version and a beta header on every call, paths under
``/v1`` of the API root, no purpose, ``size_bytes`` and RFC 3339 ``created_at``, a listing paged
with ``after_id`` (newest first). The API now also answers without the beta header, in another
shape (``{data, next_page}``, paged with ``page``): both are read, so a proxy that drops the
header cannot make a listing look shorter than it is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from ..errors import FileNotFoundAtProvider
from ..profiles import GB, MB, Limits, Profile
from .base import Page, Provider, RemoteFile, from_rfc3339, more_follows, require_id, to_int

if TYPE_CHECKING:
    from .base import HashingReader

VERSION = "2023-06-01"
BETA = "files-api-2025-04-14"


class Anthropic(Provider):
    profile = Profile(
        name="anthropic",
        key_env="ANTHROPIC_API_KEY",
        base_url_env="ANTHROPIC_BASE_URL",
        default_base_url="https://api.anthropic.com",
        default_purpose="",
        # Kept until deleted; 500 MB per file, 100 GB per organisation (as documented when specified).
        limits=Limits(max_files=None, max_total_bytes=100 * GB, max_file_bytes=500 * MB, retention_days=180),
        purposes=frozenset(),
    )
    page_limit = 1000  # its maximum

    @classmethod
    def auth_headers(cls, api_key: str) -> dict[str, str]:
        return {"x-api-key": api_key, "anthropic-version": VERSION, "anthropic-beta": BETA}

    def send(self, reader: HashingReader, *, name: str, purpose: str, expires_after: int | None) -> RemoteFile:
        with self.answer():  # no purpose: its files have none
            body = self.http.json(
                "POST", "v1/files", idempotent=False, files={"file": (name, reader, self.content_type(name))}
            )
            return self.parse_file(body)

    def list_page(self, cursor: str | None, scope: str | None = None) -> Page:
        params: dict[str, str | int] = {"limit": self.page_limit}
        if cursor:
            kind, _, value = cursor.partition(":")
            params["page" if kind == "page" else "after_id"] = value
        body = self.http.json("GET", "v1/files", params=params)
        if not isinstance(body, dict) or not isinstance(body.get("data"), list):
            raise self.shape_error(body)
        files = [self.parse_file(item) for item in body["data"]]
        if "next_page" in body and "has_more" not in body:
            token = body.get("next_page")
            return Page(files, f"page:{token}" if isinstance(token, str) and token else None)
        has_more = more_follows(body, self.name)
        if not has_more or not files:
            return Page(files, None, claims_more=has_more)
        last = body.get("last_id") if isinstance(body.get("last_id"), str) else None
        return Page(files, f"after:{last or files[-1].id}", claims_more=True)

    def parse_file(self, obj: Any) -> RemoteFile:
        file_id = require_id(obj, "id", self.name)
        return RemoteFile(
            id=file_id,
            filename=str(obj.get("filename") or ""),
            bytes=to_int(obj.get("size_bytes")),
            created_at=from_rfc3339(obj.get("created_at")),
            purpose="",
            status=None,
            expires_at=from_rfc3339(obj.get("expires_at")),
            # Files you upload cannot be downloaded; the ones its tools write (code execution,
            # skills) can: those are the provider's, never orphans.
            generated=obj.get("downloadable") is True,
        )

    def retrieve(self, file_id: str) -> RemoteFile:
        return self.parse_file(self.http.json("GET", f"v1/files/{quote(file_id, safe='')}"))

    def delete(self, file_id: str) -> bool:
        try:
            self.http.request("DELETE", f"v1/files/{quote(file_id, safe='')}")
        except FileNotFoundAtProvider:
            return False
        return True
