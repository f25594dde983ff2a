"""Atomic reservation: check the quota and record the ``pending`` row in one write transaction.

The transaction takes the write lock before it reads usage (SQLite ``BEGIN IMMEDIATE``; a
``SELECT ... FOR UPDATE`` on the account row where the database has row locks), so two uploads
can never both see room for one file. Usage counts ``active`` and ``pending`` rows: a
reservation whose process died keeps counting until the reconciler settles it, so the quota is
never over-sold.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, func, insert, select, update

from .config import Account
from .ledger import RECORDS, FileRecord, Ledger
from .quota import EvictMode, Held, Request, Usage, Violation, choose_evictions, file_violations, room_violations
from .schema import HELD, accounts, files, utcnow

if TYPE_CHECKING:
    from .providers import RemoteFile


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


@dataclass(frozen=True)
class Reservation:
    """What reserving one file came to: a new pending row, a reused one, or a refusal."""

    record: FileRecord | None
    reused: bool = False
    #: files marked gone to make room; the caller deletes them at the provider before uploading
    evicted: list[Held] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)


def usage(conn: Connection, account_id: int) -> Usage:
    files_held, bytes_held = conn.execute(
        select(func.count(), func.coalesce(func.sum(files.c.bytes), 0)).where(
            files.c.account_id == account_id, files.c.status.in_(HELD)
        )
    ).one()
    return Usage(int(files_held), int(bytes_held))


def held_files(conn: Connection, account_id: int, *, expired_by: datetime | None = None) -> list[Held]:
    """Active files that could make room (only those expired by ``expired_by``, if given)."""
    query = select(
        files.c.id, files.c.file_id, files.c.filename, files.c.bytes, files.c.created_at, files.c.expires_at
    ).where(files.c.account_id == account_id, files.c.status == "active", files.c.file_id.is_not(None))
    if expired_by is not None:
        query = query.where(files.c.expires_at <= expired_by)
    return [Held(*row) for row in conn.execute(query)]


def find_duplicate(conn: Connection, account_id: int, sha256: str, purpose: str) -> FileRecord | None:
    """The newest active file with the same content and purpose, which an upload can reuse."""
    row = conn.execute(
        RECORDS.where(
            files.c.account_id == account_id,
            files.c.sha256 == sha256,
            files.c.purpose == purpose,
            files.c.status == "active",
        )
        .order_by(files.c.id.desc())
        .limit(1)
    ).first()
    return None if row is None else FileRecord.from_row(row, reused=True)


def may_be_duplicate(conn: Connection, account_id: int, request: Request) -> bool:
    """Whether an active file of the same size and purpose exists: only then is hashing first worth it."""
    return (
        conn.execute(
            select(files.c.id)
            .where(
                files.c.account_id == account_id,
                files.c.status == "active",
                files.c.bytes == request.bytes,
                files.c.purpose == request.purpose,
            )
            .limit(1)
        ).first()
        is not None
    )


def reserve(
    ledger: Ledger,
    account: Account,
    account_id: int,
    request: Request,
    *,
    sha256: str | None = None,
    ttl_seconds: int | None = None,
    expires_at: datetime | None = None,
    evict: EvictMode | None = None,
    force: bool = False,
    **detail: Any,
) -> Reservation:
    """Check one file against the account's policy and, if it fits, reserve it — atomically."""
    now = utcnow()
    with ledger.transaction(write=True) as conn:
        conn.execute(select(accounts.c.id).where(accounts.c.id == account_id).with_for_update())
        if sha256 and not force:
            record = find_duplicate(conn, account_id, sha256, request.purpose)
            if record is not None:
                ledger.event(
                    conn,
                    "reuse",
                    account_id=account_id,
                    file_pk=record.ledger_id,
                    file_id=record.id,
                    filename=request.filename,
                    sha256=sha256,
                    **detail,
                )
                return Reservation(record, reused=True)

        violations = file_violations(account.limits, account.rules, [request], ttl_seconds)
        evicted: list[Held] = []
        if not violations:
            held_now = usage(conn, account_id)
            violations = room_violations(account.limits, held_now, [request])
            if violations and evict:
                candidates = held_files(conn, account_id, expired_by=now if evict == "expired" else None)
                chosen = choose_evictions(account.limits, held_now, [request], candidates, evict, now)
                if chosen is not None:
                    violations, evicted = [], chosen
                else:
                    what = "every expired file" if evict == "expired" else "every active file"
                    violations = [
                        Violation(
                            v.limit, f"{v.message} (evicting {what} would not be enough)", v.current, v.requested, v.max
                        )
                        for v in violations
                    ]
        if violations:
            ledger.event(
                conn,
                "refuse",
                account_id=account_id,
                filename=request.filename,
                bytes=request.bytes,
                purpose=request.purpose,
                violations=[v.to_json() for v in violations],
                **detail,
            )
            return Reservation(None, violations=violations)

        for victim in evicted:
            # Marked gone now, inside the lock, so that no other upload counts on this room;
            # deleted at the provider by the caller, and restored if that fails.
            status = "expired" if victim.expired(now) else "deleted"
            conn.execute(update(files).where(files.c.id == victim.ledger_id).values(status=status, deleted_at=now))
            ledger.event(
                conn,
                "evict",
                account_id=account_id,
                file_pk=victim.ledger_id,
                file_id=victim.file_id,
                mode=evict,
                status=status,
                bytes=victim.bytes,
                to_make_room_for=request.filename,
            )
        ledger_id = conn.execute(
            insert(files).values(
                account_id=account_id,
                filename=request.filename,
                bytes=request.bytes,
                sha256=sha256,
                purpose=request.purpose,
                status="pending",
                created_at=now,
                expires_at=expires_at,
            )
        ).inserted_primary_key[0]
        ledger.event(
            conn,
            "reserve",
            account_id=account_id,
            file_pk=ledger_id,
            filename=request.filename,
            bytes=request.bytes,
            purpose=request.purpose,
            **detail,
        )
        return Reservation(ledger.record(conn, ledger_id), evicted=evicted)


def restore_evicted(ledger: Ledger, account_id: int, victim: Held, error: str) -> None:
    """A file marked for eviction could not be deleted at the provider: it is still there."""
    with ledger.transaction(write=True) as conn:
        conn.execute(update(files).where(files.c.id == victim.ledger_id).values(status="active", deleted_at=None))
        ledger.event(
            conn, "evict_failed", account_id=account_id, file_pk=victim.ledger_id, file_id=victim.file_id, error=error
        )
