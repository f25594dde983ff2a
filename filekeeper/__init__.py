"""filekeeper: a local file-lifecycle tracker with quota enforcement for LLM providers' Files APIs.

The public API is what this module exports (``__all__``); every other name is internal.
"""

from __future__ import annotations

from ._version import __version__
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
    ReconcileBusy,
    ReconcileRefused,
    ResponseLost,
    UsageError,
)
from .keeper import Keeper
from .profiles import Limits
from .providers import PROFILES, PROVIDERS
from .quota import Advice, Held, Violation
from .reconcile import ReconcileOptions, ReconcilePlan
from .records import AccountUsage, CheckResult, DeleteResult, FileRecord, UploadResult
from .report_formats import FORMATS, AuditReport, write_report

__all__ = [
    "FORMATS",
    "PROFILES",
    "PROVIDERS",
    "Account",
    "AccountUsage",
    "Advice",
    "AuditReport",
    "CheckResult",
    "ConfigError",
    "DeleteResult",
    "FileNotFoundAtProvider",
    "FileRecord",
    "FilekeeperError",
    "Held",
    "IncompleteListing",
    "Keeper",
    "LedgerError",
    "Limits",
    "MissingKeyError",
    "ProviderError",
    "QuotaExceeded",
    "ReconcileBusy",
    "ReconcileOptions",
    "ReconcilePlan",
    "ReconcileRefused",
    "ResponseLost",
    "Settings",
    "UploadResult",
    "UsageError",
    "Violation",
    "__version__",
    "load_settings",
    "write_report",
]
