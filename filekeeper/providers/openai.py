"""OpenAI, and any OpenAI-compatible service."""

from __future__ import annotations

from .base import Provider

# OpenAI and xAI accept an expiry between one hour and thirty days.
EXPIRES_AFTER_RANGE = (3600, 2_592_000)


class OpenAI(Provider):
    name = "openai"
    page_limit = 10_000  # the API's own maximum: one request for most accounts

    def expiry_fields(self, seconds: int | None) -> dict[str, str]:
        # A flat expires_after field is a 400 at OpenAI: it wants the bracketed pair.
        if seconds is None or not EXPIRES_AFTER_RANGE[0] <= seconds <= EXPIRES_AFTER_RANGE[1]:
            return {}
        return {"expires_after[anchor]": "created_at", "expires_after[seconds]": str(seconds)}


class Compatible(Provider):
    """An unknown OpenAI-compatible server: modest pages, no provider-side expiry."""

    name = "compatible"
    page_limit = 100
