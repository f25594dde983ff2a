"""xAI."""

from __future__ import annotations

from typing import Any

from ..profiles import GB, MB, Limits, Profile
from .base import Page
from .openai import OpenAIShaped


class XAI(OpenAIShaped):
    profile = Profile(
        name="xai",
        key_env="XAI_API_KEY",
        base_url_env="XAI_BASE_URL",
        default_base_url="https://api.x.ai/v1",
        default_purpose="assistants",
        # The seed said 100 MB per file; the live API answers 413 above 50 MB and its doc pages say
        # 48 to 50 MB: the lowest of those is the one no upload can be refused under.
        limits=Limits(max_files=100_000, max_total_bytes=100 * GB, max_file_bytes=48 * MB, retention_days=180),
        # "pdf txt md docx csv json, code, other text": open-ended, so the provider decides.
        formats=None,
        # purposes are echoed, not enforced
    )
    page_limit = 100
    expires_after_range = (3600, 2_592_000)

    def list_params(self, cursor: str | None, scope: str | None = None) -> dict[str, str | int]:
        params: dict[str, str | int] = {"limit": self.page_limit}
        if cursor:
            # The documented API pages with pagination_token; the older one with after. A
            # cursor is sent under the name it arrived as (see parse_page).
            kind, _, value = cursor.partition(":")
            params["pagination_token" if kind == "token" else "after"] = value
        return params

    def parse_page(self, body: Any) -> Page:
        if isinstance(body, dict) and "pagination_token" in body:
            files = self._data(body)
            token = body.get("pagination_token")
            # The docs end a listing with a page shorter than the limit, but a server that caps
            # pages lower still sends a token then: a token is followed (the base loop stops on an
            # empty page), so a short page can never hide files.
            if not token:
                return Page(files, None)
            return Page(files, f"token:{token}")
        page = super().parse_page(body)
        return Page(page.files, f"after:{page.next_cursor}" if page.next_cursor else None, page.claims_more)

    def expiry_form(self, seconds: int) -> dict[str, str]:
        # xAI's raw API takes a flat field, sent before the file (httpx sends fields first).
        return {"expires_after": str(seconds)}
