"""What a reconcile found: the plan, and the one pass over a listing that builds it.

No I/O here: :mod:`filekeeper.reconcile` reads the ledger and the provider, asks :func:`classify`
what the listing means, holds the plan against the safety rails, and applies it.

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
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from .records import Identity, Intent, Tracked, iso
from .schema import LISTED, DeleteKind, Status
from .upload import could_be_upload_of, filename_key, same_filename

if TYPE_CHECKING:
    from .config import Account
    from .providers import RemoteFile


@dataclass(frozen=True)
class ReconcileOptions:
    apply: bool = False
    adopt: bool = False
    max_delete: int | str = 100  # a count, or "N%" of the files listed
    min_age: timedelta = timedelta(hours=1)
    accept_empty: bool = False
    #: act although most of the files the ledger expects are absent from the listing
    accept_missing: bool = False
    #: act on a listing made with a key this account was never used with
    trust_key: bool = False
    #: delete unclaimed files (found by a ledger that never tracked the account) like orphans
    delete_unclaimed: bool = False
    wait: bool = False
    concurrency: int = 32


@dataclass(frozen=True)
class Snapshot:
    """What the ledger holds for the account, read before the listing."""

    tracked: list[Tracked] = field(default_factory=list)
    #: (base URL, key fingerprint) -> how the ledger knows it
    identities: dict[tuple[str, str], Identity] = field(default_factory=dict)
    #: whether an applying reconcile has listed the account before (its baseline)
    history: bool = False
    intents: list[Intent] = field(default_factory=list)
    #: file ids the ledger tracks under the provider's other accounts -> that account
    elsewhere: dict[str, str] = field(default_factory=dict)


@dataclass
class ReconcilePlan:
    """What a reconcile found, and with ``apply``, what it did."""

    account: Account
    applied: bool = False
    listed: int = 0
    #: the key the listing was made with: known, first (a new account), rotated (proven), trusted
    key: str = "known"
    orphans: list[RemoteFile] = field(default_factory=list)
    #: unknown files younger than --min-age: left alone (an upload may be landing)
    young: list[RemoteFile] = field(default_factory=list)
    unclaimed_new: list[RemoteFile] = field(default_factory=list)
    unclaimed: list[tuple[Tracked, RemoteFile]] = field(default_factory=list)  # recorded earlier, listed again
    generated_new: list[RemoteFile] = field(default_factory=list)
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
    drift: list[tuple[Tracked, RemoteFile]] = field(default_factory=list)
    #: listed files the ledger tracks under another account of the provider
    elsewhere: list[tuple[RemoteFile, str]] = field(default_factory=list)
    intents_done: list[Intent] = field(default_factory=list)
    intents_void: list[Intent] = field(default_factory=list)
    #: files an upload marked for eviction and died before deleting: still there, active again
    restored: list[Intent] = field(default_factory=list)
    #: ledger ids of the tracked files the listing showed
    seen: set[int] = field(default_factory=set)
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
            + [tracked(t, outcome="unknowable") for t in self.unknowable_pending],
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


def parse_max_delete(value: str) -> int | str:
    """Validate ``--max-delete`` as N or N%; raises ValueError."""
    import re

    text = value.strip()
    # ASCII digits only: str.isdigit() also takes "²" and other digits int() cannot read.
    if re.fullmatch(r"[0-9]{1,9}", text):
        return int(text)
    if re.fullmatch(r"[0-9]{1,3}(\.[0-9]+)?%", text) and float(text[:-1]) <= 100:
        return text
    raise ValueError(f"--max-delete takes a whole number or a percentage from 0% to 100%, not {value!r}")


def classify(
    plan: ReconcilePlan, snapshot: Snapshot, listing: Iterable[RemoteFile], now: datetime, min_age: timedelta
) -> None:
    """The one pass over the listing. Raises whatever the listing raises, before any change."""
    old_enough = now - min_age
    by_id = {t.file_id: t for t in snapshot.tracked if t.file_id and t.status != Status.PENDING}
    intents = {i.file_id: i for i in snapshot.intents}
    claimable: dict[str, list[Tracked]] = defaultdict(list)
    pending = [t for t in snapshot.tracked if t.status == Status.PENDING]
    for p in pending:
        if p.created_at <= old_enough:  # a younger reservation may still be uploading
            claimable[filename_key(p.filename)].append(p)
    claimed: set[int] = set()
    for rf in listing:
        plan.listed += 1
        intent = intents.pop(rf.id, None)
        if intent is not None:
            plan.intents_void.append(intent)  # the delete did not happen: the file is still there
            if intent.kind == DeleteKind.EVICT and intent.file_pk is not None:
                plan.restored.append(intent)  # an upload died before evicting it: it is ours, and there
                continue
        t = by_id.get(rf.id)
        if t is not None:
            plan.seen.add(t.ledger_id)
            _listed_tracked(plan, t, rf, now)
            continue
        if rf.id in snapshot.elsewhere:
            plan.elsewhere.append((rf, snapshot.elsewhere[rf.id]))
            continue
        young = rf.created_at is not None and rf.created_at > old_enough
        match = next(
            (
                p
                for p in claimable.get(filename_key(rf.filename), ())
                if p.ledger_id not in claimed and could_be_upload_of(rf, p.filename, p.bytes, p.created_at)
            ),
            None,
        )
        if match is not None:
            claimed.add(match.ledger_id)
            plan.settled.append((match, rf))
        elif young and not rf.generated:
            plan.young.append(rf)  # may be an upload landing right now: left alone, whoever made it
        elif not snapshot.history:
            plan.unclaimed_new.append(rf)  # a ledger that never tracked this account: not ours
        elif rf.generated:
            plan.generated_new.append(rf)
        else:
            plan.orphans.append(rf)
    plan.intents_done = list(intents.values())  # not listed: those deletes did happen
    done = {i.file_id for i in plan.intents_done}
    for t in by_id.values():
        if t.ledger_id in plan.seen or t.status == Status.MISSING or t.file_id in done:
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
    if t.status == Status.UNCLAIMED:
        plan.unclaimed.append((t, rf))
        return
    if (rf.bytes is not None and rf.bytes != t.bytes) or (rf.filename and not same_filename(rf.filename, t.filename)):
        plan.drift.append((t, rf))
    if t.expired(now):
        plan.expired.append(t)
        plan.expired_present.add(rf.id)


def expected_live(
    plan: ReconcilePlan, snapshot: Snapshot, now: datetime, min_age: timedelta, *, ours_only: bool
) -> list[Tracked]:
    """Tracked files the provider should list now: not past their expiry, not uploaded a moment ago,
    not deleted by a run that died before recording it (``ours_only``: without the unclaimed, which
    are someone else's)."""
    statuses = (Status.ACTIVE, Status.GENERATED) if ours_only else LISTED
    done = {i.file_id for i in plan.intents_done}
    return [
        t
        for t in snapshot.tracked
        if t.status in statuses
        and t.file_id
        and t.file_id not in done
        and not t.expired(now)
        and t.created_at <= now - min_age
    ]


def age(d: timedelta) -> str:
    from .units import format_duration

    return format_duration(int(d.total_seconds()))
