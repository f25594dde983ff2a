"""The audit report: its shape (:class:`AuditReport`, :class:`EventOut`) and its formats, table and
Markdown summaries, JSON, CSV and a self-contained HTML page.

Light on purpose (no database here: :mod:`filekeeper.reports` gathers a report from the ledger),
so that the CLI can read the registry at start-up. :data:`FORMATS` is the one registry: the CLI's
``--format`` choices and ``-o`` suffixes come from it, and every format renders with the same
signature, ``render(query, out)``, so a script can produce any of them. CSV and JSON stream the
events as they come from the database; nothing here holds them all.
"""

from __future__ import annotations

import csv
import html
import json
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any, Protocol, TextIO

from .display import json_safe, percent, printable, table, used_of, when
from .errors import UsageError
from .profiles import Limits
from .records import FileRecord, iso
from .units import format_size


class ReportSource(Protocol):
    """What a renderer asks of a report (:class:`filekeeper.reports.ReportSource` is one): the
    summary, and the period's events, streamed."""

    def summary(self) -> AuditReport: ...

    def events(self, *, newest_first: int | None = None) -> Iterator[EventOut]: ...


#: the JSON report's schema; bumped on any incompatible change
SCHEMA = "filekeeper.report/1"
#: the CSV's columns (and the JSON events' keys), in order
EVENT_COLUMNS = ("time", "actor", "pid", "account", "provider", "file_id", "filename", "action", "detail")
#: the daily figures, in order
DAILY_COLUMNS = (
    "uploads",
    "bytes_uploaded",
    "reused",
    "refused",
    "deletes",
    "expiries",
    "orphans_found",
    "orphans_deleted",
    "adopted",
    "missing",
    "failures",
    "generated",
    "unclaimed",
)


@dataclass
class AccountNow:
    """One account as it stands: usage against limits and the files worth a look."""

    account: str
    provider: str
    files: int
    bytes: int
    limits: Limits
    expiring: list[FileRecord] = field(default_factory=list)
    largest: list[FileRecord] = field(default_factory=list)
    pending: list[FileRecord] = field(default_factory=list)
    failed: list[FileRecord] = field(default_factory=list)
    missing: list[FileRecord] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # files per status
    #: files the provider made (batch results), kept for their own retention
    generated: list[FileRecord] = field(default_factory=list)
    #: files found by a ledger that never tracked the account: someone else's until adopted
    unclaimed: list[FileRecord] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        lim = self.limits
        return {
            "account": self.account,
            "provider": self.provider,
            "files": self.files,
            "bytes": self.bytes,
            "limits": lim.as_dict(),
            "percent": {
                "files": percent(self.files, lim.max_files),
                "bytes": percent(self.bytes, lim.max_total_bytes),
            },
            "headroom": {
                "files": None if lim.max_files is None else lim.max_files - self.files,
                "bytes": None if lim.max_total_bytes is None else lim.max_total_bytes - self.bytes,
            },
            "statuses": self.counts,
            "expiring_7d": [r.to_json() for r in self.expiring],
            "largest": [r.to_json() for r in self.largest],
            "pending": [r.to_json() for r in self.pending],
            "failed": [r.to_json() for r in self.failed],
            "missing": [r.to_json() for r in self.missing],
            "generated": [r.to_json() for r in self.generated],
            "unclaimed": [r.to_json() for r in self.unclaimed],
        }


@dataclass
class AuditReport:
    """The audit summary of a period: accounts now, activity by day and by actor, reconcile runs."""

    generated_at: datetime
    since: datetime
    until: datetime
    accounts: list[AccountNow]
    #: (day, account) -> figures; refusals by limit under "refused_by"
    daily: dict[tuple[date, str], dict[str, Any]]
    runs: list[dict[str, Any]]
    #: account -> [(day, files held, bytes held)] at the end of each day of the period
    usage: dict[str, list[tuple[date, int, int]]]
    #: who did what in the period: {actor, account, uploads, bytes_uploaded, reused, refused, deletes}
    actors: list[dict[str, Any]] = field(default_factory=list)

    def summary_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "generated_at": iso(self.generated_at),
            "period": {"since": iso(self.since), "until": iso(self.until)},
            "accounts": [a.to_json() for a in self.accounts],
            "daily": [
                {"date": d.isoformat(), "account": acct, **figures} for (d, acct), figures in sorted(self.daily.items())
            ],
            "reconcile_runs": self.runs,
            "usage": {
                acct: [{"date": d.isoformat(), "files": n, "bytes": b} for d, n, b in series]
                for acct, series in self.usage.items()
            },
            "actors": self.actors,
        }


@dataclass(frozen=True)
class EventOut:
    time: str
    actor: str
    pid: int
    account: str | None
    provider: str | None
    file_id: str | None
    filename: str | None
    action: str
    detail: str  # JSON text, as stored

    def row(self) -> list[Any]:
        return [
            self.time,
            self.actor,
            self.pid,
            self.account,
            self.provider,
            self.file_id,
            self.filename,
            self.action,
            self.detail,
        ]

    def to_json(self) -> dict[str, Any]:
        return {**dict(zip(EVENT_COLUMNS[:-1], self.row()[:-1], strict=True)), "detail": json.loads(self.detail)}


@dataclass(frozen=True)
class FileHistory:
    """``filekeeper show``: one file's record and every event about it, oldest first."""

    record: FileRecord
    events: list[EventOut]

    def to_json(self) -> dict[str, Any]:
        return {**self.record.to_json(), "events": [e.to_json() for e in self.events]}


def summarize_refusals(daily: dict[tuple[date, str], dict[str, Any]]) -> Counter[str]:
    total: Counter[str] = Counter()
    for figures in daily.values():
        total.update(figures["refused_by"])
    return total


#: what starts a formula in a spreadsheet (OWASP's list): such a cell is written behind a quote
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")


def neutralise(cell: Any) -> Any:
    """A CSV cell a spreadsheet shows as text: one that could start a formula (``=HYPERLINK(...)``
    as a filename) gets a leading ``'``; so does one that starts with ``'`` already, so that
    :func:`restore` gives back exactly what was written."""
    return "'" + cell if isinstance(cell, str) and cell.startswith(_FORMULA_START) else cell


def restore(cell: str) -> str:
    """The value :func:`neutralise` wrote."""
    return cell[1:] if cell.startswith("'") and cell[1:].startswith(_FORMULA_START) else cell


def write_csv(events: Iterable[EventOut], out: TextIO) -> int:
    """One row per event under a header row; RFC 4180 quoting and CRLF line ends, every cell safe
    to open in a spreadsheet (:func:`neutralise`). Returns the count."""
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(EVENT_COLUMNS)
    count = 0
    for e in events:
        writer.writerow([neutralise(c) for c in e.row()])
        count += 1
    return count


def read_csv(rows: Iterable[list[str]]) -> Iterator[dict[str, str]]:
    """The events of a CSV :func:`write_csv` wrote, as written (header checked)."""
    it = iter(rows)
    header = next(it, None)
    if header is None or tuple(header) != EVENT_COLUMNS:
        raise UsageError(f"not a filekeeper events CSV (its first row must be {', '.join(EVENT_COLUMNS)})")
    for row in it:
        if len(row) != len(EVENT_COLUMNS):
            raise UsageError(f"not a filekeeper events CSV: a row has {len(row)} fields, not {len(EVENT_COLUMNS)}")
        yield dict(zip(EVENT_COLUMNS, (restore(c) for c in row), strict=True))


def write_json(report: AuditReport, events: Iterable[EventOut], out: TextIO) -> None:
    """The summary and every event as one document (schema :data:`SCHEMA`), events streamed."""
    head = json_safe(json.dumps(report.summary_json(), ensure_ascii=False, indent=2))
    out.write(head[:-2] + ',\n  "events": [')
    for i, e in enumerate(events):
        out.write(("\n    " if i == 0 else ",\n    ") + json_safe(json.dumps(e.to_json(), ensure_ascii=False)))
    out.write("\n  ]\n}\n")


# --- text summaries -------------------------------------------------------------------------------


def _headroom(a: AccountNow) -> str:
    lim = a.limits
    files = "∞" if lim.max_files is None else str(lim.max_files - a.files)
    size = "∞" if lim.max_total_bytes is None else format_size(lim.max_total_bytes - a.bytes)
    return f"{files} files, {size}"


def _sections(report: AuditReport) -> list[tuple[str, list[str], list[list[str]]]]:
    """Every summary table as (title, headers, rows): the one layout table, md and html share."""
    now_rows = [
        [
            a.account,
            a.provider,
            used_of(a.files, a.limits.max_files),
            used_of(a.bytes, a.limits.max_total_bytes, format_size),
            _headroom(a),
            str(len(a.expiring)),
            str(len(a.pending)),
            str(a.counts.get("failed", 0)),
            str(a.counts.get("missing", 0)),
        ]
        for a in report.accounts
    ]
    out = [
        (
            "Now",
            ["account", "provider", "files", "bytes", "headroom", "expiring in 7 days", "pending", "failed", "missing"],
            now_rows,
        )
    ]
    file_headers = ["id", "filename", "size", "status", "uploaded", "expires"]

    def file_rows(records: list[FileRecord]) -> list[list[str]]:
        return [
            [
                r.id or f"(#{r.ledger_id})",
                r.filename,
                format_size(r.bytes),
                r.status,
                when(r.created_at),
                when(r.expires_at),
            ]
            for r in records
        ]

    for a in report.accounts:
        for title, records in (
            ("expiring within 7 days", a.expiring),
            ("largest files", a.largest),
            ("pending reservations", a.pending),
            ("failed", a.failed),
            ("missing", a.missing),
            ("made by the provider", a.generated),
            ("unclaimed (someone else's until adopted)", a.unclaimed),
        ):
            if records:
                out.append((f"{a.account}: {title}", file_headers, file_rows(records)))
    daily_rows = []
    for (day, account), f in sorted(report.daily.items()):
        refused = str(f["refused"]) + (
            " (" + ", ".join(f"{k} {v}" for k, v in sorted(f["refused_by"].items())) + ")" if f["refused_by"] else ""
        )
        daily_rows.append(
            [
                day.isoformat(),
                account,
                str(f["uploads"]),
                format_size(f["bytes_uploaded"]),
                str(f["reused"]),
                refused,
                str(f["deletes"]),
                str(f["expiries"]),
                f"{f['orphans_found']}/{f['orphans_deleted']}",
                str(f["adopted"]),
                str(f["missing"]),
                str(f["failures"]),
                str(f["generated"]),
                str(f["unclaimed"]),
            ]
        )
    out.append(
        (
            "By day",
            [
                "date",
                "account",
                "uploads",
                "bytes uploaded",
                "reused",
                "refused",
                "deletes",
                "expiries",
                "orphans found/deleted",
                "adopted",
                "missing",
                "failures",
                "generated",
                "unclaimed",
            ],
            daily_rows,
        )
    )
    out.append(
        (
            "By actor",
            [
                "actor",
                "account",
                "uploads",
                "bytes uploaded",
                "reused",
                "refused",
                "deletes",
                "expiries",
                "orphans deleted",
            ],
            [
                [
                    a["actor"],
                    a["account"],
                    str(a["uploads"]),
                    format_size(a["bytes_uploaded"]),
                    str(a["reused"]),
                    str(a["refused"]),
                    str(a["deletes"]),
                    str(a["expiries"]),
                    str(a["orphans_deleted"]),
                ]
                for a in report.actors
            ],
        )
    )
    run_rows = [
        [
            f"#{r['id']}",
            r["account"],
            r["started_at"] or "-",
            r["status"],
            str(r["listed"] or 0),
            str(r["deleted"]),
            str(r["adopted"]),
            str(r["missing"]),
            r["outcome"] or r["error"] or "-",
        ]
        for r in report.runs
    ]
    out.append(
        (
            "Reconcile runs",
            ["run", "account", "started", "status", "listed", "deleted", "adopted", "missing", "outcome"],
            run_rows,
        )
    )
    return out


def _title(report: AuditReport) -> str:
    return (
        f"filekeeper report: {report.since:%Y-%m-%d} to {report.until:%Y-%m-%d} "
        f"(generated {report.generated_at:%Y-%m-%d %H:%M} UTC)"
    )


def render_table(report: AuditReport) -> str:
    lines = [_title(report)]
    for title, headers, rows in _sections(report):
        lines += ["", title]
        if not rows:
            lines.append("  (none)")
            continue
        lines.append(table([h.upper() for h in headers], rows))
    refusals = summarize_refusals(report.daily)
    if refusals:
        lines += ["", "Refusals by limit: " + ", ".join(f"{k} {v}" for k, v in refusals.most_common())]
    return "\n".join(lines) + "\n"


def _md_cell(text: str) -> str:
    return printable(text).replace("|", "\\|")


def render_md(report: AuditReport) -> str:
    lines = [f"# {_title(report)}"]
    for title, headers, rows in _sections(report):
        lines += ["", f"## {title}", ""]
        if not rows:
            lines.append("_none_")
            continue
        lines.append("| " + " | ".join(headers) + " |")
        lines.append("|" + "---|" * len(headers))
        lines += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows]
    refusals = summarize_refusals(report.daily)
    if refusals:
        lines += ["", "Refusals by limit: " + ", ".join(f"`{k}` {v}" for k, v in refusals.most_common())]
    return "\n".join(lines) + "\n"


# --- HTML -----------------------------------------------------------------------------------------

SERIES_COLOURS = {"files": "#2563eb", "bytes": "#059669", "limit": "#dc2626"}
# Fits windows from about 1,000 px wide without sideways scrolling: tables take the page's width
# and break long tokens, charts shrink, names are cut with an ellipsis (the whole name in a tooltip).
_CSS = """
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1rem auto;padding:0 1rem;
color:#111827;max-width:1200px}
h1{font-size:1.4rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #e5e7eb;padding-bottom:.3rem}
table{border-collapse:collapse;margin:.5rem 0 1rem;font-size:12px;width:100%;table-layout:auto}
th,td{border:1px solid #e5e7eb;padding:.2rem .35rem;text-align:left;vertical-align:top;overflow-wrap:anywhere}
th{background:#f3f4f6}td.num{text-align:right}.charts{display:flex;flex-wrap:wrap;gap:1rem}
td.name{max-width:16em;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
td.detail{max-width:24em;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
figure{margin:0;border:1px solid #e5e7eb;padding:.5rem;max-width:100%}figure svg{max-width:100%;height:auto}
figcaption{font-size:12px;color:#4b5563}
.legend span{display:inline-block;margin-right:1rem}.swatch{display:inline-block;width:12px;height:3px;
vertical-align:middle;margin-right:4px}
"""

#: columns whose cells are cut to fit, the whole value in a tooltip
_CUT = {"filename": "name", "name": "name", "detail": "detail"}


def _cell(header: str, value: str, e: Callable[[str], str]) -> str:
    kind = _CUT.get(header.lower())
    if kind is None:
        return f"<td>{e(value)}</td>"
    return f'<td class="{kind}" title="{e(value)}">{e(value)}</td>'


def _chart(account: str, kind: str, series: list[tuple[date, int]], limit: int | None) -> str:
    """An inline SVG line chart of one series against its limit line."""
    width, height, pad = 560, 180, 36
    values = [v for _, v in series]
    top = max([*values, limit or 0, 1]) * 1.1
    n = max(len(series) - 1, 1)

    def x(i: int) -> float:
        return pad + i * (width - 2 * pad) / n

    def y(v: float) -> float:
        return height - pad + 0 - (v / top) * (height - 2 * pad)

    points = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(values))
    label = format_size if kind == "bytes" else str
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="{html.escape(account)} {kind} held per day" data-account="{html.escape(account)}" '
        f'data-kind="{kind}">',
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>',
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="#9ca3af"/>',
        f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="#9ca3af"/>',
        f'<text x="{pad}" y="{pad - 8}" font-size="11" fill="#374151">{html.escape(label(round(top / 1.1)))}</text>',
    ]
    if limit is not None:
        parts.append(
            f'<line class="limit" data-series="limit" x1="{pad}" y1="{y(limit):.1f}" x2="{width - pad}" '
            f'y2="{y(limit):.1f}" stroke="{SERIES_COLOURS["limit"]}" stroke-width="2" stroke-dasharray="6 4"/>'
        )
    parts.append(
        f'<polyline class="series" data-series="{kind}" points="{points}" fill="none" '
        f'stroke="{SERIES_COLOURS[kind]}" stroke-width="3" stroke-linejoin="round"/>'
    )
    if series:
        parts.append(f'<text x="{pad}" y="{height - 10}" font-size="11" fill="#374151">{series[0][0]}</text>')
        parts.append(
            f'<text x="{width - pad}" y="{height - 10}" font-size="11" fill="#374151" text-anchor="end">'
            f"{series[-1][0]}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def render_html(report: AuditReport, recent: list[EventOut]) -> str:
    def e(text: str) -> str:  # every value shown as text, control characters as escapes
        return html.escape(printable(text))

    body = [f"<h1>{e(_title(report))}</h1>"]
    body.append("<h2>Usage over time</h2>")
    legend = "".join(
        f'<span><i class="swatch" style="background:{c}"></i>{k}</span>' for k, c in SERIES_COLOURS.items()
    )
    body.append(f'<p class="legend">{legend}</p>')
    for a in report.accounts:
        series = report.usage.get(a.account, [])
        body.append(f'<h3>{e(a.account)} ({e(a.provider)})</h3><div class="charts">')
        for kind, limit in (("files", a.limits.max_files), ("bytes", a.limits.max_total_bytes)):
            values = [(d, n if kind == "files" else b) for d, n, b in series]
            caption = f"{kind} held at the end of each day" + ("" if limit is None else f"; limit {limit:,}")
            body.append(
                f"<figure>{_chart(a.account, kind, values, limit)}<figcaption>{e(caption)}</figcaption></figure>"
            )
        body.append("</div>")
    for title, headers, rows in _sections(report):
        body.append(f"<h2>{e(title)}</h2>")
        if not rows:
            body.append("<p><em>none</em></p>")
            continue
        body.append("<table><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in headers) + "</tr></thead><tbody>")
        body += ["<tr>" + "".join(_cell(h, c, e) for h, c in zip(headers, r, strict=True)) + "</tr>" for r in rows]
        body.append("</tbody></table>")
    refusals = summarize_refusals(report.daily)
    if refusals:
        body.append("<p>Refusals by limit: " + e(", ".join(f"{k} {v}" for k, v in refusals.most_common())) + "</p>")
    body.append(f"<h2>Latest events ({len(recent)})</h2>")
    body.append("<table><thead><tr>" + "".join(f"<th>{c}</th>" for c in EVENT_COLUMNS) + "</tr></thead><tbody>")
    body += [
        "<tr>"
        + "".join(_cell(h, "" if c is None else str(c), e) for h, c in zip(EVENT_COLUMNS, ev.row(), strict=True))
        + "</tr>"
        for ev in recent
    ]
    body.append("</tbody></table>")
    body.append(f'<p style="color:#6b7280;font-size:12px">schema {SCHEMA}; generated by filekeeper</p>')
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{e(_title(report))}</title><style>{_CSS}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


# --- the registry ---------------------------------------------------------------------------------


def _render_table(query: ReportSource, out: TextIO) -> None:
    out.write(render_table(query.summary()))


def _render_md(query: ReportSource, out: TextIO) -> None:
    out.write(render_md(query.summary()))


def _render_json(query: ReportSource, out: TextIO) -> None:
    write_json(query.summary(), query.events(), out)


def _render_csv(query: ReportSource, out: TextIO) -> None:
    write_csv(query.events(), out)


def _render_html(query: ReportSource, out: TextIO) -> None:
    out.write(render_html(query.summary(), list(query.events(newest_first=100))))


@dataclass(frozen=True)
class Format:
    name: str
    #: file name endings that choose this format for ``-o FILE``
    suffixes: tuple[str, ...]
    render: Callable[[ReportSource, TextIO], None]


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format("table", (".txt",), _render_table),
        Format("md", (".md",), _render_md),
        Format("json", (".json",), _render_json),
        Format("csv", (".csv",), _render_csv),
        Format("html", (".html", ".htm"), _render_html),
    )
}


def infer_format(fmt: str | None, output: Path | None, *, terminal: bool) -> str:
    """The format asked for; else the one ``output``'s suffix names; else table on a terminal, json otherwise."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise UsageError(f"unknown report format {fmt!r} (choose from {', '.join(FORMATS)})")
        return fmt
    if output is not None:
        suffix = output.suffix.lower()
        for f in FORMATS.values():
            if suffix in f.suffixes:
                return f.name
        suffixes = ", ".join(s for f in FORMATS.values() for s in f.suffixes)
        raise UsageError(f"cannot tell the report format from {output.name!r}: name it {suffixes}, or give --format")
    return "table" if terminal else "json"


def write_report(query: ReportSource, fmt: str, output: Path | None = None, stdout: TextIO | None = None) -> None:
    """Render ``query`` as ``fmt`` to ``stdout``, or to ``output``. A file is written aside and
    renamed over it (a report that fails half-way leaves no half a file), readable by its owner
    only: it names every file and who sent it. What is not a plain file (``/dev/stdout``, a pipe,
    a device) is written into as it is, never replaced; a symbolic link is followed."""
    import os
    import stat

    render = FORMATS[fmt].render
    if output is None:
        render(query, stdout or sys.stdout)
        return
    try:
        # Through any link, /proc's too: /dev/stdout is /proc/self/fd/1, whose target (a pipe's
        # "pipe:[N]") is no path, so resolving it names a file that is not there.
        mode = output.stat().st_mode if output.exists() else None
    except OSError as e:
        raise UsageError(f"cannot write {output}: {e.strerror}") from None
    if mode is not None and stat.S_ISDIR(mode):
        raise UsageError(f"{output} is a directory; give the report's file name")
    if mode is not None and not stat.S_ISREG(mode):
        try:
            with open(output, "w", encoding="utf-8", newline="") as out:
                render(query, out)
        except OSError as e:
            raise UsageError(f"cannot write {output}: {e.strerror}") from None
        return
    target = output.resolve() if output.is_symlink() else output
    partial = target.with_name(target.name + ".partial")
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as out:
            render(query, out)
        partial.replace(target)
    except OSError as e:
        partial.unlink(missing_ok=True)
        raise UsageError(f"cannot write {output}: {e.strerror}") from None
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
