"""``Keeper``: the library API. The CLI is a thin shell over it; scripts can use it directly.

    from filekeeper import Keeper

    with Keeper() as keeper:
        [record] = keeper.upload_files(["report.pdf"], provider="moonshot")
        print(record.id, record.status)

A facade, like ``sqlite_utils.Database``: it resolves accounts, validates input and forwards to
the workflow modules (:mod:`.upload`, :mod:`.reconcile`, :mod:`.reports`), which do the work.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import Account, Settings, load_settings
from .errors import FilekeeperError, Interrupted, UsageError
from .quota import EvictMode, Request, Usage, advise, evaluate, short_of_room, unsupported
from .records import (
    SORTS,
    AccountUsage,
    CheckResult,
    DeleteResult,
    FileRecord,
    PruneResult,
    ReconcileOptions,
    UploadResult,
)
from .units import parse_duration, utcnow

# The ledger's and the upload's modules (SQLAlchemy's) are imported where they are used: a
# reconcile sends its first list request while they load.
if TYPE_CHECKING:
    from .doctor import Diagnosis
    from .ledger import Ledger, Reader
    from .providers import Provider
    from .reconcile import Progress as ReconcileProgress
    from .reconcile_plan import ReconcilePlan
    from .report_formats import AuditReport, EventOut, FileHistory
    from .reports import ReportQuery
    from .upload import FilePayload

ProgressCallback = Callable[[int], None]


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
            from .ledger import open_ledger

            self._ledger = open_ledger(self.settings)
        return self._ledger

    def account(self, provider: str | None = None, account: str | None = None) -> Account:
        return self.settings.resolve(provider, account)

    def connect(self, account: Account) -> Provider:
        from .providers import connect

        return connect(account, self.settings.http, **self._http_options)

    # --- upload and check -------------------------------------------------------------------

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
        from .upload import FilePayload, UploadJob, upload_all

        acct = self.account(provider, account)
        ttl_seconds = parse_ttl(ttl)
        if evict not in (None, "expired", "oldest"):
            raise UsageError(f"evict must be 'expired' or 'oldest', not {evict!r}")
        files = [check_upload_path(p) for p in paths]
        if not files:
            raise UsageError("no files to upload")
        _refuse_unsupported(acct, [Request(p.name, 0, purpose or acct.default_purpose) for p in files])
        remote = self.connect(acct)
        try:
            account_id = self.ledger.ensure_account(acct)
            jobs = [
                UploadJob(
                    acct,
                    account_id,
                    FilePayload(path),
                    purpose or acct.default_purpose,
                    ttl_seconds,
                    evict,
                    force,
                    detail={"source": str(path.resolve())},
                    path=path,
                )
                for path in files
            ]
            return upload_all(self.ledger, remote, jobs, concurrency=concurrency, on_progress=on_progress)
        finally:
            remote.close()

    def upload_files(self, paths: Sequence[str | os.PathLike[str]], **kwargs: Any) -> list[FileRecord]:
        """Like :meth:`upload`, but raises the first failure instead of returning it."""
        results = self.upload(paths, **kwargs)
        for result in results:
            if result.error is not None:
                raise result.error
        return [r.record for r in results if r.record is not None]

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
        from .upload import REUSE_AT_LEAST, FilePayload

        acct = self.account(provider, account)
        ttl_seconds = parse_ttl(ttl)
        payloads = [FilePayload(check_upload_path(p)) for p in paths]
        if not payloads:
            raise UsageError("no files to check")
        purpose = purpose or acct.default_purpose
        requests = [Request(p.filename, p.size, purpose) for p in payloads]
        _refuse_unsupported(acct, requests)
        with self.ledger.read() as r:
            now = utcnow()
            account_id, usage, maybe = r.check_figures(acct.name, [] if force else requests, now=now)
            until = now + (timedelta(seconds=ttl_seconds) if ttl_seconds is not None else REUSE_AT_LEAST)
            reused, new, twins = _split_reused(r, account_id, payloads, requests, maybe, force, until)
            violations = evaluate(acct.limits, usage, new, ttl_seconds)
            advice = None
            if short_of_room(violations):
                held = r.held_files(account_id) if account_id is not None else []
                advice = advise(acct.limits, usage, new, held, utcnow())
        return CheckResult(acct, usage, new, violations, reused, advice, twins)

    # --- ledger views -----------------------------------------------------------------------

    def files(self, **kwargs: Any) -> list[FileRecord]:
        """Ledger records (see :meth:`iter_files` for the arguments), as a list."""
        return list(self.iter_files(**kwargs))

    def iter_files(
        self,
        *,
        provider: str | None = None,
        account: str | None = None,
        statuses: Iterable[str] | None = None,
        purpose: str | None = None,
        name: str | None = None,
        older_than: str | int | None = None,
        expiring_within: str | int | None = None,
        sort: str = "created",
        limit: int | None = None,
    ) -> Iterator[FileRecord]:
        """Ledger records, streamed: of one account (or all), with these statuses (default all),
        this purpose, a filename matching the glob ``name``, created at least ``older_than`` ago,
        expiring within ``expiring_within`` (the expired included); ``sort`` created (oldest
        first), size (largest first), name, or expires (soonest first); at most ``limit``."""
        from .ledger import FileQuery
        from .schema import FILE_STATUSES

        wanted = list(statuses) if statuses is not None else None
        for status in wanted or ():
            if status not in FILE_STATUSES:
                raise UsageError(f"unknown status {status!r} (choose from {', '.join(FILE_STATUSES)})")
        if sort not in SORTS:
            raise UsageError(f"unknown order {sort!r} (choose from {', '.join(SORTS)})")
        if limit is not None and limit < 1:
            raise UsageError("--limit must be at least 1")
        now = utcnow()
        query = FileQuery(
            account_ids=self._account_ids(provider, account),
            statuses=wanted,
            purpose=purpose,
            name=name,
            created_before=None
            if older_than is None
            else now - timedelta(seconds=_duration(older_than, "--older-than")),
            expiring_by=None
            if expiring_within is None
            else now + timedelta(seconds=_duration(expiring_within, "--expiring-within")),
            sort=sort,
            limit=limit,
        )
        with self.ledger.read() as r:
            yield from r.iter_files(query)

    def show(self, ref: str, *, provider: str | None = None, account: str | None = None) -> FileHistory:
        """One file's record and its whole event history, oldest first. ``ref`` is the provider's
        id, or ``#N`` for ledger row N (a reservation has no provider id)."""
        from .providers import spellings
        from .report_formats import FileHistory
        from .reports import event_out

        ids = self._account_ids(provider, account)
        with self.ledger.read() as r:
            found = []
            for spelled in spellings(ref.strip()):  # "abc" for Gemini's "files/abc"
                found = found or r.records_named(spelled, ids)
            if not found:
                raise UsageError(f"no file {ref!r} in the ledger" + (" of that account" if ids is not None else ""))
            if len(found) > 1:
                where = ", ".join(sorted(f.account for f in found))
                raise UsageError(f"{ref} is recorded under several accounts ({where}); pick one with --account")
            [record] = found
            names = {id_: name for name, (id_, _) in r.accounts().items()}
            providers = {name: provider for name, (_, provider) in r.accounts().items()}
            events = [event_out(e, names, providers, record) for e in r.history(record.ledger_id)]
        return FileHistory(record, events)

    def usage(self, *, provider: str | None = None, account: str | None = None) -> list[AccountUsage]:
        """Files and bytes in use (active + pending) per account, with its limits."""
        one = bool(provider or account)
        wanted = {a.name: a for a in ([self.account(provider, account)] if one else self.settings.known_accounts())}
        known = self.ledger.accounts()
        if not one:
            for name, (_, provider_name) in known.items():
                wanted.setdefault(name, self.settings.account_or_default(name, provider_name))
        counts = self.ledger.usage(known[n][0] for n in wanted if n in known)
        out = []
        for name in sorted(wanted):
            a = wanted[name]
            used = counts.get(known[name][0], Usage(0, 0)) if name in known else Usage(0, 0)
            by_purpose = {p: used.purpose(p) for p in sorted({*used.by_purpose, *a.limits.by_purpose})}
            out.append(
                AccountUsage(a.name, a.provider, used.files, used.bytes, a.limits, by_purpose, a.provider_expiry)
            )
        return out

    def _account_ids(self, provider: str | None, account: str | None) -> list[int] | None:
        if not (provider or account):
            return None
        found = self.ledger.accounts().get(self.account(provider, account).name)
        return [] if found is None else [found[0]]

    def doctor(self, *, online: bool = False) -> Diagnosis:
        """Settings, the ledger and each account, and what looks wrong (see :mod:`filekeeper.doctor`).
        Changes nothing: a missing ledger is not created, an old one not upgraded."""
        from .doctor import diagnose

        return diagnose(
            self.settings, online=online, connect=self.connect, ledger_accounts=lambda: self.ledger.accounts()
        )

    # --- reconcile --------------------------------------------------------------------------

    def reconcile(
        self,
        *,
        provider: str | None = None,
        account: str | None = None,
        options: ReconcileOptions | None = None,
        progress: ReconcileProgress | None = None,
        on_wait: Callable[[str], None] | None = None,
    ) -> ReconcilePlan:
        """Compare one account's ledger with its provider's listing; with ``options.apply``, act.

        Raises IncompleteListing (nothing was changed), ReconcileRefused (a safety rail held;
        nothing was changed), ReconcileBusy (another applying run holds the account's lock), or
        UsageError when another account is the same provider account. A plan changes nothing.
        """
        options = options or ReconcileOptions()
        acct = self.account(provider, account)
        remote = self.connect(acct)
        listing = None
        try:
            # The first page's request goes out now, to be on the wire while the ledger's modules
            # load and its lock is taken (a request that only reads, whatever happens next).
            listing = remote.list_pages(track_ids=False)  # the stage finds repeated files itself
            from .reconcile import reconcile, refuse_shared_identity

            refuse_shared_identity(acct, acct.identity(), self._identities())
            if options.apply:
                account_id: int | None = self.ledger.ensure_account(acct, record_changes=False)
            else:
                with self.ledger.read() as r:
                    row = r.account_row(acct.name)
                account_id = row.id if row is not None else None
            return reconcile(
                self.ledger, acct, account_id, remote, options, progress=progress, on_wait=on_wait, listing=listing
            )
        finally:
            if listing is not None:
                listing.close()
            remote.close()

    def _identities(self) -> list[tuple[str, str, set[str]]]:
        """(name, base URL, key fingerprints) of every account configured here with its key set,
        and of every account the ledger knows."""
        out = [
            (a.name, *a.identity()[:1], {a.key_fingerprint()}) for a in self.settings.known_accounts() if a.key_is_set()
        ]
        with self.ledger.read() as r:
            return out + r.identities()

    def reconcile_all(self, **kwargs: Any) -> list[tuple[Account, ReconcilePlan | FilekeeperError]]:
        """:meth:`reconcile` for every configured account and each provider whose key is set here.

        Accounts that only the ledger knows (another host's, on a shared ledger) are not this
        host's to reconcile. One account's failure does not stop the others; an interrupt does.
        """
        accounts = self.settings.known_accounts()
        if not accounts:
            # Said, not a quiet success: a cron job whose environment lost its keys would
            # otherwise look like one with nothing to do, for ever.
            from .providers import PROFILES

            keys = ", ".join(p.key_env for p in PROFILES.values() if p.key_env)
            raise UsageError(
                f"no account to reconcile: none is configured in {self.settings.config_path} and no "
                f"provider's API key is set here ({keys})"
            )
        out: list[tuple[Account, ReconcilePlan | FilekeeperError]] = []
        for acct in accounts:
            try:
                plan = self.reconcile(account=acct.name, **kwargs)
            except FilekeeperError as e:
                out.append((acct, e))
                continue
            out.append((acct, plan))
            if plan.interrupted:
                break
        return out

    # --- reports ----------------------------------------------------------------------------

    def report_query(
        self,
        *,
        provider: str | None = None,
        account: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> ReportQuery:
        """An audit report's question, for every account (or one) and a period (default: the last
        30 days); render it with :func:`filekeeper.report_formats.write_report`."""
        from .reports import ReportQuery

        until = until or utcnow()
        since = since or until - timedelta(days=30)
        if since > until:
            raise UsageError("--since is after --until")
        return ReportQuery(self.ledger, self.settings, self._account_ids(provider, account), since, until)

    def report(self, **kwargs: Any) -> AuditReport:
        """The audit summary (see :meth:`report_query` for the arguments)."""
        return self.report_query(**kwargs).summary()

    def events(self, *, newest_first: int | None = None, **kwargs: Any) -> Iterator[EventOut]:
        """Every event of the period, streamed (see :meth:`report_query` for the arguments)."""
        return self.report_query(**kwargs).events(newest_first=newest_first)

    def prune_events(self, before: datetime, archive: Path | None = None, *, apply: bool = False) -> PruneResult:
        """Archive events older than ``before`` to CSV, then remove them from the ledger; without
        ``apply``, only say how many (and of which dates) would go, and where."""
        from .reports import archive_events, events_before

        if archive is None:
            stamp = utcnow().strftime("%Y%m%dT%H%M%SZ")
            archive = self.settings.home / "archive" / f"events-before-{before:%Y-%m-%d}-{stamp}.csv"
        if archive.is_dir():
            raise UsageError(f"{archive} is a directory; give the archive's file name")
        if archive.exists() or archive.is_symlink():
            raise UsageError(f"{archive} exists already; give another --archive")
        count, first, last = events_before(self.ledger, before)
        if not apply or not count:
            return PruneResult(count, first, last, archive, applied=False)
        return PruneResult(archive_events(self.ledger, before, archive), first, last, archive, applied=True)

    def import_events(self, archive: Path) -> tuple[int, int]:
        """Put an archive's events back in the ledger: (imported, already there)."""
        from .reports import import_events

        return import_events(self.ledger, archive)

    # --- delete -----------------------------------------------------------------------------

    def delete(
        self, file_ids: Sequence[str], *, provider: str | None = None, account: str | None = None
    ) -> list[DeleteResult]:
        """Delete files at the provider and record it. Without ``provider``/``account``, each id's
        account is the one the ledger records it under. Every id is checked before anything is
        sent: a blank one, one the ledger records under another account than the one given, or
        one neither given nor recorded is a UsageError and nothing is deleted."""
        from .delete import delete_files

        ids = list(dict.fromkeys(str(i) for i in file_ids))  # the same id twice is one delete
        if not ids:
            raise UsageError("no file ids to delete")
        for file_id in ids:
            # "." and "..": no provider's id, and as a URL path segment they name the collection above it.
            if not file_id.strip() or file_id != file_id.strip() or not file_id.isprintable() or file_id in (".", ".."):
                raise UsageError(f"{file_id!r} is not a file id")
        from .providers import ADAPTERS, spellings

        given = self.account(provider, account) if provider or account else None
        with self.ledger.read() as r:
            if given is not None:
                ids = list(dict.fromkeys(ADAPTERS[given.provider].canonical_id(i) for i in ids))
            else:  # an id typed as no provider spells it ("abc" for Gemini's "files/abc"), if recorded so
                known = r.owners_of([s for i in ids for s in spellings(i)])
                ids = list(dict.fromkeys(next((s for s in spellings(i) if s in known), i) for i in ids))
            owners = r.owners_of(ids)
        groups: dict[str, list[str]] = {}
        for file_id in ids:
            names = owners.get(file_id, [])
            if given is not None:
                if names and given.name not in names:
                    raise UsageError(
                        f"{file_id} is recorded under account {names[0]!r}, not {given.name!r}; nothing was deleted "
                        f"(drop --provider/--account to delete it where it is)"
                    )
                groups.setdefault(given.name, []).append(file_id)
            elif not names:
                raise UsageError(f"{file_id} is not in the ledger; say where it is with --provider or --account")
            elif len(names) > 1:
                raise UsageError(f"{file_id} is recorded under several accounts ({', '.join(names)}); pick one")
            else:
                groups.setdefault(names[0], []).append(file_id)
        accounts = {name: given if given is not None else self.account(account=name) for name in groups}
        by_id: dict[str, DeleteResult] = {}
        for name, group in groups.items():
            acct = accounts[name]
            if any(isinstance(r.error, Interrupted) for r in by_id.values()):  # Ctrl-C: nothing more
                for file_id in group:
                    stop = Interrupted("not deleted: interrupted before it was sent")
                    by_id[file_id] = DeleteResult(file_id, acct.name, acct.provider, error=stop)
                continue
            remote = self.connect(acct)
            try:
                for result in delete_files(self.ledger, remote, acct, group):
                    by_id[result.file_id] = result
            finally:
                remote.close()
        return [by_id[i] for i in ids]


def _split_reused(
    r: Reader,
    account_id: int | None,
    payloads: Sequence[FilePayload],
    requests: Sequence[Request],
    maybe_duplicate: Sequence[bool],
    force: bool,
    lasting_until: datetime,
) -> tuple[list[FileRecord], list[Request], list[str]]:
    """Which files an upload would reuse (identical content already active, living at least to
    ``lasting_until``, as upload asks) and which it would send; of identical files given
    together, as upload does, only the first is sent. ``maybe_duplicate`` is, per request,
    whether an identical file may exist (:meth:`Reader.check_figures`; empty with ``force``)."""
    reused: list[FileRecord] = []
    new: list[Request] = []
    twins: list[str] = []
    sizes = Counter(p.size for p in payloads)
    sent: set[str] = set()
    for i, (p, request) in enumerate(zip(payloads, requests, strict=True)):
        if force:
            new.append(request)
            continue
        if account_id is not None and maybe_duplicate[i]:
            duplicate = r.find_duplicate(account_id, p.sha256(), request.purpose, lasting_until=lasting_until)
            if duplicate is not None:
                reused.append(duplicate)
                continue
        if sizes[p.size] > 1:  # maybe the same content twice in this command
            if p.sha256() in sent:
                twins.append(p.filename)
                continue
            sent.add(p.sha256())
        new.append(request)
    return reused, new, twins


def _refuse_unsupported(account: Account, requests: Sequence[Request]) -> None:
    """A purpose or a format the provider's docs say it rejects is bad input, before anything else."""
    if why := unsupported(account.provider, account.rules, requests):
        raise UsageError(why)


def _duration(value: str | int, option: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    try:
        return parse_duration(str(value))
    except ValueError as e:
        raise UsageError(f"{option}: {e}") from None


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
    """A readable, non-empty regular file with a name that is text, or a UsageError saying what
    is wrong with it."""
    if str(path) == "":
        raise UsageError("an empty path: give a file")
    p = Path(path)
    try:
        p.name.encode("utf-8")
    except UnicodeEncodeError:
        # Undecodable bytes in the name: no provider, ledger or JSON output can carry it faithfully.
        shown = os.fsencode(p.name).decode("utf-8", "backslashreplace")
        raise UsageError(f"the name {shown!r} is not valid UTF-8; rename the file") from None
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
