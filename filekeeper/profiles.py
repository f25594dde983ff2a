"""What filekeeper knows about each provider before any config is read.

Pure data, imported by commands that must stay light (``check``, ``ls``), so no HTTP here.
Sources: ../shared/seeds and ../shared/PROVIDERS.md.
"""

from __future__ import annotations

from dataclasses import dataclass

GB = 10**9
MB = 10**6


@dataclass(frozen=True)
class Limits:
    """An account's quota policy. ``None`` means no limit; retention 0 means keep for ever."""

    max_files: int | None
    max_total_bytes: int | None
    max_file_bytes: int | None
    retention_days: int

    def as_dict(self) -> dict[str, int | None]:
        return {
            "max_files": self.max_files,
            "max_total_bytes": self.max_total_bytes,
            "max_file_bytes": self.max_file_bytes,
            "retention_days": self.retention_days,
        }


@dataclass(frozen=True)
class Profile:
    name: str
    key_env: str | None  # None: the key variable must be named in config
    base_url_env: str | None
    default_base_url: str | None  # None: base_url must come from config
    default_purpose: str
    limits: Limits


# The design card's policy: used for "compatible" and anything without a profile of its own.
DEFAULT_LIMITS = Limits(max_files=1000, max_total_bytes=10 * GB, max_file_bytes=100 * MB, retention_days=180)

PROFILES: dict[str, Profile] = {
    "moonshot": Profile(
        name="moonshot",
        key_env="MOONSHOT_API_KEY",
        base_url_env="MOONSHOT_BASE_URL",
        default_base_url="https://api.moonshot.ai/v1",
        default_purpose="file-extract",
        limits=DEFAULT_LIMITS,
    ),
    "zai": Profile(
        name="zai",
        key_env="ZAI_API_KEY",
        base_url_env="ZAI_BASE_URL",
        default_base_url="https://api.z.ai/api/paas/v4",
        default_purpose="agent",
        limits=Limits(max_files=100, max_total_bytes=None, max_file_bytes=100 * MB, retention_days=180),
    ),
    "xai": Profile(
        name="xai",
        key_env="XAI_API_KEY",
        base_url_env="XAI_BASE_URL",
        default_base_url="https://api.x.ai/v1",
        default_purpose="assistants",
        limits=Limits(max_files=100_000, max_total_bytes=100 * GB, max_file_bytes=100 * MB, retention_days=180),
    ),
    "openai": Profile(
        name="openai",
        key_env="OPENAI_API_KEY",
        base_url_env="OPENAI_BASE_URL",
        default_base_url="https://api.openai.com/v1",
        default_purpose="assistants",
        limits=Limits(max_files=None, max_total_bytes=2500 * GB, max_file_bytes=512 * MB, retention_days=180),
    ),
    "compatible": Profile(
        name="compatible",
        key_env=None,
        base_url_env=None,
        default_base_url=None,
        default_purpose="assistants",
        limits=DEFAULT_LIMITS,
    ),
}

PROVIDERS: tuple[str, ...] = tuple(PROFILES)
