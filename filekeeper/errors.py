"""One exception tree for everything filekeeper can refuse or fail at.

Every error carries the process exit code the CLI uses, so the CLI never has to guess::

    FilekeeperError                  1  operational failure (the base)
    ├── UsageError                   2  bad input: a missing path, an unknown provider or account
    │   ├── ConfigError              2  config.toml or the environment is malformed
    │   ├── MissingKeyError          2  the API key's variable is not set
    │   └── FileChanged              2  a file grew or shrank while it was being uploaded
    ├── Interrupted                130  stopped by Ctrl-C or SIGTERM; what was done is recorded
    ├── LedgerError                  1  the ledger cannot be opened, read or written
    │   └── LedgerConflict           1  a write met another's (a unique row created meanwhile)
    ├── QuotaExceeded                3  refused by quota policy before anything was sent
    ├── ReconcileRefused             1  a reconcile safety rail held; nothing was changed
    │   └── ReconcileBusy            1  another reconcile of the account holds its lock
    └── ProviderError                1  a provider answered with an error or could not be reached
        ├── FileNotFoundAtProvider   1  the provider does not hold that file id
        ├── IncompleteListing        1  a listing could not be read to its end
        └── ResponseLost             1  sent, but the answer never came: the outcome is unknown

The text of every error is redacted: an API key read through :meth:`filekeeper.config.Account.api_key`
is registered here and never appears in ``str(error)``, whoever prints it (the CLI, a script, a log).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from typing import Any

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_QUOTA = 3
#: reconcile --exit-code: the plan found something to do
EXIT_CHANGES = 4
#: stopped by SIGINT or SIGTERM (128 + SIGINT, as shells report it)
EXIT_INTERRUPTED = 130

REDACTED = "[redacted]"
# Secrets shorter than this would redact ordinary words; real API keys are far longer.
_MIN_SECRET = 8
_secrets: set[str] = set()
_secrets_lock = threading.Lock()
# user:password@ in a URL (a base URL, a database URL): the password part.
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^/@:\s]*):(?P<password>[^/@\s]+)@")


def register_secret(value: str) -> None:
    """Remember a value that must never be shown (an API key, once it has been read)."""
    if len(value) >= _MIN_SECRET:
        with _secrets_lock:
            _secrets.add(value)


def redact(text: str, extra: Iterable[str] = ()) -> str:
    """``text`` with every registered secret (and ``extra``) and any URL password replaced."""
    with _secrets_lock:
        secrets = sorted({*_secrets, *(s for s in extra if len(s) >= _MIN_SECRET)}, key=len, reverse=True)
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    return _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:{REDACTED}@", text)


def exit_code_for(errors: Iterable[FilekeeperError | None]) -> int:
    """The exit code for a command some of whose parts failed: the most severe wins (0 if none)."""
    return max((e.exit_code for e in errors if e is not None), default=EXIT_OK)


class FilekeeperError(Exception):
    """Base of every error filekeeper raises on purpose."""

    exit_code = EXIT_FAILURE

    def __str__(self) -> str:
        return redact(super().__str__())


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


class FileChanged(UsageError):
    """A file grew or shrank while it was being uploaded: what was sent is not the file."""


class Interrupted(FilekeeperError):
    """Stopped by Ctrl-C or SIGTERM before it finished; what was done is recorded."""

    exit_code = EXIT_INTERRUPTED


class LedgerError(FilekeeperError):
    """The ledger cannot be opened, read or written (corrupt, newer schema, unreachable)."""


class StoredNotRecorded(LedgerError):
    """A file was stored at the provider, and the ledger failed as it recorded it: ``file_id`` is
    its id there (its reservation stays pending until it is settled)."""

    def __init__(self, message: str, file_id: str) -> None:
        super().__init__(message)
        self.file_id = file_id


class GoneNotRecorded(LedgerError):
    """A file a delete left gone at the provider, whose outcome the ledger failed to record;
    ``already_gone``: the provider had no such file (rather than deleting it then)."""

    def __init__(self, message: str, *, already_gone: bool) -> None:
        super().__init__(message)
        self.already_gone = already_gone


class LedgerConflict(LedgerError):
    """A write met another process's: a row that must be unique was created meanwhile."""


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
        if self.message.startswith(where):  # a wrapped error already says where
            where = ""
        status = f"HTTP {self.status}: " if self.status else ""
        return redact(f"{where}{status}{self.message}")


class NotResent(FilekeeperError):
    """A request that failed in a way worth retrying was not sent again: what it was sent for no
    longer holds (a reconcile's delete of a file the ledger has since recorded as someone's)."""


class FileNotFoundAtProvider(ProviderError):
    """The provider does not hold that file id (HTTP 404)."""


class IncompleteListing(ProviderError):
    """A listing could not be read to its end; nothing may be concluded from it."""


class ResponseLost(ProviderError):
    """The request was sent but its response never arrived: the outcome is unknown."""
