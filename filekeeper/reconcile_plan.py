"""What a reconcile found: the plan, and the one pass over a staged listing that builds it.

No I/O here: :mod:`filekeeper.reconcile` reads the ledger and the provider, stages the listing in
the ledger (:class:`Staging`, implemented by :class:`filekeeper.ledger.Stage`), asks
:func:`classify` what it means, holds the plan against the safety rails, and applies it. The
categories that grow with the account (orphans, young, unclaimed, generated) stay in the staging
table and are read back when used (:class:`Staged`), so a plan's memory does not depend on how
many files the provider lists.

The categories, for a listing that was read to its end:

- orphans: listed, unknown to the ledger, in an account the ledger has tracked files of — deleted
  with ``--apply`` (or adopted with ``--adopt``) once older than ``--min-age``;
- unclaimed: listed, unknown, in an account the ledger never tracked a file of — someone else's
  until adopted: recorded, counted against storage, deleted only with ``--delete-unclaimed``;
- generated: made by the provider (batch results) — recorded with their own retention;
- absent: tracked, not listed — confirmed gone (``missing``) with a retrieve or a second listing,
  ``expired`` if past their expiry, kept as they are when absence cannot be proven;
- reappeared: ``missing`` in the ledger, listed again — ``active`` again, never an orphan;
- expired: tracked and past ``expires_at`` — deleted at the provider;
- pending: reservations older than ``--min-age``, settled against the listing or ``failed``;
- drift: same id, different size or name — reported;
- intents: deletes sent by a run that died before recording them — recorded now if the file is
  gone, forgotten if it is still there.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from .records import Identity, Intent, Tracked, iso
from .schema import LISTED, DeleteKind, Status
from .upload import could_be_upload_of, filename_key, same_filename

if TYPE_CHECKING:
    from .config import Account
    from .providers import RemoteFile


@dataclass(frozen=True)
class Snapshot:
    """What the ledger holds for the account, read before the listing (its tracked files are
    copied into the staging, not here)."""

    #: (base URL, key fingerprint) -> how the ledger knows it
    identities: dict[tuple[str, str], Identity] = field(default_factory=dict)
    #: whether an applying reconcile has listed the account before (its baseline)
    history: bool = False
    #: when that first applying reconcile ran: what was made before it was there before us
    baselined_at: datetime | None = None
    intents: list[Intent] = field(default_factory=list)


class Staging(Protocol):
    """A listing staged in the ledger beside the tracked files, and the diff of the two."""

    listed: int

    def seqs_of(self, file_ids: Iterable[str]) -> dict[str, int]: ...
    def elsewhere(self) -> dict[int, str]: ...
    def pending(self) -> list[Tracked]: ...
    def candidates(self, now: datetime) -> Iterator[tuple[int, RemoteFile, Tracked | None]]: ...
    def not_listed(self) -> Iterator[Tracked]: ...
    def expected(
        self,
        statuses: Sequence[str],
        *,
        now: datetime,
        created_by: datetime,
        created_before: datetime | None = None,
        exclude: Collection[str] = (),
    ) -> tuple[int, int]: ...
    def mark(self, seq: int, category: str) -> None: ...
    def flush_marks(self) -> None: ...
    def rows(self, category: str) -> Iterator[RemoteFile]: ...
    def pairs(self, category: str) -> Iterator[tuple[Tracked, RemoteFile]]: ...
    def close(self) -> None: ...


T = TypeVar("T")


class Staged(Generic[T]):
    """A category kept in the staging table: its size is known, its rows are read back in listing
    order each time it is iterated. Small ones are read into a list once the plan is done
    (:meth:`ReconcilePlan.detach`)."""

    def __init__(self, count: int, read: Callable[[], Iterator[T]]) -> None:
        self.count = count
        self._read = read

    def __len__(self) -> int:
        return self.count

    def __bool__(self) -> bool:
        return self.count > 0

    def __iter__(self) -> Iterator[T]:
        return self._read()


#: categories staged rather than held: category name in the staging table -> plan field
STAGED = {"orphan": "orphans", "young": "young", "unclaimed_new": "unclaimed_new", "generated": "generated_new"}
#: a staged category this small is read into memory once the plan is done, freeing the staging
DETACH_AT = 1000


@dataclass
class ReconcilePlan:
    """What a reconcile found, and with ``apply``, what it did."""

    account: Account
    applied: bool = False
    listed: int = 0
    #: the key the listing was made with: known, first (a new account), rotated (proven), trusted
    key: str = "known"
    orphans: Collection[RemoteFile] = field(default_factory=list)
    #: unknown files younger than --min-age: left alone (an upload may be landing)
    young: Collection[RemoteFile] = field(default_factory=list)
    unclaimed_new: Collection[RemoteFile] = field(default_factory=list)
    #: recorded earlier, listed again
    unclaimed: Collection[tuple[Tracked, RemoteFile]] = field(default_factory=list)
    generated_new: Collection[RemoteFile] = field(default_factory=list)
    absent: list[Tracked] = field(default_factory=list)  # not listed; to be confirmed
    missing: list[Tracked] = field(default_factory=list)  # confirmed gone
    gone: list[Tracked] = field(default_factory=list)  # unclaimed, confirmed gone
    unconfirmed: list[tuple[Tracked, str]] = field(default_factory=list)  # absent, kept: why
    not_yet_listed: list[Tracked] = field(default_factory=list)  # uploaded a moment ago, not listed yet
    reappeared: list[Tracked] = field(default_factory=list)
    expired: list[Tracked] = field(default_factory=list)  # tracked and past expires_at
    expired_present: set[str] = field(default_factory=set)  # ... of which the provider still holds these
    settled: list[tuple[Tracked, RemoteFile]] = field(default_factory=list)
    failed_pending: list[Tracked] = field(default_factory=list)
    waiting_pending: list[Tracked] = field(default_factory=list)
    #: reservations of a purpose the listing cannot show: whether they landed only a person can see
    unknowable_pending: list[Tracked] = field(default_factory=list)
    #: reservations more than one listed file could be the upload of (or whose file another could
    #: claim): left pending, and those files left alone, neither settled nor orphans
    ambiguous_pending: list[tuple[Tracked, list[RemoteFile]]] = field(default_factory=list)
    drift: list[tuple[Tracked, RemoteFile]] = field(default_factory=list)
    #: listed files the ledger tracks under another account of the provider
    elsewhere: list[tuple[RemoteFile, str]] = field(default_factory=list)
    intents_done: list[Intent] = field(default_factory=list)
    intents_void: list[Intent] = field(default_factory=list)
    #: files an upload marked for eviction and died before deleting: still there, active again
    restored: list[Intent] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    adopted: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)
    run_id: int | None = None
    max_delete: int = 0
    #: stopped by SIGINT or SIGTERM after what was in flight was recorded
    interrupted: bool = False
    #: the run's --adopt and --delete-unclaimed, which decide what the plan does with what it found
    adopt: bool = False
    delete_unclaimed: bool = False
    #: the staged listing the large categories are read from (None once detached)
    staging: Staging | None = field(default=None, repr=False)

    def detach(self) -> None:
        """Read the staged categories that are small into memory, and close the staging if none is
        left there: a plan of a quiet account holds no connection."""
        if self.staging is None:
            return
        kept = False
        for name in (*STAGED.values(), "unclaimed"):
            value = getattr(self, name)
            if isinstance(value, Staged):
                if len(value) <= DETACH_AT:
                    setattr(self, name, list(value))
                else:
                    kept = True
        if not kept:
            self.close()

    def close(self) -> None:
        """Drop the staged listing (its large categories can no longer be read)."""
        staging, self.staging = self.staging, None
        if staging is not None:
            staging.close()

    @property
    def to_delete(self) -> int:
        """The most the plan deletes: expired files still held, orphans (unless adopted), and with
        ``--delete-unclaimed`` the unclaimed (fewer if --min-age holds some back)."""
        unclaimed = len(self.unclaimed_new) + len(self.unclaimed) if self.delete_unclaimed else 0
        return len(self.expired_present) + (0 if self.adopt else len(self.orphans)) + unclaimed

    @property
    def to_adopt(self) -> int:
        """With ``--adopt``: orphans and unclaimed files to record as ours (at most)."""
        return len(self.orphans) + len(self.unclaimed_new) + len(self.unclaimed) if self.adopt else 0

    @property
    def new_key_accepted(self) -> bool:
        """Whether the listing was made with a key or URL new to the account that this run accepts
        (proven by the listing, or ``--trust-key``): said even when there is nothing else to do."""
        return self.key in ("rotated", "trusted")

    @property
    def has_work(self) -> bool:
        """Anything to do or to report: for --exit-code monitoring and for staying quiet in cron."""
        return bool(
            self.orphans
            or self.deleted
            or self.adopted
            or self.to_adopt
            or self.to_delete
            or self.unclaimed_new
            or self.generated_new
            or self.missing
            or self.gone
            or self.unconfirmed
            or self.reappeared
            or self.expired
            or self.settled
            or self.failed_pending
            or self.unknowable_pending
            or self.ambiguous_pending
            or self.drift
            or self.intents_done
            or self.restored
        )

    def counts(self) -> dict[str, int]:
        return {
            "listed": self.listed,
            "orphans": len(self.orphans),
            "young": len(self.young),
            "not_yet_listed": len(self.not_yet_listed),
            "unclaimed_new": len(self.unclaimed_new),
            "unclaimed": len(self.unclaimed),
            "generated_new": len(self.generated_new),
            "missing": len(self.missing),
            "gone": len(self.gone),
            "unconfirmed": len(self.unconfirmed),
            "reappeared": len(self.reappeared),
            "expired": len(self.expired),
            "settled": len(self.settled),
            "failed_pending": len(self.failed_pending),
            "waiting_pending": len(self.waiting_pending),
            "unknowable_pending": len(self.unknowable_pending),
            "ambiguous_pending": len(self.ambiguous_pending),
            "drift": len(self.drift),
            "intents_settled": len(self.intents_done),
            "restored": len(self.restored),
            "deleted": len(self.deleted),
            "adopted": len(self.adopted),
            "skipped": len(self.skipped),
            "errors": len(self.errors),
        }

    def to_json(self) -> dict[str, Any]:
        a = self.account

        def remote(r: RemoteFile) -> dict[str, Any]:
            return {
                "id": r.id,
                "provider": a.provider,
                "account": a.name,
                "filename": r.filename,
                "bytes": r.bytes,
                "purpose": r.purpose,
                "status": r.status,
                "created_at": iso(r.created_at),
                "expires_at": iso(r.expires_at),
            }

        def tracked(t: Tracked, **extra: Any) -> dict[str, Any]:
            return {
                "id": t.file_id,
                "ledger_id": t.ledger_id,
                "provider": a.provider,
                "account": a.name,
                "filename": t.filename,
                "bytes": t.bytes,
                "status": t.status,
                "created_at": iso(t.created_at),
                "expires_at": iso(t.expires_at),
                **extra,
            }

        return {
            "account": a.name,
            "provider": a.provider,
            "applied": self.applied,
            "listed": self.listed,
            "key": self.key,
            "orphans": [remote(r) for r in self.orphans],
            "young": [remote(r) for r in self.young],
            "not_yet_listed": [tracked(t) for t in self.not_yet_listed],
            "unclaimed": [remote(r) for r in self.unclaimed_new] + [tracked(t) for t, _ in self.unclaimed],
            "generated": [remote(r) for r in self.generated_new],
            "missing": [tracked(t) for t in self.missing],
            "gone": [tracked(t) for t in self.gone],
            "unconfirmed": [tracked(t, reason=why) for t, why in self.unconfirmed],
            "reappeared": [tracked(t) for t in self.reappeared],
            "expired": [tracked(t, at_provider=t.file_id in self.expired_present) for t in self.expired],
            "pending": [tracked(t, outcome="settled", settled_as=r.id) for t, r in self.settled]
            + [tracked(t, outcome="failed") for t in self.failed_pending]
            + [tracked(t, outcome="waiting") for t in self.waiting_pending]
            + [tracked(t, outcome="unknowable") for t in self.unknowable_pending]
            + [tracked(t, outcome="ambiguous", could_be=[r.id for r in rs]) for t, rs in self.ambiguous_pending],
            "drift": [
                {
                    "id": t.file_id,
                    "ledger": {"filename": t.filename, "bytes": t.bytes},
                    "provider": {"filename": r.filename, "bytes": r.bytes},
                }
                for t, r in self.drift
            ],
            "intents_settled": [{"id": i.file_id, "kind": i.kind, "run_id": i.run_id} for i in self.intents_done],
            "restored": [i.file_id for i in self.restored],
            "deleted": self.deleted,
            "adopted": self.adopted,
            "skipped": [{"id": i, "reason": why} for i, why in self.skipped],
            "errors": [{"id": i, "error": e} for i, e in self.errors],
            "run_id": self.run_id,
            "interrupted": self.interrupted,
            "to_delete": self.to_delete,
            "to_adopt": self.to_adopt,
        }


def delete_limit(max_delete: int | str, listed: int) -> int:
    """``--max-delete``: a count, or a percentage of the files listed (rounded up)."""
    if isinstance(max_delete, str) and max_delete.endswith("%"):
        return math.ceil(listed * float(max_delete[:-1]) / 100)
    return int(max_delete)


def classify(plan: ReconcilePlan, snapshot: Snapshot, stage: Staging, now: datetime, min_age: timedelta) -> None:
    """The one pass over a complete staged listing, in listing order: Python judges only the files
    the database could not rule on alone (see :meth:`Staging.candidates`)."""
    old_enough = now - min_age
    plan.listed = stage.listed
    intents = {i.file_id: i for i in snapshot.intents}
    listed_at = stage.seqs_of(intents)
    restored: set[int] = set()
    for file_id, seq in sorted(listed_at.items(), key=lambda item: item[1]):
        intent = intents.pop(file_id)
        plan.intents_void.append(intent)  # the delete did not happen: the file is still there
        if intent.kind == DeleteKind.EVICT and intent.file_pk is not None:
            plan.restored.append(intent)  # an upload died before evicting it: it is ours, and there
            restored.add(seq)
    elsewhere = stage.elsewhere()
    claimable: dict[str, list[Tracked]] = defaultdict(list)
    pending = stage.pending()
    for p in pending:
        if p.created_at <= old_enough:  # a younger reservation may still be uploading
            claimable[filename_key(p.filename)].append(p)
    claimed: set[int] = set()
    counts: dict[str, int] = defaultdict(int)
    maybe: dict[int, tuple[RemoteFile, list[int]]] = {}  # listing position -> (file, reservations it could be)
    candidates: dict[int, list[int]] = defaultdict(list)  # reservation -> positions of files that could be it

    def staged(seq: int, category: str) -> None:
        stage.mark(seq, category)
        counts[category] += 1

    for seq, rf, t in stage.candidates(now):
        if seq in restored:
            continue
        if t is not None:
            if t.status == Status.UNCLAIMED:
                staged(seq, "unclaimed")
            else:
                _listed_tracked(plan, t, rf, now)
            continue
        if seq in elsewhere:
            plan.elsewhere.append((rf, elsewhere[seq]))
            continue
        young = rf.created_at is not None and rf.created_at > old_enough
        could_be = [
            p.ledger_id
            for p in claimable.get(filename_key(rf.filename), ())
            if could_be_upload_of(rf, p.filename, p.bytes, p.created_at) and not _content_rules_out(p, rf)
        ]
        if could_be:
            # Decided once the whole listing is seen: a reservation takes a file only if it is the
            # one file that could be its upload, and no other reservation could claim that file.
            maybe[seq] = (rf, could_be)
            for ledger_id in could_be:
                candidates[ledger_id].append(seq)
        elif young and not rf.generated:
            staged(seq, "young")  # may be an upload landing right now: left alone, whoever made it
        elif not snapshot.history or _before(rf, snapshot.baselined_at):
            # A ledger that never tracked this account, or a file made before its first listing
            # (too young then to judge, or left out of that listing): not ours.
            staged(seq, "unclaimed_new")
        elif rf.generated:
            staged(seq, "generated")
        else:
            staged(seq, "orphan")
    by_id = {p.ledger_id: p for p in pending}
    for ledger_id, seqs in candidates.items():
        p = by_id[ledger_id]
        if len(seqs) == 1 and maybe[seqs[0]][1] == [ledger_id] and _content_proves(p, maybe[seqs[0]][0]):
            claimed.add(ledger_id)
            plan.settled.append((p, maybe[seqs[0]][0]))
        else:
            # Two files could be this upload, or this file another's too: taking the wrong one would
            # record our content on someone else's file and delete ours as an orphan. Neither is
            # touched; the reservation stays pending, and says why.
            plan.ambiguous_pending.append((p, [maybe[seq][0] for seq in seqs]))
            claimed.add(ledger_id)
    stage.flush_marks()
    for category, name in STAGED.items():
        setattr(plan, name, Staged(counts[category], lambda c=category: stage.rows(c)))
    plan.unclaimed = Staged(counts["unclaimed"], lambda: stage.pairs("unclaimed"))
    plan.staging = stage
    plan.intents_done = list(intents.values())  # not listed: those deletes did happen
    done = {i.file_id for i in plan.intents_done}
    for t in stage.not_listed():
        if t.file_id in done:
            continue
        if t.expired(now) and t.status != Status.UNCLAIMED:
            plan.expired.append(t)  # the provider's own expiry, or ours: not an anomaly
        elif t.created_at > old_enough:
            plan.not_yet_listed.append(t)  # a list endpoint may lag a moment behind an upload
        else:
            plan.absent.append(t)
    for p in pending:
        if p.ledger_id not in claimed:
            (plan.failed_pending if p.created_at <= old_enough else plan.waiting_pending).append(p)


def _content_rules_out(p: Tracked, rf: RemoteFile) -> bool:
    """Whether the hashes say this listed file is not the reservation's upload."""
    return rf.sha256 is not None and p.sha256 is not None and rf.sha256 != p.sha256


def _content_proves(p: Tracked, rf: RemoteFile) -> bool:
    """Whether the one file that could be the reservation's upload may be taken for it. Not when
    the reservation never noted its hash, which it does once its whole content is on its way: a
    multipart upload cut off before that cannot have landed, and this file may well be another's
    of the same name and size (a row from before filekeeper noted hashes is the same: unproven).
    Such a reservation stays pending and the file is kept, neither taken nor an orphan."""
    return p.sha256 is not None


def _before(rf: RemoteFile, when: datetime | None) -> bool:
    return when is not None and rf.created_at is not None and rf.created_at < when


def unlisted(plan: ReconcilePlan, tracked: Iterable[Tracked], now: datetime) -> None:
    """Tracked files of a purpose the provider's listing cannot show (Z.AI lists four of its seven):
    neither confirmed nor missing. Past their expiry they are deleted all the same (a delete of a
    file already gone is recorded as such); a reservation among them cannot be settled by a listing."""
    for t in tracked:
        if t.status == Status.PENDING:
            plan.unknowable_pending.append(t)
        elif t.file_id and t.status == Status.ACTIVE and t.expired(now):
            plan.expired.append(t)
            plan.expired_present.add(t.file_id)


def _listed_tracked(plan: ReconcilePlan, t: Tracked, rf: RemoteFile, now: datetime) -> None:
    if t.status == Status.MISSING:
        plan.reappeared.append(t)
        return
    if (rf.bytes is not None and rf.bytes != t.bytes) or (rf.filename and not same_filename(rf.filename, t.filename)):
        plan.drift.append((t, rf))
    if t.expired(now):
        plan.expired.append(t)
        plan.expired_present.add(rf.id)


def expected_live(
    plan: ReconcilePlan,
    stage: Staging,
    now: datetime,
    min_age: timedelta,
    *,
    ours_only: bool,
    created_before: datetime | None = None,
) -> tuple[int, int]:
    """How many tracked files the provider should list now, and how many of them it did: not past
    their expiry, not uploaded a moment ago, not deleted by a run that died before recording it
    (``ours_only``: without the unclaimed, which are someone else's)."""
    statuses = (Status.ACTIVE, Status.GENERATED) if ours_only else LISTED
    return stage.expected(
        statuses,
        now=now,
        created_by=now - min_age,
        created_before=created_before,
        exclude={i.file_id for i in plan.intents_done},
    )


def age(d: timedelta) -> str:
    from .units import format_duration

    return format_duration(int(d.total_seconds()))
