"""Parsing and formatting of sizes ("10GB"), durations ("30d") and --max-delete ("10%"); the
time now, as the ledger keeps it."""

from __future__ import annotations

import re
from datetime import UTC, datetime

_SIZE_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}
_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*$")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION_RE = re.compile(r"^\s*([0-9]+)\s*([smhd])\s*$")
#: the longest duration accepted anywhere (a TTL, --min-age): a hundred years
MAX_DURATION_SECONDS = 36_500 * 86_400


def parse_size(value: int | str) -> int:
    """Bytes from an int or a string like "10GB", "100MB", "1.5GiB" (KB = 1000, KiB = 1024)."""
    if isinstance(value, bool):
        raise ValueError("expected a size, got a boolean")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    match = _SIZE_RE.match(str(value))
    unit = match.group(2).upper() if match else None
    if match is None or unit not in _SIZE_UNITS:
        raise ValueError(f"{value!r} is not a size (use bytes or a number with KB, MB, GB, TB, KiB…)")
    try:
        return int(float(match.group(1)) * _SIZE_UNITS[unit])
    except OverflowError:
        raise ValueError(f"{value!r} is too large to be a size") from None


def parse_duration(value: str) -> int:
    """Seconds from "30d", "12h", "15m" or "3600s"."""
    match = _DURATION_RE.match(value)
    if match is None:
        raise ValueError(f"{value!r} is not a duration (use a whole number with s, m, h or d, e.g. 30d)")
    seconds = int(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if seconds > MAX_DURATION_SECONDS:
        raise ValueError(f"{value!r} is longer than anything filekeeper keeps (at most 36500d, a hundred years)")
    return seconds


def format_size(n: int | None) -> str:
    """A short human size in decimal units, as the providers state their limits."""
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(size) < 1000 or unit == "TB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def format_duration(seconds: int) -> str:
    """The largest whole unit that says it exactly, as --ttl and --min-age take it: "48h", "30d"."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def utcnow() -> datetime:
    return datetime.now(UTC)


def parse_max_delete(value: str) -> int | str:
    """Validate ``--max-delete`` as N or N%; raises ValueError."""
    text = value.strip()
    # ASCII digits only: str.isdigit() also takes "²" and other digits int() cannot read.
    if re.fullmatch(r"[0-9]{1,9}", text):
        return int(text)
    if re.fullmatch(r"[0-9]{1,3}(\.[0-9]+)?%", text) and float(text[:-1]) <= 100:
        return text
    raise ValueError(f"--max-delete takes a whole number or a percentage from 0% to 100%, not {value!r}")
