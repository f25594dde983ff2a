"""``Keeper``: the library API. The CLI is a thin shell over it; scripts can use it directly.

from filekeeper import Keeper

with Keeper() as keeper:
    [record] = keeper.upload_files(["report.pdf"], provider="moonshot")
    print(record.id, record.status)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from .config import Account, Settings, load_settings
from .errors import FilekeeperError, ProviderError, QuotaExceeded, ResponseLost, UsageError
from .ledger import FileRecord, Ledger, iso, open_ledger
from .profiles import PROFILES, Limits
from .quota import EvictMode, Held, Request, Usage, Violation, choose_evictions, evaluate, eviction_order, expiry
from .reservation import (
    could_be_upload_of,
    find_duplicate,
    held_files,
    may_be_duplicate,
    reserve,
    restore_evicted,
    usage,
)
from .schema import FILE_STATUSES, accounts, utcnow
from .units import parse_duration

if TYPE_CHECKING:
    from collections.abc import Iterator
    from datetime import datetime

    from .providers import Provider, RemoteFile
    from .reconcile import Options as ReconcileOptions
    from .reconcile import Progress as ReconcileProgress
    from .reconcile import Report
    from .reports import EventOut
    from .reports import Report as AuditReport

ProgressCallback = Callable[[int], None]

#: how many times an upload whose response was lost (and that did not land) is sent again
LOST_RESPONSE_ATTEMPTS = 3


@dataclass(frozen=True)
class UploadResult:
    path: Path
    record: FileRecord | None = None
    error: FilekeeperError | None = None
    #: files deleted at the provider to make room for this one (``evict=``)
    evicted: list[Held] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class CheckResult:
    """Whether files would fit, together, and if not what could make room."""

    account: Account
    usage: Usage
    requests: list[Request]
    violations: list[Violation]
    reused: list[FileRecord]
    #: what would have to go: how much, and which expired or oldest files would do it
    free_files: int = 0
    free_bytes: int = 0
    expired: list[Held] = field(default_factory=list)
    oldest: list[Held] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def to_json(self) -> dict[str, Any]:
        def held(h: Held) -> dict[str, Any]:
            return {
                "id": h.file_id,
                "filename": h.filename,
                "bytes": h.bytes,
                "created_at": iso(h.created_at),
                "expires_at": iso(h.expires_at),
            }

        return {
            "ok": self.ok,
            "account": self.account.name,
            "provider": self.account.provider,
            "usage": {"files": self.usage.files, "bytes": self.usage.bytes},
            "requested": {"files": len(self.requests), "bytes": sum(r.bytes for r in self.requests)},
            "limits": self.account.limits.as_dict(),
            "violations": [v.to_json() for v in self.violations],
            "reused": [r.to_json() for r in self.reused],
            "advice": {
                "free_files": self.free_files,
                "free_bytes": self.free_bytes,
                "expired": [held(h) for h in self.expired],
                "oldest": [held(h) for h in self.oldest],
            },
        }


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
        ttl: str | int | None = None,
        evict: EvictMode | None = None,
        force: bool = False,
        concurrency: int = 4,
        on_progress: ProgressCallback | None = None,
    ) -> list[UploadResult]:
        """Upload files, each checked against the quota, reserved and recorded on its own.

        Bad input (a missing path, a directory, an empty file, a bad TTL) is refused before
        anything is reserved or sent. A file refused by quota gets a :class:`QuotaExceeded`
        result; other single failures are returned too, not raised. An identical file (same
        sha256 and purpose) already active is returned as ``reused`` unless ``force``.
        ``evict`` ("expired" or "oldest") deletes files to make room instead of refusing.
        """
        acct = self.account(provider, account)
        ttl_seconds = parse_ttl(ttl)
        if evict not in (None, "expired", "oldest"):
            raise UsageError(f"evict must be 'expired' or 'oldest', not {evict!r}")
        files = [check_upload_path(p) for p in paths]
        if not files:
            raise UsageError("no files to upload")
        purpose = purpose or acct.default_purpose
        remote = self.connect(acct)
        try:
            account_id = self.ledger.ensure_account(acct)
            import threading
            from concurrent.futures import ThreadPoolExecutor

            progress_lock = threading.Lock()

            def progress(delta: int) -> None:
                if on_progress:
                    with progress_lock:
                        on_progress(delta)

            def one(path: Path) -> UploadResult:
                try:
                    return self._upload_one(
                        acct, account_id, remote, path, purpose, ttl_seconds, evict, force, progress
                    )
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
        ttl_seconds: int | None,
        evict: EvictMode | None,
        force: bool,
        progress: ProgressCallback,
    ) -> UploadResult:
        ledger = self.ledger
        request = Request(path.name, path.stat().st_size, purpose)
        # Hashing first costs a second read of the file: only worth it when a duplicate may exist.
        if force:
            sha = None
        else:
            with ledger.transaction() as conn:
                sha = sha256_file(path) if may_be_duplicate(conn, account_id, request) else None
        reservation = reserve(
            ledger,
            acct,
            account_id,
            request,
            sha256=sha,
            ttl_seconds=ttl_seconds,
            expires_at=expiry(utcnow(), ttl_seconds, acct.limits.retention_days),
            evict=evict,
            force=force,
            source=str(path.resolve()),
        )
        if reservation.violations:
            raise QuotaExceeded(
                "refused by quota: " + "; ".join(v.message for v in reservation.violations),
                reservation.violations,
            )
        assert reservation.record is not None
        if reservation.reused:
            return UploadResult(path, reservation.record)
        pending = reservation.record
        for victim in reservation.evicted:
            try:
                remote.delete(victim.file_id)
            except ProviderError as e:
                for v in reservation.evicted:
                    restore_evicted(ledger, account_id, v, e.message)
                ledger.fail(pending.ledger_id, f"could not evict {victim.file_id} to make room: {e.message}")
                raise ProviderError(
                    f"could not evict {victim.file_id} to make room: {e.message}", provider=e.provider, status=e.status
                ) from None
        record = self._send(acct, account_id, remote, path, pending, ttl_seconds, progress)
        return UploadResult(path, record, evicted=reservation.evicted)

    def _send(
        self,
        acct: Account,
        account_id: int,
        remote: Provider,
        path: Path,
        reservation: FileRecord,
        ttl_seconds: int | None,
        progress: ProgressCallback,
    ) -> FileRecord:
        """Upload a reserved file; settle its row as active, or failed, or leave it pending when unknowable."""
        ledger = self.ledger
        size = reservation.bytes
        retention = acct.limits.retention_days
        expires_after = ttl_seconds if ttl_seconds is not None else (retention * 86400 if retention else None)
        for attempt in range(1, LOST_RESPONSE_ATTEMPTS + 1):
            try:
                up = remote.upload(path, purpose=reservation.purpose, expires_after=expires_after, on_progress=progress)
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

    # --- check ----------------------------------------------------------------------------

    def check(
        self,
        paths: Sequence[str | os.PathLike[str]],
        *,
        provider: str | None = None,
        account: str | None = None,
        purpose: str | None = None,
        ttl: str | int | None = None,
        force: bool = False,
    ) -> CheckResult:
        """Would these files fit, together? Reads the ledger only; nothing leaves the machine."""
        acct = self.account(provider, account)
        ttl_seconds = parse_ttl(ttl)
        paths_ = [check_upload_path(p) for p in paths]
        if not paths_:
            raise UsageError("no files to check")
        purpose = purpose or acct.default_purpose
        requests = [Request(p.name, p.stat().st_size, purpose) for p in paths_]
        now = utcnow()
        reused: list[FileRecord] = []
        new = list(requests)
        held_now = Usage(0, 0)
        all_held: list[Held] = []
        with self.ledger.transaction() as conn:
            account_id = conn.execute(select(accounts.c.id).where(accounts.c.name == acct.name)).scalar()
            if account_id is not None:
                if not force:
                    new = []
                    for path, request in zip(paths_, requests, strict=True):
                        duplicate = None
                        if may_be_duplicate(conn, account_id, request):
                            duplicate = find_duplicate(conn, account_id, sha256_file(path), request.purpose)
                        if duplicate is None:
                            new.append(request)
                        else:
                            reused.append(duplicate)
                held_now = usage(conn, account_id)
            violations = evaluate(acct.limits, acct.rules, held_now, new, ttl_seconds)
            short_of_room = any(v.limit in ("max_files", "max_total_bytes") for v in violations)
            if short_of_room and account_id is not None:
                all_held = held_files(conn, account_id)
        expired_held = [h for h in all_held if h.expired(now)]
        result = CheckResult(acct, held_now, new, violations, reused)
        if not short_of_room:
            return result
        limits = acct.limits
        free_files = max(0, held_now.files + len(new) - limits.max_files) if limits.max_files is not None else 0
        need = held_now.bytes + sum(r.bytes for r in new)
        free_bytes = max(0, need - limits.max_total_bytes) if limits.max_total_bytes is not None else 0
        by_expiry = choose_evictions(limits, held_now, new, expired_held, "expired", now)
        by_age = choose_evictions(limits, held_now, new, all_held, "oldest", now)
        return replace(
            result,
            free_files=free_files,
            free_bytes=free_bytes,
            expired=by_expiry if by_expiry is not None else eviction_order(expired_held, "expired", now),
            oldest=by_age or [],
        )

    def _find_landed(self, remote: Provider, account_id: int, reservation: FileRecord, size: int) -> RemoteFile | None:
        """The file an upload with a lost response stored, if it did: same name and size,
        created after the reservation, and not already another ledger row's."""
        for candidate in remote.list_files():
            if could_be_upload_of(candidate, reservation.filename, size, reservation.created_at) and (
                self.ledger.find(account_id, candidate.id) is None
            ):
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
        wanted = [self.account(provider, account)] if provider or account else self.settings.known_accounts()
        known = self.ledger.accounts()
        by_name = {a.name: a for a in wanted}
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

    # --- reconcile ------------------------------------------------------------------------

    def reconcile(
        self,
        *,
        provider: str | None = None,
        account: str | None = None,
        options: ReconcileOptions | None = None,
        progress: ReconcileProgress | None = None,
        on_wait: Callable[[str], None] | None = None,
    ) -> Report:
        """Compare one account's ledger with its provider's listing; with ``options.apply``, act.

        Raises IncompleteListing (nothing was changed), ReconcileRefused (a safety rail held;
        nothing was changed) or ReconcileBusy (another applying run holds the account's lock).
        """
        from .reconcile import reconcile

        acct = self.account(provider, account)
        remote = self.connect(acct)
        try:
            account_id = self.ledger.ensure_account(acct)
            return reconcile(
                self.ledger, acct, account_id, remote, options or ReconcileOptions(), progress=progress, on_wait=on_wait
            )
        finally:
            remote.close()

    def reconcile_all(self, **kwargs: Any) -> list[tuple[Account, Report | FilekeeperError]]:
        """:meth:`reconcile` for every configured account and each provider whose key is set here.

        Accounts that only the ledger knows (another host's, on a shared ledger) are not this
        host's to reconcile. One account's failure does not stop the others.
        """
        out: list[tuple[Account, Report | FilekeeperError]] = []
        for acct in self.settings.known_accounts():
            try:
                out.append((acct, self.reconcile(account=acct.name, **kwargs)))
            except FilekeeperError as e:
                out.append((acct, e))
        return out

    # --- reports --------------------------------------------------------------------------

    def report(
        self,
        *,
        provider: str | None = None,
        account: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> AuditReport:
        """The audit summary of every account (or one) for a period (default: the last 30 days)."""
        from .reports import build

        until = until or utcnow()
        since = since or until - timedelta(days=30)
        if since > until:
            raise UsageError("--since is after --until")
        return build(self.ledger, self.settings, self._account_ids(provider, account), since, until)

    def events(
        self,
        *,
        provider: str | None = None,
        account: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        newest_first: int | None = None,
    ) -> Iterator[EventOut]:
        """Every event of the period, streamed (for CSV and JSON reports of any size)."""
        from .reports import iter_events

        return iter_events(self.ledger, self._account_ids(provider, account), since, until, newest_first=newest_first)

    def prune_events(self, before: datetime, archive: Path | None = None) -> tuple[int, Path]:
        """Archive events older than ``before`` to CSV, then remove them from the ledger."""
        from .reports import prune_events

        if archive is None:
            stamp = utcnow().strftime("%Y%m%dT%H%M%SZ")
            archive = self.settings.home / "archive" / f"events-before-{before:%Y-%m-%d}-{stamp}.csv"
        if archive.exists():
            raise UsageError(f"{archive} exists already; give another --archive")
        return prune_events(self.ledger, before, archive), archive

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


def parse_ttl(ttl: str | int | None) -> int | None:
    """Seconds from a TTL given as seconds or as "30d", "12h", "15m", "3600s"."""
    if ttl is None:
        return None
    if isinstance(ttl, int) and not isinstance(ttl, bool):
        seconds = ttl
    else:
        try:
            seconds = parse_duration(str(ttl))
        except ValueError as e:
            raise UsageError(f"--ttl: {e}") from None
    if seconds <= 0:
        raise UsageError("--ttl must be longer than zero")
    return seconds


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
    import hashlib

    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
