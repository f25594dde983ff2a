"""The upload workflow: reserve → evict → send → settle, with lost-response recovery.

Every upload, whoever starts it (``filekeeper upload``, :meth:`filekeeper.Keeper.upload`), runs
through :func:`upload_one` with one :class:`UploadJob`: the quota is checked and a ``pending`` row
reserved in one write transaction before a byte is sent; the row becomes ``active`` when the
provider answers, ``failed`` when it refuses, and stays ``pending`` only when the outcome cannot
be known (then reconcile settles it). What is sent, and how, is the job's :class:`Payload`.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .errors import (
    FilekeeperError,
    FileNotFoundAtProvider,
    Interrupted,
    LedgerError,
    ProviderError,
    QuotaExceeded,
    ResponseLost,
    StoredNotRecorded,
    UsageError,
)
from .quota import (
    EvictMode,
    Held,
    Request,
    Violation,
    expiry,
    file_violations,
    make_room,
    room_for,
    room_violations,
)
from .records import FileRecord, PendingRow, UploadResult
from .schema import DeleteKind, Status, utcnow

if TYPE_CHECKING:
    from .config import Account
    from .ledger import Ledger
    from .providers import Provider, RemoteFile, Uploaded

ProgressCallback = Callable[[int], None]

#: how many times an upload whose response was lost (and that did not land) is sent again
LOST_RESPONSE_ATTEMPTS = 3
#: a provider's clock and ours may disagree: a landed file may look this much older than its reservation
#: (kept small: the wider it is, the likelier an older file of the same name and size passes for ours)
CLOCK_SKEW = timedelta(seconds=60)
#: without --ttl, an identical file is reused only if it lives at least this much longer
REUSE_AT_LEAST = timedelta(hours=1)


def same_filename(a: str, b: str) -> bool:
    """Whether two filenames are one, as a provider may hand a name back: with the multipart
    escapes of the upload still in it (``%22``, ``%0A``, a doubled backslash), percent-encoded,
    or Unicode-decomposed."""
    return a == b or filename_key(a) == filename_key(b)


def filename_key(name: str) -> str:
    """A filename in the one spelling :func:`same_filename` compares."""
    import unicodedata
    from urllib.parse import unquote

    name = name.replace("\\\\", "\\")
    with contextlib.suppress(UnicodeDecodeError):  # percent-escapes that are no UTF-8 encode nothing
        name = unquote(name, errors="strict")
    return unicodedata.normalize("NFC", name)


def could_be_upload_of(remote: RemoteFile, filename: str, size: int, reserved_at: datetime) -> bool:
    """Whether a file at the provider may be the one a reservation uploaded: same name, same size
    (or none reported yet, as OpenAI may while it completes), created after the reservation."""
    return (
        same_filename(remote.filename, filename)
        and remote.bytes in (size, None)
        and (remote.created_at is None or remote.created_at >= reserved_at - CLOCK_SKEW)
    )


class Payload(Protocol):
    """The bytes of one upload and how to send them: a file on disk (:class:`FilePayload`), or
    a request the OpenAI SDK built (:mod:`filekeeper.sdk`)."""

    filename: str
    size: int
    #: after a lost answer that did not land, send again here (False: the sender retries itself)
    resend_after_loss: bool

    def sha256(self) -> str | None:
        """The content's sha256 (may read the content once; None if it cannot be known)."""
        ...

    def send(
        self,
        remote: Provider,
        *,
        purpose: str,
        expires_after: int | None,
        on_progress: ProgressCallback | None,
        cancel: threading.Event | None = None,
        on_sent: Callable[[str], None] | None = None,
    ) -> Uploaded:
        """Send the bytes; raise ResponseLost when the outcome is unknown, Interrupted when
        ``cancel`` is set before the last byte went. Call ``on_sent(sha256)`` before the last
        byte goes: from then on the file may land even if this process dies."""
        ...


@dataclass
class FilePayload:
    """A file on disk, streamed from it (never held in memory)."""

    path: Path
    filename: str = ""
    size: int = 0
    _sha256: str | None = field(default=None, repr=False)
    resend_after_loss: bool = True

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
        self,
        remote: Provider,
        *,
        purpose: str,
        expires_after: int | None,
        on_progress: ProgressCallback | None,
        cancel: threading.Event | None = None,
        on_sent: Callable[[str], None] | None = None,
    ) -> Uploaded:
        try:
            return remote.upload(
                self.path,
                purpose=purpose,
                expires_after=expires_after,
                on_progress=on_progress,
                cancel=cancel,
                on_sent=on_sent,
                size=self.size,
            )
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
    #: whether the provider is asked to expire the file at the retention policy's end too (not
    #: when the SDK sent the request: it asks for the expiry it was given, if any, and no other)
    asks_retention_expiry: bool = True

    @property
    def request(self) -> Request:
        return Request(self.payload.filename, self.payload.size, self.purpose)

    def expires_after(self) -> int | None:
        """The lifetime to ask the provider for: the TTL, else the retention policy (None: for ever)."""
        if self.ttl_seconds is not None or not self.asks_retention_expiry:
            return self.ttl_seconds
        retention = self.account.limits.retention_days
        return retention * 86400 if retention else None

    def expiries(self, now: datetime) -> tuple[datetime | None, datetime | None]:
        """When a file uploaded now expires for us, and when the provider deletes it by itself:
        the lifetime the upload asks for where the provider takes it, else the provider's default
        for the purpose (OpenAI batch files: 30 days; Gemini: 48 hours). Ours is never later."""
        from .providers import ADAPTERS

        adapter = ADAPTERS[self.account.provider]
        asked = self.expires_after()
        seconds = (
            asked if asked is not None and adapter.takes_expiry(asked) else adapter.profile.expiry_of(self.purpose)
        )
        theirs = now + timedelta(seconds=seconds) if seconds is not None else None
        ours = expiry(now, self.ttl_seconds, self.account.limits.retention_days)
        if theirs is not None and (ours is None or theirs < ours):
            ours = theirs
        return ours, theirs

    def reusable_until(self, now: datetime) -> datetime:
        """An identical file already held is reused only if it lives at least this long: to the
        end of the TTL asked for, or (without one) a while yet."""
        return now + (timedelta(seconds=self.ttl_seconds) if self.ttl_seconds is not None else REUSE_AT_LEAST)


@dataclass
class Command:
    """What the jobs of one ``upload`` share: Ctrl-C, the files it handed out (never evicted by a
    later job of the same command), and the ids that landed but may not be recorded yet (never
    taken by another job's lost-answer recovery)."""

    cancel: threading.Event = field(default_factory=threading.Event)
    protected: set[int] = field(default_factory=set)
    landed: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def protect(self, ledger_id: int) -> None:
        with self.lock:
            self.protected.add(ledger_id)

    def land(self, file_id: str) -> None:
        with self.lock:
            self.landed.add(file_id)

    def snapshot(self) -> tuple[frozenset[int], frozenset[str]]:
        with self.lock:
            return frozenset(self.protected), frozenset(self.landed)


@dataclass(frozen=True)
class Reservation:
    """What reserving one file came to: a new pending row, a reused one, or a refusal."""

    record: FileRecord | None
    reused: bool = False
    #: files marked gone to make room; deleted at the provider before the upload
    evicted: list[Held] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)
    #: the journal rows of the evictions, in the same order
    intents: list[int] = field(default_factory=list)


def reserve(
    ledger: Ledger, job: UploadJob, sha256: str | None, twins: Twins | None = None, command: Command | None = None
) -> Reservation:
    """Check one file against the account's policy and, if it fits, reserve it — atomically.

    An identical active file that lives long enough is reused instead: the one ``twins`` saw the
    provider still hold, or one that became active since (another process uploaded it a moment
    ago); never one ``twins`` checked and could not use."""
    acct, account_id, request = job.account, job.account_id, job.request
    twins = twins or Twins()
    unfixable = file_violations(acct.limits, [request], job.ttl_seconds)  # before the lock: it needs none
    if not unfixable and not (sha256 and not job.force):
        reserved = _reserve_first(ledger, job, sha256)
        if reserved is not None:
            return reserved
    with ledger.write() as w:
        # The usage is read under the lock, with the lock (one round trip on PostgreSQL); read a
        # moment before ``now``, it can only count a file lapsing in between as still held.
        usage = w.lock_and_read_usage(account_id, utcnow())
        now = utcnow()  # inside the lock: reservations' times follow the order they were made in
        if sha256 and not job.force:
            record = w.find_duplicate(
                account_id, sha256, request.purpose, lasting_until=job.reusable_until(now), exclude=twins.unusable
            )
            if record is not None:
                w.reuse(account_id, record, request, sha256, **job.detail)
                return Reservation(record, reused=True)
        violations = unfixable
        evicted: list[Held] = []
        if not violations:
            violations = room_violations(acct.limits, usage, [request])
            if violations and job.evict:
                protected = command.snapshot()[0] if command is not None else frozenset()
                candidates = [  # never a file this same command just handed out
                    h
                    for h in w.held_files(account_id, expired_by=now if job.evict == "expired" else None)
                    if h.ledger_id not in protected
                ]
                violations, evicted = make_room(acct.limits, usage, [request], candidates, job.evict, now)
        if violations:
            w.refuse(account_id, request, violations, **job.detail)
            return Reservation(None, violations=violations)
        intents = []
        for victim in evicted:
            w.evict(account_id, victim, mode=str(job.evict), now=now, for_filename=request.filename)
            # Journaled like any delete: if this process dies before the provider answers, the next
            # reconcile finds out whether it happened, and restores the file if it did not.
            intents += w.add_intents(account_id, [(victim.file_id, victim.ledger_id, DeleteKind.EVICT)], run_id=None)
        record = w.reserve(account_id, request, _reservation(job, sha256, now))
        return Reservation(record, evicted=evicted, intents=intents)


def _reservation(job: UploadJob, sha256: str | None, now: datetime) -> PendingRow:
    """What :meth:`Writer.reserve` writes for ``job``, given the time it is made at."""
    expires_at, provider_expires_at = job.expiries(now)
    return PendingRow(job.account.name, job.account.provider, sha256, now, expires_at, provider_expires_at, job.detail)


class _NoRoom(Exception):
    """A reservation made first did not fit after all: rolled back, to be made the careful way."""


def _reserve_first(ledger: Ledger, job: UploadJob, sha256: str | None) -> Reservation | None:
    """A file with nothing to look for (no identical file can exist) is reserved in as little time
    under the account's lock as can be: the row written only if the database finds room for it,
    everything made ready before the lock (:meth:`Ledger.ready_reservation`), on PostgreSQL in one
    round trip with the row written first (:meth:`Writer.reserve_if_room`). None: no room; the
    caller then reserves the careful way, which refuses with the figures or makes room.

    No more can be reserved than the careful way: each reservation's test reads, under the lock,
    every reservation committed before it. The figures are in README's Performance section
    (``bench/quota_check.py``)."""
    room = room_for(job.account.limits, job.request.purpose)
    ready = ledger.ready_reservation(job.account_id, job.request, _reservation(job, sha256, utcnow()), room)
    try:
        with ledger.write() as w:
            record = w.reserve_if_room(ready)
            if record is None:
                raise _NoRoom
            return Reservation(record)
    except _NoRoom:
        return None


def upload_one(
    ledger: Ledger,
    remote: Provider,
    job: UploadJob,
    progress: ProgressCallback | None = None,
    command: Command | None = None,
) -> UploadResult:
    """Run one job to its end; failures are returned in the result, not raised."""
    command = command or Command()
    evicted: list[Held] = []
    try:
        if command.cancel.is_set():
            raise Interrupted("not uploaded: interrupted before it started")
        sha = _sha_if_worth_it(ledger, job)
        reservation = reserve(ledger, job, sha, check_twins(ledger, remote, job, sha, command), command)
        if reservation.violations:
            raise QuotaExceeded(
                "refused by quota: " + "; ".join(v.message for v in reservation.violations), reservation.violations
            )
        assert reservation.record is not None
        if reservation.reused:
            command.protect(reservation.record.ledger_id)
            return UploadResult(job.path, reservation.record)
        _evict(ledger, remote, job, reservation, evicted)
        record = _send(ledger, remote, job, reservation.record, progress, command)
        command.protect(record.ledger_id)
        return UploadResult(job.path, record, evicted=evicted)
    except _Failed as f:
        return UploadResult(job.path, error=f.error, evicted=evicted, row=f.row)
    except FilekeeperError as e:
        return UploadResult(job.path, error=e, evicted=evicted)


class _Failed(Exception):
    """An upload's error, with the ledger row it left (``failed``, or ``pending`` when unknowable)."""

    def __init__(self, error: FilekeeperError, row: FileRecord | None) -> None:
        super().__init__(str(error))
        self.error = error
        self.row = row


def _sha_if_worth_it(ledger: Ledger, job: UploadJob) -> str | None:
    # Hashing first costs a second read of the file: only worth it when a duplicate may exist
    # (an active file, or a reservation a crashed run left, of the same size and purpose).
    if job.force:
        return None
    with ledger.read() as r:
        return job.payload.sha256() if r.may_be_duplicate(job.account_id, job.request) else None


@dataclass
class Twins:
    """What checking an upload's identical files found: the ledger ids not to reuse."""

    unusable: set[int] = field(default_factory=set)


#: identical files checked at the provider before giving up on reuse and uploading anew
TWINS_CHECKED = 3


def check_twins(
    ledger: Ledger, remote: Provider, job: UploadJob, sha256: str | None, command: Command | None = None
) -> Twins:
    """Make sure an identical file the reservation would reuse is really there.

    A reservation of the same file that a crashed run left behind is settled first, if its
    upload landed (so that running the command again makes no second copy). Then the newest
    identical active file that lives long enough is retrieved once: gone, it is recorded as
    missing and the next is tried; if the provider cannot say, it is not reused."""
    twins = Twins()
    if sha256 is None or job.force:
        return twins
    with ledger.read() as r:
        leftovers = r.pending_twins(job.account_id, job.request, sha256)
    for pending in leftovers:
        try:
            landed, ambiguous = find_landed(ledger, remote, job.account_id, pending, command)
        except ProviderError as e:
            # It may have landed, and nothing can tell now: sending again could make a second copy.
            raise ProviderError(
                f"an earlier upload of this file (ledger row #{pending.ledger_id}) was sent whole and may have "
                f"landed, and the provider could not tell whether it did ({e.message}); nothing was sent: try "
                "again, or pass --force to upload another copy",
                provider=e.provider,
            ) from None
        if landed is not None and not ambiguous:
            with ledger.write() as w:
                w.activate(pending.ledger_id, file_id=landed.id, size=pending.bytes, sha256=sha256, settled_by="upload")
    for _ in range(TWINS_CHECKED):
        with ledger.read() as r:
            twin = r.find_duplicate(
                job.account_id, sha256, job.purpose, lasting_until=job.reusable_until(utcnow()), exclude=twins.unusable
            )
        if twin is None or twin.id is None:
            return twins
        try:
            found = remote.retrieve(twin.id)
        except FileNotFoundAtProvider:
            with ledger.write() as w:
                w.found_gone(job.account_id, twin)  # deleted behind our back: it holds no quota now
            twins.unusable.add(twin.ledger_id)
            continue
        except ProviderError as e:
            if e.status == 401:  # the key is refused: an upload anew would be refused too
                raise
            twins.unusable.add(twin.ledger_id)  # cannot tell: upload anew rather than hand out a dead id
            continue
        if found.id != twin.id or found.failed or (found.status or "").lower() in ("deleted", "expired"):
            twins.unusable.add(twin.ledger_id)  # there, but not a file anyone can use
            continue
        return twins
    return twins


def _evict(ledger: Ledger, remote: Provider, job: UploadJob, reservation: Reservation, done: list[Held]) -> None:
    """Delete the files the reservation marked for eviction, adding each to ``done`` once it is
    gone. If the k-th delete fails, the ones already deleted stay deleted (they are gone at the
    provider); only the rest are restored. A delete whose answer never came is checked with one
    retrieve: if the file is gone, it counts as deleted. Each outcome removes its journal row."""
    assert reservation.record is not None
    intents = reservation.intents or [None] * len(reservation.evicted)
    for k, (victim, intent) in enumerate(zip(reservation.evicted, intents, strict=True)):
        try:
            remote.delete(victim.file_id)
        except ProviderError as e:
            if e.retryable and _gone(remote, victim.file_id):
                _settled(ledger, intent)
                done.append(victim)
                continue
            why = f"could not evict {victim.file_id} to make room: {e.message}"
            with ledger.write() as w:
                for kept in reservation.evicted[k:]:
                    w.restore_evicted(job.account_id, kept, e.message)
                w.void_intents([i for i in intents[k:] if i is not None])
                row = w.fail(reservation.record.ledger_id, why)
            raise _Failed(ProviderError(why, provider=e.provider, status=e.status), row) from None
        _settled(ledger, intent)
        done.append(victim)


def _settled(ledger: Ledger, intent: int | None) -> None:
    if intent is not None:
        with ledger.write() as w:
            w.void_intents([intent])


def _gone(remote: Provider, file_id: str) -> bool:
    """Whether the provider says it does not hold the file (False when it cannot say)."""
    try:
        remote.retrieve(file_id)
    except FileNotFoundAtProvider:
        return True
    except ProviderError:
        return False
    return False


def _send(
    ledger: Ledger,
    remote: Provider,
    job: UploadJob,
    reservation: FileRecord,
    progress: ProgressCallback | None,
    command: Command,
) -> FileRecord:
    """Upload a reserved file; settle its row as active, or failed, or leave it pending when unknowable."""
    provider = job.account.provider

    def sent(sha256: str) -> None:
        # The reservation now names its content: a rerun after a crash from here on can find
        # the landed file and reuse it instead of sending a second copy.
        with ledger.write() as w:
            w.note_sent(reservation.ledger_id, sha256)

    def still_pending(error: ProviderError) -> _Failed:
        with ledger.read() as r:  # as it stands now (the content's sha256 may be recorded since)
            row = r.record(reservation.ledger_id)
        return _Failed(error, row)

    attempts = LOST_RESPONSE_ATTEMPTS if job.payload.resend_after_loss else 1
    for attempt in range(1, attempts + 1):
        try:
            up = job.payload.send(
                remote,
                purpose=reservation.purpose,
                expires_after=job.expires_after(),
                on_progress=progress,
                cancel=command.cancel,
                on_sent=sent,
            )
        except ResponseLost as e:
            try:
                landed, ambiguous = find_landed(ledger, remote, job.account_id, reservation, command)
            except ProviderError as lookup_error:
                raise still_pending(
                    ProviderError(
                        f"{e.message}, and the provider could not be asked whether it landed "
                        f"({lookup_error.message}); the reservation stays pending until reconcile settles it",
                        provider=provider,
                    )
                ) from None
            if ambiguous:
                raise still_pending(
                    ProviderError(
                        f"{e.message}, and {ambiguous} files at the provider could be this upload (same name and "
                        "size): none is taken for it; the reservation stays pending until reconcile settles it",
                        provider=provider,
                    )
                ) from None
            if landed is not None:
                command.land(landed.id)
                with _recording(landed.id), ledger.write() as w:
                    record = w.activate(
                        reservation.ledger_id,
                        file_id=landed.id,
                        size=reservation.bytes,
                        sha256=job.payload.sha256(),
                        provider_expires_at=landed.expires_at,
                        adopted_after=e.message,
                        attempt=attempt,
                    )
                return _usable(landed, record, provider)
            if attempt == attempts:
                with ledger.write() as w:
                    row = w.fail(reservation.ledger_id, e.message, status=e.status, attempts=attempt)
                gave_up = ProviderError(
                    f"{e.message}; not found at the provider after {attempt} attempt(s)", provider=provider
                )
                raise _Failed(gave_up, row) from None
            continue
        except ProviderError as e:
            with ledger.write() as w:
                row = w.fail(reservation.ledger_id, e.message, status=e.status, code=e.code)
            raise _Failed(e, row) from None
        except (UsageError, Interrupted) as e:
            # The file changed under us, or Ctrl-C: the request stopped half-way, nothing was stored.
            with ledger.write() as w:
                row = w.fail(reservation.ledger_id, str(e))
            raise _Failed(e, row) from None
        command.land(up.remote.id)  # before it is recorded: no other job's recovery may take it
        with _recording(up.remote.id), ledger.write() as w:
            record = w.activate(
                reservation.ledger_id,
                file_id=up.remote.id,
                size=up.size,
                sha256=up.sha256,
                provider_expires_at=up.remote.expires_at,
                remote_status=up.remote.status,
                attempt=attempt,
            )
        return _usable(up.remote, record, provider)
    raise AssertionError("unreachable")


@contextlib.contextmanager
def _recording(file_id: str) -> Iterator[None]:
    """The ledger failing as a stored file is recorded (a dropped connection, a full disk): the
    error says the file is at the provider, under which id, and what settles its row."""
    try:
        yield
    except LedgerError as e:
        raise StoredNotRecorded(
            f"stored at the provider as {file_id}, but the ledger could not record it ({e}); its reservation "
            "stays pending: this upload run again settles it at once (no second copy), and "
            "`filekeeper reconcile --apply` does once it is older than --min-age",
            file_id,
        ) from None


def _usable(remote: RemoteFile, record: FileRecord, provider: str) -> FileRecord:
    """The record of a stored file, unless the provider stored it and failed to process it
    (Gemini's FAILED, OpenAI's error): then it is recorded, as it holds quota, and an error."""
    if not remote.failed:
        return record
    raise _Failed(
        ProviderError(
            f"{remote.id} was stored, but the provider could not process it (status {remote.status}): it is "
            f"recorded and holds quota until deleted (`filekeeper delete {remote.id}`)",
            provider=provider,
        ),
        record,
    )


def find_landed(
    ledger: Ledger, remote: Provider, account_id: int, reservation: FileRecord, command: Command | None = None
) -> tuple[RemoteFile | None, int]:
    """The file an upload with a lost response stored, if it did: same name and size, created
    after the reservation, not already another ledger row's, nor one that another upload of this
    command has just received. Returns it and 0, or (None, how many could be it) when more than
    one could: then none is taken (the wrong one would hand out someone else's content)."""
    if not remote.lists_purpose(reservation.purpose):
        # Not in the listing does not mean not stored: only a person can look now.
        raise ProviderError(
            f"{remote.name} does not list files of purpose {reservation.purpose!r}, so whether it landed cannot be "
            "seen; check at the provider",
            provider=remote.name,
        )
    taken = command.snapshot()[1] if command is not None else frozenset()
    found: list[RemoteFile] = []
    for candidate in remote.list_files():
        if candidate.id in taken:
            continue
        if could_be_upload_of(candidate, reservation.filename, reservation.bytes, reservation.created_at):
            with ledger.read() as r:
                if r.ledger_id_of(account_id, candidate.id) is None:
                    found.append(candidate)
    if len(found) > 1:
        return None, len(found)
    return (found[0] if found else None), 0


def settle_unknown(ledger: Ledger, remote: Provider, account_id: int, ledger_id: int) -> FileRecord | None:
    """A reservation whose upload's fate was left unknown (its answer lost, and the listing then
    unreadable or ambiguous), settled now that it is about to be sent again: the file it stored,
    activated; or None, the row failed, when the listing shows it did not land. Raises
    ProviderError when the listing still cannot tell (then nothing may be sent again)."""
    with ledger.read() as r:
        row = r.record(ledger_id)
    if row.status != Status.PENDING:  # settled meanwhile (a reconcile): as it stands
        return row if row.status == Status.ACTIVE else None
    landed, ambiguous = find_landed(ledger, remote, account_id, row)
    if ambiguous:
        raise ProviderError(
            f"{ambiguous} files at the provider could be the earlier attempt of this upload (same name and size)",
            provider=remote.name,
        )
    with ledger.write() as w:
        if landed is None:
            w.fail(ledger_id, "not at the provider when its upload was sent again")
            return None
        return w.activate(
            ledger_id,
            file_id=landed.id,
            size=row.bytes,
            sha256=row.sha256,
            provider_expires_at=landed.expires_at,
            adopted_after="its answer was lost; found in the listing when it was sent again",
        )


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

    Ctrl-C (or SIGTERM) cancels: uploads in flight stop where they are and become ``failed``,
    those not started are not reserved, and those done are returned as done; each cancelled
    one's result is an :class:`Interrupted` error.
    """
    from concurrent.futures import ThreadPoolExecutor, wait

    lock = threading.Lock()
    command = Command()

    def progress(delta: int) -> None:
        if on_progress:
            with lock:
                on_progress(delta)

    chains = _chains(jobs)
    results: dict[int, UploadResult] = {}

    def run_chain(chain: list[int]) -> None:
        for i in chain:
            try:
                results[i] = upload_one(ledger, remote, jobs[i], progress, command)
            except Exception as e:  # a bug must not hide the other files' outcomes
                bug = FilekeeperError(f"internal error: {type(e).__name__}: {e}")
                results[i] = UploadResult(jobs[i].path, error=bug)

    workers = max(1, min(concurrency, len(chains)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="upload") as pool:
        futures = [pool.submit(run_chain, chain) for chain in chains]
        try:
            while wait(futures, timeout=0.5).not_done:
                pass
        except KeyboardInterrupt:
            command.cancel.set()  # readers stop at their next chunk; the pool's exit waits for them
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
