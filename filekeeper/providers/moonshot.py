"""Moonshot / Kimi."""

from __future__ import annotations

from typing import Any

from ..profiles import CODE_FORMATS, DEFAULT_LIMITS, Profile, words
from .base import Page, Provider


class Moonshot(Provider):
    profile = Profile(
        name="moonshot",
        key_env="MOONSHOT_API_KEY",
        base_url_env="MOONSHOT_BASE_URL",
        default_base_url="https://api.moonshot.ai/v1",
        default_purpose="file-extract",
        limits=DEFAULT_LIMITS,
        purposes=words("file-extract image video batch"),
        formats=CODE_FORMATS
        | words(
            "pdf txt csv doc docx xls xlsx ppt pptx md jpeg jpg png bmp gif svg svgz webp ico xbm dib pjp tif pjpeg "
            "avif dot apng epub tiff jfif html htm json jsonl mobi log yaml yml ini conf mp4 mov avi webm"
        ),
    )

    def list_params(self, cursor: str | None) -> dict[str, str | int]:
        return {}

    def parse_page(self, body: Any) -> Page:
        # Kimi returns every file at once and ignores cursors: following one (as the OpenAI
        # SDK's auto-pager does) would loop for ever. One page is the whole listing.
        return Page(self._data(body), None)
