"""Quota policy: pure functions from limits, usage and requests to violations and evictions.

No I/O here. :mod:`filekeeper.upload` applies this policy inside the ledger's reservation
transaction; ``filekeeper check`` applies it to a read-only snapshot.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import PurePath
from typing import Any, Literal

from .profiles import Limits
from .units import format_size

EvictMode = Literal["expired", "oldest"]


@dataclass(frozen=True)
class Rules:
    """What an account accepts besides sizes: purposes and file formats (None: anything)."""

    purposes: frozenset[str] | None = None
    formats: frozenset[str] | None = None


@dataclass(frozen=True)
class Request:
    """One file asking for room."""

    filename: str
    bytes: int
    purpose: str


@dataclass(frozen=True)
class Usage:
    files: int
    bytes: int
    #: what each purpose's files hold of it
    by_purpose: Mapping[str, Usage] = field(default_factory=dict)

    def purpose(self, purpose: str) -> Usage:
        return self.by_purpose.get(purpose) or Usage(0, 0)

    def without(self, held: Held | Request) -> Usage:
        """What is held once this file is gone (or before it came)."""
        by_purpose = dict(self.by_purpose)
        if held.purpose in by_purpose:
            left = by_purpose[held.purpose]
            by_purpose[held.purpose] = Usage(left.files - 1, left.bytes - held.bytes)
        return Usage(self.files - 1, self.bytes - held.bytes, by_purpose)


@dataclass(frozen=True)
class Held:
    """An active file at the provider that could make room."""

    ledger_id: int
    file_id: str
    filename: str
    bytes: int
    created_at: datetime
    expires_at: datetime | None
    purpose: str = ""

    def expired(self, now: datetime) -> bool:
        return is_expired(self.expires_at, now)


@dataclass(frozen=True)
class Violation:
    limit: str  # max_files, max_total_bytes, max_file_bytes, retention, purpose or format
    message: str
    current: int | str | None
    requested: int | str | None
    max: int | str | None
    #: the purpose whose own limit this is (None: the account's)
    purpose: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "limit": self.limit,
            "message": self.message,
            "current": self.current,
            "requested": self.requested,
            "max": self.max,
            "purpose": self.purpose,
        }


def is_expired(expires_at: datetime | None, now: datetime) -> bool:
    """The one rule for "expired", for eviction, check and reconcile alike: due at or before now."""
    return expires_at is not None and expires_at <= now


def file_format(filename: str) -> str:
    """The format a provider judges by: the lower-case extension without its dot ("" if none)."""
    return PurePath(filename).suffix.lower().lstrip(".")


def expiry(now: datetime, ttl_seconds: int | None, retention_days: int) -> datetime | None:
    """When a file uploaded now expires: its TTL, else the retention policy (None: never)."""
    if ttl_seconds is not None:
        return now + timedelta(seconds=ttl_seconds)
    return now + timedelta(days=retention_days) if retention_days else None


def file_violations(limits: Limits, requests: Sequence[Request], ttl_seconds: int | None = None) -> list[Violation]:
    """What no amount of room can fix: size per file, and a TTL beyond the retention policy."""
    out: list[Violation] = []
    if ttl_seconds is not None and limits.retention_days and ttl_seconds > limits.retention_days * 86400:
        out.append(
            Violation(
                "retention",
                f"a TTL of {ttl_seconds // 86400} days is beyond the retention policy of {limits.retention_days} days",
                None,
                ttl_seconds,
                limits.retention_days * 86400,
            )
        )
    for r in requests:
        fmt = file_format(r.filename)
        cap = limits.max_file_bytes_for(r.purpose, fmt)
        if cap is not None and r.bytes > cap:
            scoped = limits.by_purpose.get(r.purpose)
            if scoped is not None and scoped.max_file_bytes == cap and cap != limits.max_file_bytes:
                which = f"the limit per file of purpose {r.purpose}"
            elif limits.by_format.get(fmt) == cap and cap != limits.max_file_bytes:
                which = f"the limit per .{fmt} file"
            else:
                which = "the limit per file"
            out.append(
                Violation(
                    "max_file_bytes",
                    f"{r.filename} is {_apart(r.bytes, cap)}; {which} is {_apart(cap, r.bytes)}",
                    None,
                    r.bytes,
                    cap,
                )
            )
    return out


def _apart(size: int, other: int) -> str:
    """A size as people read it, or to the byte where rounding would show it equal to ``other``."""
    shown = format_size(size)
    return shown if shown != format_size(other) else f"{size:,} bytes"


def unsupported(provider: str, rules: Rules, requests: Sequence[Request]) -> str | None:
    """Why the provider would reject one of the requests outright (a purpose or a format its
    docs say it does not take), or None. Bad input, not a quota refusal: no room would help."""
    for r in requests:
        if rules.purposes is not None and not rules.purposes and r.purpose:
            return f"{provider} files have no purpose: drop --purpose {r.purpose}"
        if rules.purposes and r.purpose not in rules.purposes:
            return f"{provider} does not take purpose {r.purpose!r}: use one of {', '.join(sorted(rules.purposes))}"
        fmt = file_format(r.filename)
        if rules.formats is not None and fmt not in rules.formats:
            shown = f".{fmt} files" if fmt else "files without an extension"
            return f"{r.filename}: {provider} does not take {shown}: use one of {', '.join(sorted(rules.formats))}"
    return None


def room_violations(limits: Limits, usage: Usage, requests: Sequence[Request]) -> list[Violation]:
    """Whether the requests fit, together, beside what the account already holds: in the account,
    and in each of their purposes that has limits of its own."""
    out = _room(limits.max_files, limits.max_total_bytes, usage, requests, None)
    for purpose in sorted({r.purpose for r in requests}):
        scoped = limits.by_purpose.get(purpose)
        if scoped is not None:
            mine = [r for r in requests if r.purpose == purpose]
            out += _room(scoped.max_files, scoped.max_total_bytes, usage.purpose(purpose), mine, purpose)
    return out


@dataclass(frozen=True)
class Room:
    """The most an account may hold once one more file of ``purpose`` is in it, and the most that
    purpose may (None: no limit): :func:`room_violations` for one request, as bounds a database
    can test by itself, in the statement that reserves (:meth:`filekeeper.ledger.Writer.reserve_if_room`).
    Sums within every bound, the new file counted, are exactly what room_violations lets through
    (``tests/test_postgres.py`` holds the database's test to it)."""

    purpose: str
    max_files: int | None
    max_bytes: int | None
    purpose_max_files: int | None
    purpose_max_bytes: int | None


def room_for(limits: Limits, purpose: str) -> Room:
    scoped = limits.by_purpose.get(purpose)
    return Room(
        purpose,
        limits.max_files,
        limits.max_total_bytes,
        scoped.max_files if scoped is not None else None,
        scoped.max_total_bytes if scoped is not None else None,
    )


def _room(
    max_files: int | None, max_bytes: int | None, usage: Usage, requests: Sequence[Request], purpose: str | None
) -> list[Violation]:
    out: list[Violation] = []
    n, size = len(requests), sum(r.bytes for r in requests)
    of = f" of purpose {purpose}" if purpose is not None else ""
    if max_files is not None and usage.files + n > max_files:
        out.append(
            Violation(
                "max_files",
                f"{usage.files} files{of} held + {n} new > {max_files} allowed; free {usage.files + n - max_files} "
                "file(s)" + (f" of purpose {purpose}" if purpose is not None else ""),
                usage.files,
                n,
                max_files,
                purpose,
            )
        )
    if max_bytes is not None and usage.bytes + size > max_bytes:
        need = usage.bytes + size - max_bytes
        out.append(
            Violation(
                "max_total_bytes",
                f"{format_size(usage.bytes)}{of} held + {format_size(size)} new > {format_size(max_bytes)} allowed; "
                f"free {format_size(need)}",
                usage.bytes,
                size,
                max_bytes,
                purpose,
            )
        )
    return out


def _helps(candidate: Held, violations: Sequence[Violation]) -> bool:
    """Whether deleting this file frees room any of the violated limits counts."""
    return any(v.purpose is None or v.purpose == candidate.purpose for v in violations if v.limit in ROOM_LIMITS)


def evaluate(
    limits: Limits, usage: Usage, requests: Sequence[Request], ttl_seconds: int | None = None
) -> list[Violation]:
    return file_violations(limits, requests, ttl_seconds) + room_violations(limits, usage, requests)


def eviction_order(held: Sequence[Held], mode: EvictMode, now: datetime) -> list[Held]:
    """Which files may go, in the order they should: expired ones by expiry, or all by age."""
    if mode == "expired":
        return sorted((h for h in held if h.expired(now)), key=lambda h: (h.expires_at, h.ledger_id))
    return sorted(held, key=lambda h: (h.created_at, h.ledger_id))


def choose_evictions(
    limits: Limits, usage: Usage, requests: Sequence[Request], held: Sequence[Held], mode: EvictMode, now: datetime
) -> list[Held] | None:
    """The fewest files, taken in eviction order, whose deletion makes the requests fit.

    ``[]`` when they fit already; None when even evicting every candidate would not do.
    """
    chosen: list[Held] = []
    remaining = usage
    violations = room_violations(limits, remaining, requests)
    if not violations:
        return chosen
    for candidate in eviction_order(held, mode, now):
        if not _helps(candidate, violations):
            continue  # another purpose's file: deleting it would free nothing this upload needs
        chosen.append(candidate)
        remaining = remaining.without(candidate)
        violations = room_violations(limits, remaining, requests)
        if not violations:
            return chosen
    return None


#: the limits that more room can fix (the others no eviction can)
ROOM_LIMITS = ("max_files", "max_total_bytes")


def short_of_room(violations: Sequence[Violation]) -> bool:
    return any(v.limit in ROOM_LIMITS for v in violations)


def make_room(
    limits: Limits, usage: Usage, requests: Sequence[Request], held: Sequence[Held], mode: EvictMode, now: datetime
) -> tuple[list[Violation], list[Held]]:
    """What ``--evict`` does to a refusal: the files to evict, or the violations, saying that
    evicting every candidate would not be enough."""
    violations = room_violations(limits, usage, requests)
    if not violations:
        return [], []
    chosen = choose_evictions(limits, usage, requests, held, mode, now)
    if chosen is not None:
        return [], chosen
    what = "every expired file" if mode == "expired" else "every active file"
    return [replace(v, message=f"{v.message} (evicting {what} would not be enough)") for v in violations], []


@dataclass(frozen=True)
class Advice:
    """What would have to go for refused files to fit: how much, and which files would do it."""

    free_files: int = 0
    free_bytes: int = 0
    expired: list[Held] = field(default_factory=list)
    oldest: list[Held] = field(default_factory=list)


def advise(limits: Limits, usage: Usage, requests: Sequence[Request], held: Sequence[Held], now: datetime) -> Advice:
    """``check``'s advice: files and bytes to free, the expired files (by expiry) and the oldest
    (by age) whose deletion would make the requests fit."""
    short = room_violations(limits, usage, requests)

    def need(limit: str) -> int:
        amounts = [(v.current, v.requested, v.max) for v in short if v.limit == limit]
        return max(
            (c + r - m for c, r, m in amounts if isinstance(c, int) and isinstance(r, int) and isinstance(m, int)),
            default=0,
        )

    free_files, free_bytes = need("max_files"), need("max_total_bytes")
    expired = [h for h in held if h.expired(now)]
    by_expiry = choose_evictions(limits, usage, requests, expired, "expired", now)
    by_age = choose_evictions(limits, usage, requests, held, "oldest", now)
    return Advice(
        free_files,
        free_bytes,
        by_expiry if by_expiry is not None else eviction_order(expired, "expired", now),
        by_age or [],
    )
