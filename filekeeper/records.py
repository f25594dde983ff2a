"""The values the library hands back: ledger records and the results of each command (each has
``to_json()``, the one shape ``--json`` prints and scripts read); and what a reconcile is asked
to do (:class:`ReconcileOptions`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import FilekeeperError, UsageError
from .quota import is_expired

if TYPE_CHECKING:
    from sqlalchemy import Row

    from .config import Account
    from .profiles import Limits
    from .quota import Advice, Held, Request, Usage, Violation


@dataclass(frozen=True)
class ReconcileOptions:
    """What a reconcile is asked to do (the CLI's options; see README, Reconcile)."""

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

    def __post_init__(self) -> None:
        if self.adopt and self.delete_unclaimed:  # before anything is asked of the provider
            raise UsageError("give --adopt or --delete-unclaimed, not both")


#: the orders ``filekeeper ls --sort`` takes: oldest first, largest first, by name, soonest expiry first
SORTS = ("created", "size", "name", "expires")


def iso(d: datetime | None) -> str | None:
    """ISO 8601 UTC with a Z, as every JSON output shows times."""
    return None if d is None else d.isoformat().replace("+00:00", "Z")


#: the statuses of files held at the provider, which lapse at its own expiry (schema.HELD without pending)
LAPSING = ("active", "generated", "unclaimed")


@dataclass(frozen=True)
class FileRecord:
    """One ledger row, as the library and ``--json`` show it."""

    ledger_id: int
    id: str | None
    provider: str
    account: str
    filename: str
    bytes: int
    sha256: str | None
    purpose: str
    status: str
    created_at: datetime
    expires_at: datetime | None
    deleted_at: datetime | None
    reused: bool = False
    #: when the provider deletes it by itself (not in ``to_json``: ``expires_at`` is never later)
    provider_expires_at: datetime | None = None

    @classmethod
    def from_row(cls, row: Row[Any], *, reused: bool = False) -> FileRecord:
        """From a row of :data:`filekeeper.ledger.RECORDS` (a files row joined to its account)."""
        m = row._mapping
        status = m["status"]
        if status in LAPSING and is_expired(m["provider_expires_at"], datetime.now(UTC)):
            status = "expired"  # the provider deleted it by itself (Gemini's 48 hours) and holds it no more
        return cls(
            ledger_id=m["id"],
            id=m["file_id"],
            provider=m["provider"],
            account=m["account"],
            filename=m["filename"],
            bytes=m["bytes"],
            sha256=m["sha256"],
            purpose=m["purpose"],
            status=status,
            created_at=m["created_at"],
            expires_at=m["expires_at"],
            deleted_at=m["deleted_at"],
            reused=reused,
            provider_expires_at=m["provider_expires_at"],
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "provider": self.provider,
            "account": self.account,
            "filename": self.filename,
            "bytes": self.bytes,
            "sha256": self.sha256,
            "purpose": self.purpose,
            "status": self.status,
            "created_at": iso(self.created_at),
            "expires_at": iso(self.expires_at),
            "deleted_at": iso(self.deleted_at),
            "ledger_id": self.ledger_id,
            "reused": self.reused,
        }


@dataclass(frozen=True)
class PendingRow:
    """What a reservation writes beside its request: whose it is (for the record returned), the
    hash if known, when it was made and when it expires, and the event's extra detail."""

    account: str
    provider: str
    sha256: str | None
    created_at: datetime
    expires_at: datetime | None
    provider_expires_at: datetime | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)

    def record(self, ledger_id: int, request: Request) -> FileRecord:
        """The record of the row as written, as a read back would give it."""
        return FileRecord(
            ledger_id=ledger_id,
            id=None,
            provider=self.provider,
            account=self.account,
            filename=request.filename,
            bytes=request.bytes,
            sha256=self.sha256,
            purpose=request.purpose,
            status="pending",
            created_at=self.created_at,
            expires_at=self.expires_at,
            deleted_at=None,
            provider_expires_at=self.provider_expires_at,
        )


@dataclass(frozen=True, slots=True)
class Tracked:
    """A ledger row as a reconcile's snapshot saw it."""

    ledger_id: int
    file_id: str | None
    filename: str
    bytes: int
    status: str
    created_at: datetime
    expires_at: datetime | None
    purpose: str = ""
    #: the content's hash, once its whole content was on its way (a reservation's) or known
    sha256: str | None = None

    def expired(self, now: datetime) -> bool:
        return is_expired(self.expires_at, now)


@dataclass(frozen=True)
class Identity:
    """A base URL (normalised) and key fingerprint an account has been used with."""

    base_url: str
    key_fingerprint: str
    first_seen: datetime
    #: first_use, listing, trusted, or unproven (used by an upload or delete, never shown by a listing)
    proven_by: str

    @property
    def proven(self) -> bool:
        return self.proven_by != "unproven"


@dataclass
class DeleteJob:
    """One delete a reconcile is to send: of an orphan, an expired file, or an unclaimed one
    (``--delete-unclaimed``). ``intent_id`` is its journal row once written, before it is sent."""

    file_id: str
    kind: str  # orphan, expired, unclaimed, or delete (`filekeeper delete`, settled by a later reconcile)
    file_pk: int | None = None
    intent_id: int | None = None


@dataclass(frozen=True)
class DeleteOutcome:
    job: DeleteJob
    #: whether the provider still had the file (False: it was already gone)
    existed: bool
    #: found done by a later run, after the process that sent it died before recording it
    settled: bool = False


@dataclass(frozen=True)
class Intent:
    """A delete written down before it was sent and never recorded as done."""

    id: int
    file_id: str
    file_pk: int | None
    kind: str
    run_id: int | None
    at: datetime


def held_json(h: Held) -> dict[str, Any]:
    return {
        "id": h.file_id,
        "filename": h.filename,
        "bytes": h.bytes,
        "created_at": iso(h.created_at),
        "expires_at": iso(h.expires_at),
    }


@dataclass(frozen=True)
class UploadResult:
    """One path of an ``upload``: its record (uploaded or reused), or the error that stopped it."""

    path: Path
    record: FileRecord | None = None
    error: FilekeeperError | None = None
    #: files deleted at the provider to make room for this one (``evict=``), even if it then failed
    evicted: list[Held] = field(default_factory=list)
    #: on an error, the ledger row the attempt left: ``failed``, or ``pending`` when its fate is unknown
    row: FileRecord | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def outcome(self) -> str:
        """uploaded, reused, refused (by quota, nothing sent), cancelled (Ctrl-C) or failed."""
        from .errors import Interrupted, QuotaExceeded

        if self.record is not None:
            return "reused" if self.record.reused else "uploaded"
        if isinstance(self.error, QuotaExceeded):
            return "refused"
        if isinstance(self.error, Interrupted):
            return "cancelled"
        return "failed"

    def to_json(self) -> dict[str, Any]:
        """The record's fields (for a failure, those of the row it left, if any), plus the path,
        the outcome, what was evicted for it, and the error and violations if it did not land."""
        from .errors import QuotaExceeded, StoredNotRecorded

        shown = self.record or self.row
        out: dict[str, Any] = shown.to_json() if shown is not None else {"id": None}
        if self.record is None:
            # No file of this path is at the provider, unless it was stored and not recorded.
            out["id"] = self.error.file_id if isinstance(self.error, StoredNotRecorded) else None
        out.update(path=str(self.path), outcome=self.outcome, evicted=[held_json(h) for h in self.evicted])
        if self.error is not None:
            out["error"] = str(self.error)
        if isinstance(self.error, QuotaExceeded):
            out["violations"] = [v.to_json() for v in self.error.violations]
        return out


@dataclass(frozen=True)
class CheckResult:
    """Whether files would fit, together, and if not what could make room."""

    account: Account
    usage: Usage
    requests: list[Request]
    violations: list[Violation]
    reused: list[FileRecord]
    advice: Advice | None = None
    #: files given more than once (same content): sent once, the others reuse it
    twins: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def to_json(self) -> dict[str, Any]:
        advice = self.advice
        return {
            "ok": self.ok,
            "account": self.account.name,
            "provider": self.account.provider,
            "usage": {"files": self.usage.files, "bytes": self.usage.bytes},
            "requested": {"files": len(self.requests), "bytes": sum(r.bytes for r in self.requests)},
            "limits": self.account.limits.as_dict(),
            "violations": [v.to_json() for v in self.violations],
            "reused": [r.to_json() for r in self.reused],
            "twins": self.twins,
            "advice": {
                "free_files": advice.free_files if advice else 0,
                "free_bytes": advice.free_bytes if advice else 0,
                "expired": [held_json(h) for h in advice.expired] if advice else [],
                "oldest": [held_json(h) for h in advice.oldest] if advice else [],
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

    @property
    def gone_at_provider(self) -> bool:
        """Whether the file is gone at the provider now: deleted (or found gone), recorded or not."""
        from .errors import GoneNotRecorded

        return self.error is None or isinstance(self.error, GoneNotRecorded)

    def to_json(self) -> dict[str, Any]:
        base = (
            self.record.to_json()
            if self.record
            else {"id": self.file_id, "provider": self.provider, "account": self.account, "status": "deleted"}
        )
        out = {**base, "already_gone": self.already_gone, "known": self.record is not None, "recorded": True}
        if self.error is not None:  # gone at the provider, and the ledger failed to record it
            out.update(known=None, recorded=False, error=str(self.error))
        return out


@dataclass(frozen=True)
class PruneResult:
    """What ``db prune-events`` archived and removed, or (not ``applied``) would."""

    count: int
    first: datetime | None
    last: datetime | None
    archive: Path
    applied: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "events": self.count,
            "first": iso(self.first),
            "last": iso(self.last),
            "archive": str(self.archive) if self.applied else None,
            "would_archive_to": None if self.applied else str(self.archive),
            "applied": self.applied,
        }


@dataclass(frozen=True)
class AccountUsage:
    account: str
    provider: str
    files: int
    bytes: int
    limits: Limits = field(repr=False)
    #: files and bytes per purpose (every purpose held, and every one with limits of its own)
    by_purpose: Mapping[str, Usage] = field(default_factory=dict)
    #: seconds after upload at which the provider deletes files by itself, per purpose ("*": all)
    provider_expiry: Mapping[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "account": self.account,
            "provider": self.provider,
            "files": self.files,
            "bytes": self.bytes,
            "by_purpose": {p: {"files": u.files, "bytes": u.bytes} for p, u in sorted(self.by_purpose.items())},
            "limits": self.limits.as_dict(),
            "provider_expiry_seconds": dict(self.provider_expiry),
        }
