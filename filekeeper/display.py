"""How values are shown to people: tables, percentages, times. One of each, for the CLI and the
text reports alike, so that the same number never reads two ways."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import datetime

# What must never reach a terminal or a mail as itself: C0 and C1 controls and DEL (ESC starts
# the sequences that retitle, clear or rewrite a terminal), and the bidirectional overrides that
# make text read other than it is. Filenames and provider messages come from anyone.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_UNSAFE_BUT_NEWLINE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
# What json.dumps(ensure_ascii=False) leaves as itself (it escapes C0 controls already).
_RAW_IN_JSON = re.compile("[\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    c = match.group()
    return _NAMED.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")


def printable(text: str, *, newlines: bool = False) -> str:
    r"""``text`` with every control character shown as an escape (``\x1b``, ``\n``), so that it
    prints as what it is; with ``newlines``, line breaks stay line breaks (for whole messages)."""
    return (_UNSAFE_BUT_NEWLINE if newlines else _UNSAFE).sub(_escape, text)


def json_safe(text: str) -> str:
    r"""Dumped JSON (``ensure_ascii=False``) with the characters json leaves raw but a terminal
    acts on (DEL, C1 controls, bidi overrides) written as ``\uXXXX``: the same JSON, the same
    data, safe to print."""
    return _RAW_IN_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell, two spaces apart, no trailing blanks; every cell
    printable (a filename's control characters are shown, not obeyed)."""
    headers = [printable(h) for h in headers]
    rows = [[printable(c) for c in r] for r in rows]
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


def when(d: datetime | None, *, local: bool = False) -> str:
    """A time to the minute that says its zone: UTC with a ``Z`` (``2026-12-01 08:51Z``), or with
    ``local`` this machine's time and offset (``2026-12-01 09:51+01:00``); "-" for none."""
    if d is None:
        return "-"
    if not local:
        return d.strftime("%Y-%m-%d %H:%MZ")
    mine = d.astimezone()
    offset = mine.strftime("%z")
    return mine.strftime("%Y-%m-%d %H:%M") + (f"{offset[:3]}:{offset[3:]}" if offset else "")


def ago(d: datetime | None, now: datetime) -> str:
    """How long ago, shortly: 3d, 5h, 12m, 40s ("-" for none)."""
    if d is None:
        return "-"
    seconds = max(0, int((now - d).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def fit(rows: Sequence[Sequence[str]], headers: Sequence[str], width: int) -> list[list[str]]:
    """The rows with their last column cut (with an ellipsis) so that each table line fits in
    ``width`` characters: a terminal shows long filenames cut, never wrapped."""
    if not rows:
        return [list(r) for r in rows]
    cells = [[printable(c) for c in r] for r in rows]
    head = [printable(h) for h in headers]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(head[:-1])]
    room = width - sum(widths) - 2 * len(widths)
    room = max(room, len(head[-1]), 8)
    for r in cells:
        if len(r[-1]) > room:
            r[-1] = r[-1][: room - 1] + "…"
    return cells
