"""Moonshot / Kimi."""

from __future__ import annotations

from typing import Any

from .base import Page, Provider


class Moonshot(Provider):
    name = "moonshot"

    def list_params(self, cursor: str | None) -> dict[str, str | int]:
        return {}

    def parse_page(self, body: Any) -> Page:
        # Kimi returns every file at once and ignores cursors: following one (as the OpenAI
        # SDK's auto-pager does) would loop for ever. One page is the whole listing.
        return Page(self._data(body), None)
