"""The OpenAI-shaped Files API, one family of adapters: OpenAI itself, any compatible service,
and the providers that copied its shape (Moonshot, Z.AI, xAI, DeepSeek), each differing only
where its provider does.

The shape: ``POST files`` (multipart ``purpose`` then ``file``), ``GET files?limit&after`` →
``{data, has_more, last_id?}``, ``GET``/``DELETE files/{id}``, file objects with ``bytes`` and
``created_at`` in Unix seconds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote

from ..errors import FileNotFoundAtProvider, ProviderError
from ..profiles import DAY, DEFAULT_LIMITS, GB, MB, Limits, Profile, PurposeLimits, words
from .base import Page, Provider, RemoteFile, more_follows, require_id, to_datetime

if TYPE_CHECKING:
    from .base import HashingReader


class OpenAIShaped(Provider):
    """A Files API shaped like OpenAI's. Subclasses override what their provider changes."""

    #: items per list request we ask for (providers cap it themselves too)
    page_limit: ClassVar[int] = 100
    #: purposes of the files the provider writes itself (batch results): never orphans
    generated_purposes: ClassVar[frozenset[str]] = frozenset()

    def send(self, reader: HashingReader, *, name: str, purpose: str, expires_after: int | None) -> RemoteFile:
        with self.answer():
            # httpx sends the fields before the file: DeepSeek and xAI read them only there.
            body = self.http.json(
                "POST",
                "files",
                idempotent=False,
                data={"purpose": purpose, **self.expiry_fields(expires_after)},
                files={"file": (name, reader, self.content_type(name))},
            )
            return self.parse_file(body)

    def expiry_form(self, seconds: int) -> dict[str, str]:
        # A flat expires_after field is a 400 at OpenAI: it wants the bracketed pair.
        return {"expires_after[anchor]": "created_at", "expires_after[seconds]": str(seconds)}

    def list_page(self, cursor: str | None, scope: str | None = None) -> Page:
        return self.parse_page(self.http.json("GET", "files", params=self.list_params(cursor, scope)))

    def list_params(self, cursor: str | None, scope: str | None = None) -> dict[str, str | int]:
        params: dict[str, str | int] = {"limit": self.page_limit}
        if cursor:
            params["after"] = cursor
        return params

    def parse_page(self, body: Any) -> Page:
        """``{data, has_more, last_id?}``: follow ``has_more``; a missing ``has_more`` ends it."""
        files = self._data(body)
        has_more = more_follows(body, self.name)
        if not has_more or not files:
            return Page(files, None, claims_more=has_more)
        # has_more is trusted over a short page: a server that caps the page size below our
        # limit still says has_more, and stopping there would hide files.
        last = body.get("last_id") if isinstance(body.get("last_id"), str) else None
        return Page(files, last or files[-1].id, claims_more=True)

    def _data(self, body: Any) -> list[RemoteFile]:
        if not isinstance(body, dict) or not isinstance(body.get("data"), list):
            raise self.shape_error(body)
        return [self.parse_file(item) for item in body["data"]]

    def parse_file(self, obj: Any) -> RemoteFile:
        file_id = require_id(obj, "id", self.name)
        size = obj.get("bytes")
        purpose = obj.get("purpose")
        return RemoteFile(
            id=file_id,
            filename=str(obj.get("filename") or ""),
            bytes=size if isinstance(size, int) and not isinstance(size, bool) else None,
            created_at=to_datetime(obj.get("created_at")),
            purpose=purpose if isinstance(purpose, str) else None,
            status=obj.get("status") if isinstance(obj.get("status"), str) else None,
            expires_at=to_datetime(obj.get("expires_at")),
            generated=purpose in self.generated_purposes,
        )

    def retrieve(self, file_id: str) -> RemoteFile:
        return self.parse_file(self.http.json("GET", f"files/{quote(file_id, safe='')}"))

    def delete(self, file_id: str) -> bool:
        """Any 2xx is a delete done, whatever its body says, unless it says ``deleted: false``."""
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


class OpenAI(OpenAIShaped):
    profile = Profile(
        name="openai",
        key_env="OPENAI_API_KEY",
        base_url_env="OPENAI_BASE_URL",
        default_base_url="https://api.openai.com/v1",
        default_purpose="assistants",
        limits=Limits(
            max_files=None,
            max_total_bytes=2500 * GB,
            max_file_bytes=512 * MB,
            retention_days=180,
            by_purpose={"batch": PurposeLimits(max_file_bytes=200 * MB)},
        ),
        purposes=words("assistants batch fine-tune vision user_data evals"),
        # "By default, files with purpose=batch expire after 30 days" (FileCreateParams).
        expiry={"batch": 30 * DAY},
    )
    page_limit = 10_000  # the API's own maximum: one request for most accounts
    expires_after_range = (3600, 2_592_000)
    generated_purposes = frozenset({"batch_output", "fine-tune-results", "assistants_output"})


class Compatible(OpenAIShaped):
    """An unknown OpenAI-compatible server: modest pages, no provider-side expiry."""

    profile = Profile(
        name="compatible",
        key_env=None,
        base_url_env=None,
        default_base_url=None,
        default_purpose="assistants",
        limits=DEFAULT_LIMITS,
    )
    page_limit = 100
