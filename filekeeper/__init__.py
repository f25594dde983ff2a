"""filekeeper: a local file-lifecycle tracker with quota enforcement for LLM providers' Files APIs.

The public API is what this module exports; everything else is internal.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .config import Account, Settings, load_settings
from .errors import (
    ConfigError,
    FilekeeperError,
    FileNotFoundAtProvider,
    IncompleteListing,
    LedgerError,
    MissingKeyError,
    ProviderError,
    QuotaExceeded,
    ResponseLost,
    UsageError,
)
from .keeper import AccountUsage, DeleteResult, Keeper, UploadResult
from .ledger import FileRecord
from .profiles import PROFILES, PROVIDERS, Limits

__all__ = [
    "PROFILES",
    "PROVIDERS",
    "Account",
    "AccountUsage",
    "ConfigError",
    "DeleteResult",
    "FileNotFoundAtProvider",
    "FileRecord",
    "FilekeeperError",
    "IncompleteListing",
    "Keeper",
    "LedgerError",
    "Limits",
    "MissingKeyError",
    "ProviderError",
    "QuotaExceeded",
    "ResponseLost",
    "Settings",
    "UploadResult",
    "UsageError",
    "__version__",
    "load_settings",
]
