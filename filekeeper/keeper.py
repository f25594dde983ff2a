"""``Keeper``: the library API. The CLI is a thin shell over it; scripts can use it directly.

from filekeeper import Keeper

with Keeper() as keeper:
    [record] = keeper.upload_files(["report.pdf"], provider="moonshot")
    print(record.id, record.status)
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import Account, Settings, load_settings
from .errors import FilekeeperError, ProviderError, ResponseLost, UsageError
from .ledger import FileRecord, Ledger, open_ledger
from .models import FILE_STATUSES, utcnow
from .profiles import PROFILES, Limits

if TYPE_CHECKING:
    from .providers import Provider, RemoteFile

ProgressCallback = Callable[[int], None]

#: provider clocks and ours may disagree; a landed file may look this much older than its reservation
CLOCK_SKEW = timedelta(minutes=5)
#: how many times an upload whose response was lost (and that did not land) is sent again
LOST_RESPONSE_ATTEMPTS = 3


@dataclass(frozen=True)
class UploadResult:
    path: Path
    record: FileRecord | None = None
    error: FilekeeperError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class DeleteResult:
    file_id: str
    account: str
    provider: str
    already_gone: bool = False
    record: FileRecord | None = None
    error: FilekeeperError | None = None

    def to_json(self) -> dict[str, Any]:
        base = (
            self.record.to_json()
            if self.record
            else {
                "id": self.file_id,
                "provider": self.provider,
                "account": self.account,
                "status": "deleted",
            }
        )
        return {**base, "already_gone": self.already_gone, "known": self.record is not None}


@dataclass(frozen=True)
class AccountUsage:
    account: str
    provider: str
    files: int
    bytes: int
    limits: Limits = field(repr=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "account": self.account,
            "provider": self.provider,
            "files": self.files,
            "bytes": self.bytes,
            "limits": self.limits.as_dict(),
        }


class Keeper:
    """One ledger and the provider accounts configured around it."""

    def __init__(self, settings: Settings | None = None, *, http_options: dict[str, Any] | None = None) -> None:
        self.settings = settings or load_settings()
        self._http_options = http_options or {}
        self._ledger: Ledger | None = None

    def __enter__(self) -> Keeper:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._ledger is not None:
            self._ledger.close()
            self._ledger = None

    @property
    def ledger(self) -> Ledger:
        if self._ledger is None:
            self._ledger = open_ledger(self.settings)
        return self._ledger

    def account(self, provider: str | None = None, account: str | None = None) -> Account:
        return self.settings.resolve(provider, account)

    def connect(self, account: Account) -> Provider:
        from .providers import RetryPolicy, Timeouts, connect

        h = self.settings.http
        options: dict[str, Any] = {
            "retry": RetryPolicy(
                attempts=h.attempts,
                total_seconds=h.total_seconds,
                backoff_initial=h.backoff_seconds,
                backoff_max=max(h.backoff_seconds, 8.0),
            ),
            "timeouts": Timeouts(read=h.timeout_seconds, write=h.timeout_seconds),
        }
        return connect(account, **{**options, **self._http_options})

    # --- upload ---------------------------------------------------------------------------

    def upload(
        self,
        paths: Sequence[str | os.PathLike[str]],
        *,
        provider: str | None = None,
        account: str | None = None,
        purpose: str | None = None,
        concurrency: int = 4,
        on_progress: ProgressCallback | None = None,
    ) -> list[UploadResult]:
        """Upload files, each reserved and recorded on its own; one result per path, in order.

        Bad input (a missing path, a directory, an empty file) is refused before anything is
        reserved or sent. Failures of single uploads are returned, not raised.
        """
        acct = self.account(provider, account)
        files = [check_upload_path(p) for p in paths]
        if not files:
            raise UsageError("no files to upload")
        purpose = purpose or acct.default_purpose
        remote = self.connect(acct)
        try:
            account_id = self.ledger.ensure_account(acct)
            progress_lock = threading.Lock()

            def progress(delta: int) -> None:
                if on_progress:
                    with progress_lock:
                        on_progress(delta)

            def one(path: Path) -> UploadResult:
                try:
                    return UploadResult(path, self._upload_one(acct, account_id, remote, path, purpose, progress))
                except FilekeeperError as e:
                    return UploadResult(path, error=e)

            workers = max(1, min(concurrency, len(files)))
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="upload") as pool:
                return list(pool.map(one, files))
        finally:
            remote.close()

    def upload_files(self, paths: Sequence[str | os.PathLike[str]], **kwargs: Any) -> list[FileRecord]:
        """Like :meth:`upload`, but raises the first failure instead of returning it."""
        results = self.upload(paths, **kwargs)
        for result in results:
            if result.error is not None:
                raise result.error
        return [r.record for r in results if r.record is not None]

    def _upload_one(
        self,
        acct: Account,
        account_id: int,
        remote: Provider,
        path: Path,
        purpose: str,
        progress: ProgressCallback,
    ) -> FileRecord:
        size = path.stat().st_size
        retention = acct.limits.retention_days
        ledger = self.ledger
        expires_at = utcnow() + timedelta(days=retention) if retention else None
        reservation = ledger.reserve(
            account_id,
            filename=path.name,
            size=size,
            purpose=purpose,
            expires_at=expires_at,
            source=str(path.resolve()),
        )
        for attempt in range(1, LOST_RESPONSE_ATTEMPTS + 1):
            try:
                up = remote.upload(path, purpose=purpose, on_progress=progress)
            except ResponseLost as e:
                try:
                    landed = self._find_landed(remote, account_id, reservation, size)
                except ProviderError as lookup_error:
                    raise ProviderError(
                        f"{e.message}, and the provider could not be asked whether it landed "
                        f"({lookup_error.message}); the reservation stays pending until reconcile settles it",
                        provider=acct.provider,
                    ) from None
                if landed is not None:
                    return ledger.activate(
                        reservation.ledger_id,
                        file_id=landed.id,
                        size=size,
                        sha256=sha256_file(path),
                        adopted_after=e.message,
                        attempt=attempt,
                    )
                if attempt == LOST_RESPONSE_ATTEMPTS:
                    ledger.fail(reservation.ledger_id, e.message, status=e.status, attempts=attempt)
                    raise ProviderError(
                        f"{e.message}; gave up after {attempt} attempts", provider=acct.provider
                    ) from None
                continue
            except ProviderError as e:
                ledger.fail(reservation.ledger_id, e.message, status=e.status, code=e.code)
                raise
            except OSError as e:
                ledger.fail(reservation.ledger_id, f"reading {path}: {e.strerror}")
                raise UsageError(f"cannot read {path}: {e.strerror}") from None
            return ledger.activate(
                reservation.ledger_id,
                file_id=up.remote.id,
                size=up.size,
                sha256=up.sha256,
                remote_status=up.remote.status,
                attempt=attempt,
            )
        raise AssertionError("unreachable")

    def _find_landed(self, remote: Provider, account_id: int, reservation: FileRecord, size: int) -> RemoteFile | None:
        """The file an upload with a lost response stored, if it did: same name and size,
        created after the reservation, and not already another ledger row's."""
        since = reservation.created_at - CLOCK_SKEW
        for candidate in remote.list_files():
            if candidate.filename != reservation.filename or candidate.bytes not in (size, None):
                continue
            if candidate.created_at is not None and candidate.created_at < since:
                continue
            if self.ledger.find(account_id, candidate.id) is None:
                return candidate
        return None

    # --- ledger views ---------------------------------------------------------------------

    def files(
        self,
        *,
        provider: str | None = None,
        account: str | None = None,
        statuses: Iterable[str] | None = None,
    ) -> list[FileRecord]:
        statuses = list(statuses) if statuses is not None else None
        for status in statuses or ():
            if status not in FILE_STATUSES:
                raise UsageError(f"unknown status {status!r} (choose from {', '.join(FILE_STATUSES)})")
        ids = self._account_ids(provider, account)
        return self.ledger.files(account_ids=ids, statuses=statuses)

    def usage(self, *, provider: str | None = None, account: str | None = None) -> list[AccountUsage]:
        """Files and bytes in use (active + pending) per account, with its limits."""
        accounts = [self.account(provider, account)] if provider or account else self.settings.known_accounts()
        known = self.ledger.accounts()
        by_name = {a.name: a for a in accounts}
        if not (provider or account):
            for name, (_, provider_name) in known.items():
                by_name.setdefault(name, self._account_or_profile(name, provider_name))
        counts = self.ledger.usage(known[n][0] for n in by_name if n in known)
        out = []
        for name in sorted(by_name):
            a = by_name[name]
            files, size = counts.get(known[name][0], (0, 0)) if name in known else (0, 0)
            out.append(AccountUsage(a.name, a.provider, files, size, a.limits))
        return out

    def _account_or_profile(self, name: str, provider: str) -> Account:
        try:
            return self.settings.account(name)
        except UsageError:
            # An account the ledger knows but the config no longer names: its provider's defaults.
            profile = PROFILES[provider]
            return Account(name, provider, "", "", profile.limits, profile.default_purpose)

    def _account_ids(self, provider: str | None, account: str | None) -> list[int] | None:
        if not (provider or account):
            return None
        name = self.account(provider, account).name
        found = self.ledger.accounts().get(name)
        return [] if found is None else [found[0]]

    # --- delete ---------------------------------------------------------------------------

    def delete(
        self, file_ids: Sequence[str], *, provider: str | None = None, account: str | None = None
    ) -> list[DeleteResult]:
        """Delete files at the provider and record it; a file already gone counts as deleted."""
        acct = self.account(provider, account)
        if not file_ids:
            raise UsageError("no file ids to delete")
        remote = self.connect(acct)
        try:
            account_id = self.ledger.ensure_account(acct)
            results = []
            for file_id in file_ids:
                try:
                    existed = remote.delete(file_id)
                except ProviderError as e:
                    results.append(DeleteResult(file_id, acct.name, acct.provider, error=e))
                    continue
                record = self.ledger.mark_deleted(account_id, file_id, already_gone=not existed)
                results.append(DeleteResult(file_id, acct.name, acct.provider, not existed, record))
            return results
        finally:
            remote.close()


def check_upload_path(path: str | os.PathLike[str]) -> Path:
    """A readable, non-empty regular file, or a UsageError saying what is wrong with it."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise UsageError(f"no such file: {p}") from None
    except OSError as e:
        raise UsageError(f"cannot read {p}: {e.strerror}") from None
    if p.is_dir():
        raise UsageError(f"{p} is a directory; give the files in it")
    if not p.is_file():
        raise UsageError(f"{p} is not a regular file")
    if st.st_size == 0:
        raise UsageError(f"{p} is empty; providers refuse empty files")
    if not os.access(p, os.R_OK):
        raise UsageError(f"cannot read {p}: permission denied")
    return p


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
