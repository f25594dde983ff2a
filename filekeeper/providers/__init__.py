"""Provider adapters: one module per provider, each carrying its :class:`~filekeeper.profiles.Profile`.

:data:`REGISTRY` is the one list of providers: the CLI's choices, the built-in accounts, the test
suite and CI all derive from it. Adding a provider is a new adapter module and one line there
(plus its quirks in the test emulator). An OpenAI-shaped provider subclasses
:class:`~.openai.OpenAIShaped` and is little more than its profile (see :mod:`.deepseek`).

Importing this package does not import httpx; :func:`connect` does, when a command talks to a provider.
"""

from __future__ import annotations

from typing import Any, Protocol

from ..profiles import Profile
from ._resend import checked_before_resending
from .anthropic import Anthropic
from .base import Listing, Page, Provider, RemoteFile, Uploaded
from .deepseek import DeepSeek
from .gemini import Gemini
from .moonshot import Moonshot
from .openai import Compatible, OpenAI
from .xai import XAI
from .zai import ZAI

REGISTRY: tuple[type[Provider], ...] = (Moonshot, ZAI, XAI, OpenAI, DeepSeek, Anthropic, Gemini, Compatible)

ADAPTERS: dict[str, type[Provider]] = {cls.profile.name: cls for cls in REGISTRY}
PROFILES: dict[str, Profile] = {name: cls.profile for name, cls in ADAPTERS.items()}
PROVIDERS: tuple[str, ...] = tuple(ADAPTERS)


def spellings(file_id: str) -> list[str]:
    """The ids ``file_id`` may stand for at some provider (itself first)."""
    return list(dict.fromkeys([file_id, *(cls.canonical_id(file_id) for cls in REGISTRY)]))


class Credentials(Protocol):
    """Where an account is and how to sign in (:class:`filekeeper.config.Account` is one)."""

    provider: str
    base_url: str
    api_key_env: str

    def api_key(self) -> str: ...


class HttpOptions(Protocol):
    """How patiently to talk (:class:`filekeeper.config.HttpSettings` is one)."""

    attempts: int
    total_seconds: float
    backoff_seconds: float
    timeout_seconds: float


def connect(account: Credentials, http: HttpOptions | None = None, **overrides: Any) -> Provider:
    """An adapter for one account, its key read from the environment now.

    ``http`` is the ``[http]`` config section; ``overrides`` go to :class:`~._http.HTTP` as they are
    (a test's ``transport``, a ``sleep``).
    """
    from ._http import HTTP, RetryPolicy, Timeouts

    options: dict[str, Any] = {}
    if http is not None:
        options = {
            "retry": RetryPolicy(
                attempts=http.attempts,
                total_seconds=http.total_seconds,
                backoff_initial=http.backoff_seconds,
                backoff_max=max(http.backoff_seconds, 8.0),
            ),
            "timeouts": Timeouts(read=http.timeout_seconds, write=http.timeout_seconds),
        }
    adapter = ADAPTERS[account.provider]
    key = account.api_key()
    client = HTTP(
        account.provider,
        account.base_url,
        key,
        key_hint=getattr(account, "key_variable", account.api_key_env),
        headers=adapter.auth_headers(key),
        **{**options, **overrides},
    )
    return adapter(client)


__all__ = [
    "ADAPTERS",
    "PROFILES",
    "PROVIDERS",
    "REGISTRY",
    "Listing",
    "Page",
    "Provider",
    "RemoteFile",
    "Uploaded",
    "checked_before_resending",
    "connect",
    "spellings",
]
