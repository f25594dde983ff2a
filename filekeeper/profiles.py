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
    purposes: frozenset[str] | None = None  # None: the provider does not enforce any
    formats: frozenset[str] | None = None


# The design card's policy: used for "compatible" and anything without a profile of its own.
DEFAULT_LIMITS = Limits(max_files=1000, max_total_bytes=10 * GB, max_file_bytes=100 * MB, retention_days=180)


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Extensions from the seed docs and PROVIDERS.md. Override per provider or account with
# `formats = [...]` (or "any") in config.toml where a provider accepts more.
_CODE = _words("go h c cpp cxx cc cs java js jsx css jsp php py py3 asp ts tsx rb rs sh swift kt scala sql r m pl")
_MOONSHOT_FORMATS = _CODE | _words(
    "pdf txt csv doc docx xls xlsx ppt pptx md jpeg jpg png bmp gif svg svgz webp ico xbm dib pjp tif pjpeg avif "
    "dot apng epub tiff jfif html htm json jsonl mobi log yaml yml ini conf mp4 mov avi webm"
)
_ZAI_FORMATS = _words("pdf doc docx xls xlsx ppt pptx txt md jpg jpeg png gif webp mp3 wav flac mp4 avi mov jsonl")
_XAI_FORMATS = _CODE | _words("pdf txt md docx csv json jsonl html htm xml yaml yml log")

PROFILES: dict[str, Profile] = {
    "moonshot": Profile(
        name="moonshot",
        key_env="MOONSHOT_API_KEY",
        base_url_env="MOONSHOT_BASE_URL",
        default_base_url="https://api.moonshot.ai/v1",
        default_purpose="file-extract",
        limits=DEFAULT_LIMITS,
        purposes=_words("file-extract image video batch"),
        formats=_MOONSHOT_FORMATS,
    ),
    "zai": Profile(
        name="zai",
        key_env="ZAI_API_KEY",
        base_url_env="ZAI_BASE_URL",
        default_base_url="https://api.z.ai/api/paas/v4",
        default_purpose="agent",
        limits=Limits(max_files=100, max_total_bytes=None, max_file_bytes=100 * MB, retention_days=180),
        purposes=_words("agent file-extract batch code-interpreter voice-clone-input retrieval fine-tune"),
        formats=_ZAI_FORMATS,
    ),
    "xai": Profile(
        name="xai",
        key_env="XAI_API_KEY",
        base_url_env="XAI_BASE_URL",
        default_base_url="https://api.x.ai/v1",
        default_purpose="assistants",
        limits=Limits(max_files=100_000, max_total_bytes=100 * GB, max_file_bytes=100 * MB, retention_days=180),
        formats=_XAI_FORMATS,  # purposes are echoed, not enforced
    ),
    "openai": Profile(
        name="openai",
        key_env="OPENAI_API_KEY",
        base_url_env="OPENAI_BASE_URL",
        default_base_url="https://api.openai.com/v1",
        default_purpose="assistants",
        limits=Limits(max_files=None, max_total_bytes=2500 * GB, max_file_bytes=512 * MB, retention_days=180),
        purposes=_words("assistants batch fine-tune vision user_data evals"),
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
