"""The shape of what filekeeper knows about a provider before any config is read.

Pure data types. Each provider's own :class:`Profile` lives in its adapter module
(``filekeeper/providers/<name>.py``); :data:`filekeeper.providers.PROFILES` gathers them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

GB = 10**9
MB = 10**6
MIB = 2**20
GIB = 2**30
HOUR = 3600
DAY = 86400


@dataclass(frozen=True)
class PurposeLimits:
    """What one purpose's files may hold, on top of the account's limits (None: no limit of its own)."""

    max_files: int | None = None
    max_total_bytes: int | None = None
    max_file_bytes: int | None = None

    def as_dict(self) -> dict[str, int | None]:
        return {
            "max_files": self.max_files,
            "max_total_bytes": self.max_total_bytes,
            "max_file_bytes": self.max_file_bytes,
        }


@dataclass(frozen=True)
class Limits:
    """An account's quota policy. ``None`` means no limit; retention 0 means keep for ever.

    ``by_purpose`` narrows it for one purpose's files (Z.AI counts batch files apart from agent
    files); ``by_format`` caps one format's files below ``max_file_bytes`` (DeepSeek takes
    64 MiB images but 32 MiB text). A file must pass every limit that applies to it."""

    max_files: int | None
    max_total_bytes: int | None
    max_file_bytes: int | None
    retention_days: int
    by_purpose: Mapping[str, PurposeLimits] = field(default_factory=dict)
    by_format: Mapping[str, int] = field(default_factory=dict)

    def max_file_bytes_for(self, purpose: str, fmt: str) -> int | None:
        """The largest file of this purpose and format (the lowest of the limits that apply)."""
        caps = [self.max_file_bytes, self.by_format.get(fmt)]
        scoped = self.by_purpose.get(purpose)
        if scoped is not None:
            caps.append(scoped.max_file_bytes)
        present = [c for c in caps if c is not None]
        return min(present) if present else None

    def as_dict(self) -> dict[str, object]:
        return {
            "max_files": self.max_files,
            "max_total_bytes": self.max_total_bytes,
            "max_file_bytes": self.max_file_bytes,
            "retention_days": self.retention_days,
            "by_purpose": {p: scoped.as_dict() for p, scoped in sorted(self.by_purpose.items())},
            "by_format": dict(sorted(self.by_format.items())),
        }


@dataclass(frozen=True)
class Profile:
    name: str
    key_env: str | None  # None: the key variable must be named in config
    base_url_env: str | None
    default_base_url: str | None  # None: base_url must come from config
    #: "" for a provider whose files have no purpose (Anthropic, Gemini)
    default_purpose: str
    limits: Limits
    #: None: the provider does not enforce any; empty: it takes none at all
    purposes: frozenset[str] | None = None
    formats: frozenset[str] | None = None
    #: other variables the provider's own SDK reads the key from, when ``key_env`` is not set
    key_env_fallbacks: tuple[str, ...] = ()
    #: seconds after upload at which the provider deletes a file by itself, per purpose ("*": any
    #: purpose), unless the upload asks for another lifetime (OpenAI: batch files after 30 days)
    expiry: Mapping[str, int] = field(default_factory=dict)

    def expiry_of(self, purpose: str) -> int | None:
        return self.expiry.get(purpose, self.expiry.get("*"))


# The design card's policy: used for "compatible" and anything without a profile of its own.
DEFAULT_LIMITS = Limits(max_files=1000, max_total_bytes=10 * GB, max_file_bytes=100 * MB, retention_days=180)


def words(text: str) -> frozenset[str]:
    return frozenset(text.split())
