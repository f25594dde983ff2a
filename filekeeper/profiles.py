"""The shape of what filekeeper knows about a provider before any config is read.

Pure data types. Each provider's own :class:`Profile` lives in its adapter module
(``filekeeper/providers/<name>.py``); :data:`filekeeper.providers.PROFILES` gathers them.
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
    purposes: frozenset[str] | None = None  # None: the provider does not enforce any
    formats: frozenset[str] | None = None


# The design card's policy: used for "compatible" and anything without a profile of its own.
DEFAULT_LIMITS = Limits(max_files=1000, max_total_bytes=10 * GB, max_file_bytes=100 * MB, retention_days=180)


def words(text: str) -> frozenset[str]:
    return frozenset(text.split())
