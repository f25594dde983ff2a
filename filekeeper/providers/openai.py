"""OpenAI, and any OpenAI-compatible service."""

from __future__ import annotations

from ..profiles import DEFAULT_LIMITS, GB, MB, Limits, Profile, words
from .base import Provider


class OpenAI(Provider):
    profile = Profile(
        name="openai",
        key_env="OPENAI_API_KEY",
        base_url_env="OPENAI_BASE_URL",
        default_base_url="https://api.openai.com/v1",
        default_purpose="assistants",
        limits=Limits(max_files=None, max_total_bytes=2500 * GB, max_file_bytes=512 * MB, retention_days=180),
        purposes=words("assistants batch fine-tune vision user_data evals"),
    )
    page_limit = 10_000  # the API's own maximum: one request for most accounts
    expires_after_range = (3600, 2_592_000)
    generated_purposes = frozenset({"batch_output", "fine-tune-results", "assistants_output"})

    def expiry_form(self, seconds: int) -> dict[str, str]:
        # A flat expires_after field is a 400 at OpenAI: it wants the bracketed pair.
        return {"expires_after[anchor]": "created_at", "expires_after[seconds]": str(seconds)}


class Compatible(Provider):
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
