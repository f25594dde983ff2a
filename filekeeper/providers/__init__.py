"""Provider adapters: one per provider, behind the interface in :mod:`.base`.

Importing this package imports httpx; the CLI does so only in commands that talk to a provider.
"""

from __future__ import annotations

from ..config import Account
from ._http import HTTP, RetryPolicy, Timeouts, parse_error
from .base import Page, Provider, RemoteFile, Uploaded
from .moonshot import Moonshot
from .openai import Compatible, OpenAI
from .xai import XAI
from .zai import ZAI

ADAPTERS: dict[str, type[Provider]] = {
    "moonshot": Moonshot,
    "zai": ZAI,
    "xai": XAI,
    "openai": OpenAI,
    "compatible": Compatible,
}


def connect(account: Account, **http_options: object) -> Provider:
    """An adapter for one account, its key read from the environment now."""
    http = HTTP(account.provider, account.base_url, account.api_key(), key_hint=account.api_key_env, **http_options)  # type: ignore[arg-type]
    return ADAPTERS[account.provider](http)


__all__ = [
    "ADAPTERS",
    "HTTP",
    "Page",
    "Provider",
    "RemoteFile",
    "RetryPolicy",
    "Timeouts",
    "Uploaded",
    "connect",
    "parse_error",
]
