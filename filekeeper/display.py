"""How values are shown to people: tables, percentages, times. One of each, for the CLI and the
text reports alike, so that the same number never reads two ways."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell, two spaces apart, no trailing blanks."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def percent(used: int, limit: int | None) -> float | None:
    """Share of a limit in use, rounded to one decimal (None: no limit, or a limit of 0)."""
    return None if not limit else round(100 * used / limit, 1)


def used_of(used: int, limit: int | None, fmt: Callable[[int], str] = str) -> str:
    """ "3 / 5 (60.0%)", or "3 (no limit)"."""
    if limit is None:
        return f"{fmt(used)} (no limit)"
    share = percent(used, limit)
    return f"{fmt(used)} / {fmt(limit)} ({share}%)" if share is not None else f"{fmt(used)} / {fmt(limit)}"


def when(d: datetime | None) -> str:
    """A time to the minute, or "-"."""
    return "-" if d is None else d.strftime("%Y-%m-%d %H:%M")
