"""The ledger's tables, in SQLAlchemy Core: the one definition Alembic and the ledger share.

Core rather than the ORM, so that commands that only read (``check``, ``usage``) start fast;
:mod:`filekeeper.models` maps typed ORM classes over these same tables for scripts.
The Alembic revisions in ``migrations/`` must produce exactly this schema; a test compares them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    TypeDecorator,
    UniqueConstraint,
)

from .units import utcnow as utcnow  # the ledger's clock, where the modules reading the ledger find it

# The newest revision in migrations/versions. Opening a ledger compares against this constant
# so that commands that find the ledger current never import alembic (a test keeps it in step).
SCHEMA_HEAD = "0006"


class Status(StrEnum):
    """Where a file stands. Only the ledger's transitions (:class:`filekeeper.ledger.Writer`) move it."""

    PENDING = "pending"  # reserved; the upload may be in flight, or its outcome unknown
    ACTIVE = "active"  # at the provider, ours
    UNCLAIMED = "unclaimed"  # at the provider, found by a ledger that never tracked the account: not ours to delete
    GENERATED = "generated"  # made by the provider (batch output, a tool's file); kept its own retention
    DELETED = "deleted"  # deleted by us (or found already gone when we deleted it)
    EXPIRED = "expired"  # past expires_at, and deleted or gone at the provider
    MISSING = "missing"  # gone at the provider without our doing
    FAILED = "failed"  # the upload did not land; holds no quota


class Action(StrEnum):
    """The audit log's vocabulary: every event's ``action`` is one of these."""

    ACCOUNT_ADDED = "account_added"
    ACCOUNT_CHANGED = "account_changed"
    RESERVE = "reserve"
    UPLOAD = "upload"
    UPLOAD_FAILED = "upload_failed"
    REUSE = "reuse"
    FOUND_MISSING = "found_missing"  # an upload's check found an identical file gone at the provider
    FOUND_EXPIRED = "found_expired"  # a delete found a file gone after the provider's own expiry
    SETTLE_UNDONE = "settle_undone"  # a lost answer's recovery took another upload's file: pending again
    REFUSE = "refuse"
    EVICT = "evict"
    EVICT_FAILED = "evict_failed"
    DELETE = "delete"
    RECONCILE_DELETE = "reconcile_delete"
    RECONCILE_EXPIRE = "reconcile_expire"
    RECONCILE_EXPIRED = "reconcile_expired"
    RECONCILE_MISSING = "reconcile_missing"
    RECONCILE_SETTLE = "reconcile_settle"
    RECONCILE_FAIL_PENDING = "reconcile_fail_pending"
    RECONCILE_ADOPT = "reconcile_adopt"
    RECONCILE_DRIFT = "reconcile_drift"
    RECONCILE_ABANDONED = "reconcile_abandoned"
    RECONCILE_REAPPEARED = "reconcile_reappeared"  # a missing file listed again: active once more
    RECONCILE_UNCLAIMED = "reconcile_unclaimed"  # recorded as someone else's until adopted
    RECONCILE_GENERATED = "reconcile_generated"  # a provider-made file, recorded with its own retention
    RECONCILE_GONE = "reconcile_gone"  # an unclaimed file that left the provider
    KEY_ROTATED = "key_rotated"  # a new key, proven to reach the same account


class DeleteKind(StrEnum):
    """Why a delete in the journal (``delete_intents``) was sent: what its outcome records."""

    ORPHAN = "orphan"  # reconcile: at the provider, unknown to the ledger
    EXPIRED = "expired"  # reconcile: past its expiry
    UNCLAIMED = "unclaimed"  # reconcile --delete-unclaimed
    DELETE = "delete"  # filekeeper delete
    EVICT = "evict"  # upload --evict: making room


class RunStatus(StrEnum):
    """A ``reconcile_runs`` row's status; ``running`` is also the account's reconcile lock."""

    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    ABORTED = "aborted"  # a safety rail refused the plan before anything changed
    ABANDONED = "abandoned"  # its process died; taken over by a later run
    INTERRUPTED = "interrupted"  # stopped by SIGINT or SIGTERM after finishing what was in flight


FILE_STATUSES = tuple(Status)
#: statuses that hold quota at the provider (or may, for a reservation in flight)
HELD = (Status.ACTIVE, Status.PENDING, Status.UNCLAIMED, Status.GENERATED)
#: statuses of files the ledger expects the provider to list
LISTED = (Status.ACTIVE, Status.UNCLAIMED, Status.GENERATED)


class UTCDateTime(TypeDecorator[datetime]):
    """Stores naive UTC, hands back aware UTC: SQLite keeps no zone, PostgreSQL's would be local."""

    impl = DateTime(timezone=False)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the ledger; use aware UTC")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

accounts = Table(
    "accounts",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("provider", String(32), nullable=False),
    Column("base_url", String(512), nullable=False),
    Column("key_fingerprint", String(32), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    # When an applying reconcile first listed the account through this ledger: until then every
    # file the provider lists that the ledger does not know is someone else's (unclaimed).
    Column("baselined_at", UTCDateTime),
)

files = Table(
    "files",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("account_id", ForeignKey("accounts.id"), nullable=False),
    # The provider's id; NULL while the upload is only a reservation or if it failed.
    Column("file_id", String(128)),
    Column("filename", String(1024), nullable=False),
    Column("bytes", BigInteger, nullable=False),
    Column("sha256", String(64)),
    Column("purpose", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    # When we consider it expired: the TTL or retention policy, or the provider's own expiry if sooner.
    Column("expires_at", UTCDateTime),
    # When the provider deletes it by itself (Gemini after 48 hours, OpenAI batch files after 30
    # days, an expiry the upload asked for): from then on it holds no quota, listed or not.
    Column("provider_expires_at", UTCDateTime),
    Column("deleted_at", UTCDateTime),
    UniqueConstraint("account_id", "file_id"),
    # status, then the provider's expiry: the held rows the provider has deleted by itself are
    # one range of it (what account_usage's sums still count).
    Index(None, "account_id", "status", "provider_expires_at"),
    Index(None, "account_id", "sha256", "purpose"),
    Index(None, "account_id", "bytes"),  # an active file of this size? (before hashing)
)

# What each account holds, per purpose: the sum of its rows. Written by the database itself, by
# triggers on files (migration 0006): +1 file and its bytes as a row starts holding quota (HELD),
# -1 as it stops; on SQLite into one row per account and purpose, on PostgreSQL as a new row each
# time, which reservations fold into one per purpose now and then.
account_usage = Table(
    "account_usage",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("account_id", ForeignKey("accounts.id"), nullable=False),
    Column("purpose", String(64), nullable=False),
    Column("files", Integer, nullable=False),
    Column("bytes", BigInteger, nullable=False),
    Index(None, "account_id", "purpose"),
)

# Append-only: rows are inserted and never updated; only an explicit prune removes them.
events = Table(
    "events",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("at", UTCDateTime, nullable=False),
    Column("account_id", ForeignKey("accounts.id")),
    Column("file_pk", ForeignKey("files.id")),
    Column("file_id", String(128)),
    Column("action", String(32), nullable=False),
    Column("actor", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("detail", JSON, nullable=False),
    Index(None, "at"),
    Index(None, "file_pk"),
)

# The identities (base URL and key, by fingerprint: never the key) each account has been used
# with: a listing made through one not proven here must first show that it reaches the same
# account before a reconcile acts on it.
account_keys = Table(
    "account_keys",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("account_id", ForeignKey("accounts.id"), nullable=False),
    Column("key_fingerprint", String(32), nullable=False),
    Column("base_url", String(512), nullable=False),  # normalised (config.identity_url)
    Column("first_seen", UTCDateTime, nullable=False),
    # first_use (the account's first), listing (its files were listed through it), trusted
    # (--trust-key), or unproven (an upload or delete used it; a listing has not shown it yet)
    Column("proven_by", String(32), nullable=False),
    UniqueConstraint("account_id", "key_fingerprint", "base_url"),
)

# One row per `reconcile --apply`. A row in status "running" is also the account's reconcile
# lock: taken inside the ledger's write lock, so it holds across processes and hosts.
reconcile_runs = Table(
    "reconcile_runs",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("account_id", ForeignKey("accounts.id"), nullable=False),
    Column("status", String(16), nullable=False),  # running, done, failed, aborted, abandoned
    Column("applied", Boolean, nullable=False),
    Column("actor", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("heartbeat_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime),
    Column("listed", Integer),
    Column("counts", JSON, nullable=False),
    Column("outcome", String(255)),
    Column("error", String(2000)),
    Index(None, "account_id", "status"),
)

# Deletes sent or about to be sent: written before the request, removed with its outcome (in the
# same transaction as the outcome's event). A row left behind (kill -9, a dropped connection) is a
# delete whose outcome is unknown; the next reconcile settles it against the provider's listing.
delete_intents = Table(
    "delete_intents",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("account_id", ForeignKey("accounts.id"), nullable=False),
    Column("file_id", String(128), nullable=False),
    Column("file_pk", ForeignKey("files.id")),
    Column("run_id", ForeignKey("reconcile_runs.id")),  # None for `filekeeper delete`
    Column("kind", String(16), nullable=False),  # orphan, expired, unclaimed, delete
    Column("at", UTCDateTime, nullable=False),
    Column("actor", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Index(None, "account_id"),
)


def staging_tables(token: str) -> tuple[Table, Table]:
    """One reconcile's staging: the ledger's side as it stood before the listing (``tracked``) and
    the listing itself, page by page (``listed``, in the order the provider listed it).

    TEMPORARY tables, so no migration and no other session sees them: they live on the one
    connection that created them and go with it, however the run ends (kill -9 included), so a
    listing that did not complete can never be read by another run as if it had. ``token`` makes
    the names unique even on that connection, should a pool hand it to the next run."""
    md = MetaData()
    tracked = Table(
        f"fk_tracked_{token}",
        md,
        Column("ledger_id", Integer, primary_key=True, autoincrement=False),
        Column("file_id", String(128)),
        Column("filename", String(1024), nullable=False),
        Column("bytes", BigInteger, nullable=False),
        Column("status", String(16), nullable=False),
        Column("created_at", UTCDateTime, nullable=False),
        Column("expires_at", UTCDateTime),
        Column("purpose", String(64), nullable=False),
        Column("sha256", String(64)),
        Index(f"ix_fk_tracked_{token}_file_id", "file_id"),
        prefixes=["TEMPORARY"],
    )
    listed = Table(
        f"fk_listed_{token}",
        md,
        Column("seq", Integer, primary_key=True, autoincrement=False),
        Column("id", String, nullable=False),
        Column("filename", String, nullable=False),
        Column("bytes", BigInteger),
        Column("created_at", UTCDateTime),
        Column("purpose", String),
        Column("status", String),
        Column("expires_at", UTCDateTime),
        Column("generated", Boolean, nullable=False),
        Column("sha256", String),
        # What the plan made of the file, for the categories kept here rather than in memory.
        Column("category", String(16)),
        # A file listed twice is a listing that cannot be trusted: the index refuses the second.
        Index(f"ux_fk_listed_{token}_id", "id", unique=True),
        prefixes=["TEMPORARY"],
    )
    return tracked, listed
