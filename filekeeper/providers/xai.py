"""xAI."""

from __future__ import annotations

from typing import Any

from .base import Page, Provider
from .openai import EXPIRES_AFTER_RANGE


class XAI(Provider):
    name = "xai"
    page_limit = 100

    def list_params(self, cursor: str | None) -> dict[str, str | int]:
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

    def expiry_fields(self, seconds: int | None) -> dict[str, str]:
        # xAI's raw API takes a flat field, sent before the file (httpx sends fields first).
        if seconds is None or not EXPIRES_AFTER_RANGE[0] <= seconds <= EXPIRES_AFTER_RANGE[1]:
            return {}
        return {"expires_after": str(seconds)}
