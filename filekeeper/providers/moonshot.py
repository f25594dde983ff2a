"""Moonshot / Kimi."""

from __future__ import annotations

from typing import Any

from ..profiles import DEFAULT_LIMITS, Profile, words
from .base import Page
from .openai import OpenAIShaped


class Moonshot(OpenAIShaped):
    profile = Profile(
        name="moonshot",
        key_env="MOONSHOT_API_KEY",
        base_url_env="MOONSHOT_BASE_URL",
        default_base_url="https://api.moonshot.ai/v1",
        default_purpose="file-extract",
        limits=DEFAULT_LIMITS,
        purposes=words("file-extract image video batch"),
        # Its docs list formats and end with "and more": the provider decides, and says why.
        formats=None,
    )

    def list_params(self, cursor: str | None, scope: str | None = None) -> dict[str, str | int]:
        return {}

    def parse_page(self, body: Any) -> Page:
        # Kimi returns every file at once and ignores cursors: following one (as the OpenAI
        # SDK's auto-pager does) would loop for ever. One page is the whole listing.
        return Page(self._data(body), None)
