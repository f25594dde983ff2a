"""filekeeper: a local file-lifecycle tracker with quota enforcement for LLM providers' Files APIs.

The public API is what this module exports (``__all__``); every other name is internal.
Names are imported on first use (PEP 562), so that ``import filekeeper`` and ``filekeeper --help``
stay light: the ledger's SQLAlchemy is loaded only by what touches the ledger.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from ._version import __version__

#: public name -> the module that defines it
_EXPORTS = {
    "Account": "config",
    "Settings": "config",
    "load_settings": "config",
    "ConfigError": "errors",
    "FilekeeperError": "errors",
    "FileNotFoundAtProvider": "errors",
    "IncompleteListing": "errors",
    "LedgerError": "errors",
    "LedgerConflict": "errors",
    "FileChanged": "errors",
    "GoneNotRecorded": "errors",
    "Interrupted": "errors",
    "MissingKeyError": "errors",
    "ProviderError": "errors",
    "QuotaExceeded": "errors",
    "ReconcileBusy": "errors",
    "ReconcileRefused": "errors",
    "ResponseLost": "errors",
    "StoredNotRecorded": "errors",
    "UsageError": "errors",
    "Keeper": "keeper",
    "Limits": "profiles",
    "PROFILES": "providers",
    "PROVIDERS": "providers",
    "Advice": "quota",
    "Held": "quota",
    "Violation": "quota",
    "ReconcileOptions": "records",
    "ReconcilePlan": "reconcile_plan",
    "AccountUsage": "records",
    "CheckResult": "records",
    "DeleteResult": "records",
    "FileRecord": "records",
    "FileHistory": "report_formats",
    "Diagnosis": "doctor",
    "AccountCheck": "doctor",
    "PruneResult": "records",
    "UploadResult": "records",
    "FORMATS": "report_formats",
    "AuditReport": "report_formats",
    "write_report": "report_formats",
    "http_client": "sdk",
    "async_http_client": "sdk",
}

__all__ = [
    "FORMATS",
    "PROFILES",
    "PROVIDERS",
    "Account",
    "AccountCheck",
    "AccountUsage",
    "Advice",
    "AuditReport",
    "CheckResult",
    "ConfigError",
    "DeleteResult",
    "Diagnosis",
    "FileChanged",
    "FileHistory",
    "FileNotFoundAtProvider",
    "FileRecord",
    "FilekeeperError",
    "GoneNotRecorded",
    "Held",
    "IncompleteListing",
    "Interrupted",
    "Keeper",
    "LedgerConflict",
    "LedgerError",
    "Limits",
    "MissingKeyError",
    "ProviderError",
    "PruneResult",
    "QuotaExceeded",
    "ReconcileBusy",
    "ReconcileOptions",
    "ReconcilePlan",
    "ReconcileRefused",
    "ResponseLost",
    "Settings",
    "StoredNotRecorded",
    "UploadResult",
    "UsageError",
    "Violation",
    "__version__",
    "async_http_client",
    "http_client",
    "load_settings",
    "write_report",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'filekeeper' has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value  # once imported, an ordinary attribute
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:
    from .config import Account, Settings, load_settings
    from .doctor import AccountCheck, Diagnosis
    from .errors import (
        ConfigError,
        FileChanged,
        FilekeeperError,
        FileNotFoundAtProvider,
        GoneNotRecorded,
        IncompleteListing,
        Interrupted,
        LedgerConflict,
        LedgerError,
        MissingKeyError,
        ProviderError,
        QuotaExceeded,
        ReconcileBusy,
        ReconcileRefused,
        ResponseLost,
        StoredNotRecorded,
        UsageError,
    )
    from .keeper import Keeper
    from .profiles import Limits
    from .providers import PROFILES, PROVIDERS
    from .quota import Advice, Held, Violation
    from .reconcile_plan import ReconcilePlan
    from .records import (
        AccountUsage,
        CheckResult,
        DeleteResult,
        FileRecord,
        PruneResult,
        ReconcileOptions,
        UploadResult,
    )
    from .report_formats import FORMATS, AuditReport, FileHistory, write_report
    from .sdk import async_http_client, http_client
