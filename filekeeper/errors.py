"""One exception tree for everything filekeeper can refuse or fail at.

Every error carries the process exit code the CLI should use, so the CLI never has to
guess: 1 operational failure, 2 bad input or usage, 3 refused by quota policy.
"""

from __future__ import annotations

from typing import Any

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_QUOTA = 3
#: reconcile --exit-code: the plan found something to do
EXIT_CHANGES = 4


class FilekeeperError(Exception):
    """Base of every error filekeeper raises on purpose."""

    exit_code = EXIT_FAILURE


class UsageError(FilekeeperError):
    """Bad input: a missing path, a directory, an unknown provider or account."""

    exit_code = EXIT_USAGE


class ConfigError(UsageError):
    """config.toml (or the environment) is malformed; the message names the file and key."""


class MissingKeyError(UsageError):
    """The API key's environment variable is not set; the message names it."""

    def __init__(self, account: str, variable: str) -> None:
        super().__init__(f"no API key for account {account!r}: set the environment variable {variable}")
        self.account = account
        self.variable = variable


class LedgerError(FilekeeperError):
    """The ledger cannot be opened, read or written (corrupt, newer schema, unreachable)."""


class QuotaExceeded(FilekeeperError):
    """An upload was refused by quota policy before anything was sent.

    ``violations`` holds :class:`filekeeper.quota.Violation` objects, one per broken limit.
    """

    exit_code = EXIT_QUOTA

    def __init__(self, message: str, violations: list[Any] | None = None) -> None:
        super().__init__(message)
        self.violations = violations or []


class ReconcileRefused(FilekeeperError):
    """A reconcile stopped before changing anything: a safety rail held (the message says which)."""


class ReconcileBusy(ReconcileRefused):
    """Another reconcile of the same account is running."""


class ProviderError(FilekeeperError):
    """A provider answered with an error, or could not be reached.

    ``status`` is the HTTP status (None for transport failures), ``code`` and ``type`` come
    from whichever error envelope the provider used.
    """

    def __init__(
        self,
        message: str,
        *,
        provider: str = "",
        status: int | None = None,
        code: str | None = None,
        type: str | None = None,
        retryable: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.provider = provider
        self.status = status
        self.code = code
        self.type = type
        self.retryable = retryable

    def __str__(self) -> str:
        where = f"{self.provider}: " if self.provider else ""
        status = f"HTTP {self.status}: " if self.status else ""
        return f"{where}{status}{self.message}"


class FileNotFoundAtProvider(ProviderError):
    """The provider does not hold that file id (HTTP 404)."""


class IncompleteListing(ProviderError):
    """A listing could not be read to its end; nothing may be concluded from it."""


class ResponseLost(ProviderError):
    """The request was sent but its response never arrived: the outcome is unknown."""
