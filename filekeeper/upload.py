"""The upload workflow: reserve → evict → send → settle, with lost-response recovery.

Every upload, whoever starts it (``filekeeper upload``, :meth:`filekeeper.Keeper.upload`), runs
through :func:`upload_one` with one :class:`UploadJob`: the quota is checked and a ``pending`` row
reserved in one write transaction before a byte is sent; the row becomes ``active`` when the
provider answers, ``failed`` when it refuses, and stays ``pending`` only when the outcome cannot
be known (then reconcile settles it). What is sent, and how, is the job's :class:`Payload`.
"""

from __future__ import annotations

import hashlib
import threading
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .errors import FilekeeperError, ProviderError, QuotaExceeded, ResponseLost, UsageError
from .quota import EvictMode, Held, Request, Violation, expiry, file_violations, make_room, room_violations
from .records import FileRecord, UploadResult
from .schema import utcnow

if TYPE_CHECKING:
    from .config import Account
    from .ledger import Ledger
    from .providers import Provider, RemoteFile, Uploaded

ProgressCallback = Callable[[int], None]

#: how many times an upload whose response was lost (and that did not land) is sent again
LOST_RESPONSE_ATTEMPTS = 3
#: a provider's clock and ours may disagree: a landed file may look this much older than its reservation
CLOCK_SKEW = timedelta(minutes=5)


def could_be_upload_of(remote: RemoteFile, filename: str, size: int, reserved_at: datetime) -> bool:
    """Whether a file at the provider may be the one a reservation uploaded: same name, same size
    (or none reported yet, as OpenAI may while it completes), created after the reservation."""
    return (
        remote.filename == filename
        and remote.bytes in (size, None)
        and (remote.created_at is None or remote.created_at >= reserved_at - CLOCK_SKEW)
    )


class Payload(Protocol):
    """The bytes of one upload and how to send them."""

    filename: str
    size: int

    def sha256(self) -> str:
        """The content's sha256 (may read the content once)."""
        ...

    def send(
        self, remote: Provider, *, purpose: str, expires_after: int | None, on_progress: ProgressCallback | None
    ) -> Uploaded:
        """Send the bytes; raise ResponseLost when the outcome is unknown."""
        ...


@dataclass
class FilePayload:
    """A file on disk, streamed from it (never held in memory)."""

    path: Path
    filename: str = ""
    size: int = 0
    _sha256: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.filename = self.filename or self.path.name
        self.size = self.size or self.path.stat().st_size

    def sha256(self) -> str:
        if self._sha256 is None:
            digest = hashlib.sha256()
            with self.path.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
            self._sha256 = digest.hexdigest()
        return self._sha256

    def send(
        self, remote: Provider, *, purpose: str, expires_after: int | None, on_progress: ProgressCallback | None
    ) -> Uploaded:
        try:
            return remote.upload(self.path, purpose=purpose, expires_after=expires_after, on_progress=on_progress)
        except OSError as e:
            raise UsageError(f"cannot read {self.path}: {e.strerror}") from None


@dataclass(frozen=True)
class UploadJob:
    """One file to upload to one account, and how."""

    account: Account
    account_id: int
    payload: Payload
    purpose: str
    ttl_seconds: int | None = None
    evict: EvictMode | None = None
    force: bool = False
    #: extra audit detail for the reserve event (e.g. the source path)
    detail: dict[str, Any] = field(default_factory=dict)
    #: where the result says it came from
    path: Path = Path()

    @property
    def request(self) -> Request:
        return Request(self.payload.filename, self.payload.size, self.purpose)

    def expires_after(self) -> int | None:
        """The lifetime to ask the provider for: the TTL, else the retention policy (None: for ever)."""
        if self.ttl_seconds is not None:
            return self.ttl_seconds
        retention = self.account.limits.retention_days
        return retention * 86400 if retention else None


@dataclass(frozen=True)
class Reservation:
    """What reserving one file came to: a new pending row, a reused one, or a refusal."""

    record: FileRecord | None
    reused: bool = False
    #: files marked gone to make room; deleted at the provider before the upload
    evicted: list[Held] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)


def reserve(ledger: Ledger, job: UploadJob, sha256: str | None) -> Reservation:
    """Check one file against the account's policy and, if it fits, reserve it — atomically."""
    acct, account_id, request = job.account, job.account_id, job.request
    with ledger.write() as w:
        w.lock_account(account_id)
        now = utcnow()  # inside the lock: reservations' times follow the order they were made in
        if sha256 and not job.force:
            record = w.find_duplicate(account_id, sha256, request.purpose)
            if record is not None:
                w.reuse(account_id, record, request, sha256, **job.detail)
                return Reservation(record, reused=True)
        violations = file_violations(acct.limits, acct.rules, [request], job.ttl_seconds)
        evicted: list[Held] = []
        if not violations:
            usage = w.usage([account_id])[account_id]
            violations = room_violations(acct.limits, usage, [request])
            if violations and job.evict:
                candidates = w.held_files(account_id, expired_by=now if job.evict == "expired" else None)
                violations, evicted = make_room(acct.limits, usage, [request], candidates, job.evict, now)
        if violations:
            w.refuse(account_id, request, violations, **job.detail)
            return Reservation(None, violations=violations)
        for victim in evicted:
            w.evict(account_id, victim, mode=str(job.evict), now=now, for_filename=request.filename)
        record = w.reserve(
            account_id,
            request,
            sha256=sha256,
            created_at=now,
            expires_at=expiry(now, job.ttl_seconds, acct.limits.retention_days),
            **job.detail,
        )
        return Reservation(record, evicted=evicted)


def upload_one(
    ledger: Ledger, remote: Provider, job: UploadJob, progress: ProgressCallback | None = None
) -> UploadResult:
    """Run one job to its end; failures are returned in the result, not raised."""
    evicted: list[Held] = []
    try:
        sha = _sha_if_worth_it(ledger, job)
        reservation = reserve(ledger, job, sha)
        if reservation.violations:
            raise QuotaExceeded(
                "refused by quota: " + "; ".join(v.message for v in reservation.violations), reservation.violations
            )
        assert reservation.record is not None
        if reservation.reused:
            return UploadResult(job.path, reservation.record)
        _evict(ledger, remote, job, reservation, evicted)
        record = _send(ledger, remote, job, reservation.record, progress)
        return UploadResult(job.path, record, evicted=evicted)
    except FilekeeperError as e:
        return UploadResult(job.path, error=e, evicted=evicted)


def _sha_if_worth_it(ledger: Ledger, job: UploadJob) -> str | None:
    # Hashing first costs a second read of the file: only worth it when a duplicate may exist.
    if job.force:
        return None
    with ledger.read() as r:
        return job.payload.sha256() if r.may_be_duplicate(job.account_id, job.request) else None


def _evict(ledger: Ledger, remote: Provider, job: UploadJob, reservation: Reservation, done: list[Held]) -> None:
    """Delete the files the reservation marked for eviction, adding each to ``done`` once it is
    gone. If the k-th delete fails, the ones already deleted stay deleted (they are gone at the
    provider); only the rest are restored."""
    assert reservation.record is not None
    for k, victim in enumerate(reservation.evicted):
        try:
            remote.delete(victim.file_id)
        except ProviderError as e:
            with ledger.write() as w:
                for kept in reservation.evicted[k:]:
                    w.restore_evicted(job.account_id, kept, e.message)
                w.fail(reservation.record.ledger_id, f"could not evict {victim.file_id} to make room: {e.message}")
            raise ProviderError(
                f"could not evict {victim.file_id} to make room: {e.message}", provider=e.provider, status=e.status
            ) from None
        done.append(victim)


def _send(
    ledger: Ledger, remote: Provider, job: UploadJob, reservation: FileRecord, progress: ProgressCallback | None
) -> FileRecord:
    """Upload a reserved file; settle its row as active, or failed, or leave it pending when unknowable."""
    provider = job.account.provider
    for attempt in range(1, LOST_RESPONSE_ATTEMPTS + 1):
        try:
            up = job.payload.send(
                remote, purpose=reservation.purpose, expires_after=job.expires_after(), on_progress=progress
            )
        except ResponseLost as e:
            try:
                landed = find_landed(ledger, remote, job.account_id, reservation)
            except ProviderError as lookup_error:
                raise ProviderError(
                    f"{e.message}, and the provider could not be asked whether it landed "
                    f"({lookup_error.message}); the reservation stays pending until reconcile settles it",
                    provider=provider,
                ) from None
            if landed is not None:
                with ledger.write() as w:
                    return w.activate(
                        reservation.ledger_id,
                        file_id=landed.id,
                        size=reservation.bytes,
                        sha256=job.payload.sha256(),
                        adopted_after=e.message,
                        attempt=attempt,
                    )
            if attempt == LOST_RESPONSE_ATTEMPTS:
                with ledger.write() as w:
                    w.fail(reservation.ledger_id, e.message, status=e.status, attempts=attempt)
                raise ProviderError(f"{e.message}; gave up after {attempt} attempts", provider=provider) from None
            continue
        except ProviderError as e:
            with ledger.write() as w:
                w.fail(reservation.ledger_id, e.message, status=e.status, code=e.code)
            raise
        except UsageError as e:
            with ledger.write() as w:
                w.fail(reservation.ledger_id, str(e))
            raise
        with ledger.write() as w:
            return w.activate(
                reservation.ledger_id,
                file_id=up.remote.id,
                size=up.size,
                sha256=up.sha256,
                remote_status=up.remote.status,
                attempt=attempt,
            )
    raise AssertionError("unreachable")


def find_landed(ledger: Ledger, remote: Provider, account_id: int, reservation: FileRecord) -> RemoteFile | None:
    """The file an upload with a lost response stored, if it did: same name and size, created
    after the reservation, and not already another ledger row's."""
    for candidate in remote.list_files():
        if could_be_upload_of(candidate, reservation.filename, reservation.bytes, reservation.created_at):
            with ledger.read() as r:
                if r.ledger_id_of(account_id, candidate.id) is None:
                    return candidate
    return None


def upload_all(
    ledger: Ledger,
    remote: Provider,
    jobs: Sequence[UploadJob],
    *,
    concurrency: int = 4,
    on_progress: ProgressCallback | None = None,
) -> list[UploadResult]:
    """Run several jobs, ``concurrency`` at a time; results in the jobs' order.

    Identical files in one command are deduplicated deterministically: the first (in the order
    given) is uploaded, and the others wait for it and reuse it, instead of racing it.
    """
    from concurrent.futures import ThreadPoolExecutor

    lock = threading.Lock()

    def progress(delta: int) -> None:
        if on_progress:
            with lock:
                on_progress(delta)

    chains = _chains(jobs)
    results: dict[int, UploadResult] = {}

    def run_chain(chain: list[int]) -> None:
        for i in chain:
            results[i] = upload_one(ledger, remote, jobs[i], progress)

    workers = max(1, min(concurrency, len(chains)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="upload") as pool:
        list(pool.map(run_chain, chains))
    return [results[i] for i in range(len(jobs))]


def _chains(jobs: Sequence[UploadJob]) -> list[list[int]]:
    """Job indexes grouped so that identical contents (same size, purpose and sha256) run one
    after another in the given order; everything else is a chain of one."""
    by_shape: dict[tuple[int, str, int], list[int]] = defaultdict(list)
    for i, job in enumerate(jobs):
        by_shape[(job.account_id, job.purpose, job.payload.size)].append(i)
    chains: dict[int, list[int]] = {}
    for members in by_shape.values():
        if len(members) == 1 or any(jobs[i].force for i in members):
            for i in members:
                chains[i] = [i]
            continue
        leaders: dict[str, int] = {}
        for i in members:
            leader = leaders.setdefault(jobs[i].payload.sha256(), i)
            chains.setdefault(leader, []).append(i)
    return [chains[i] for i in sorted(chains)]
