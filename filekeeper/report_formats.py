"""The audit report's formats: table and Markdown summaries, JSON, CSV and a self-contained HTML page.

CSV and JSON stream the events as they come from the database; nothing here holds them all.
"""

from __future__ import annotations

import csv
import html
import json
from collections.abc import Iterable
from datetime import date
from typing import Any, TextIO

from .ledger import FileRecord
from .reports import EVENT_COLUMNS, SCHEMA, AccountNow, EventOut, Report, summarize_refusals
from .units import format_size


def write_csv(events: Iterable[EventOut], out: TextIO) -> int:
    """One row per event under a header row; RFC 4180 quoting and CRLF line ends. Returns the count."""
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(EVENT_COLUMNS)
    count = 0
    for e in events:
        writer.writerow(e.row())
        count += 1
    return count


def write_json(report: Report, events: Iterable[EventOut], out: TextIO) -> None:
    """The summary and every event as one document (schema :data:`SCHEMA`), events streamed."""
    head = json.dumps(report.summary_json(), ensure_ascii=False, indent=2)
    out.write(head[:-2] + ',\n  "events": [')
    for i, e in enumerate(events):
        out.write(("\n    " if i == 0 else ",\n    ") + json.dumps(e.to_json(), ensure_ascii=False))
    out.write("\n  ]\n}\n")


# --- text summaries -------------------------------------------------------------------------------


def _pct(used: int, limit: int | None, fmt: Any = str) -> str:
    if limit is None:
        return f"{fmt(used)} (no limit)"
    return f"{fmt(used)} / {fmt(limit)} ({100 * used / limit:.1f}%)" if limit else f"{fmt(used)} / 0"


def _headroom(a: AccountNow) -> str:
    lim = a.limits
    files = "∞" if lim.max_files is None else str(lim.max_files - a.files)
    size = "∞" if lim.max_total_bytes is None else format_size(lim.max_total_bytes - a.bytes)
    return f"{files} files, {size}"


def _when(record: FileRecord, attr: str) -> str:
    value = getattr(record, attr)
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M")


def _sections(report: Report) -> list[tuple[str, list[str], list[list[str]]]]:
    """Every summary table as (title, headers, rows): the one layout table, md and html share."""
    now_rows = [
        [
            a.account,
            a.provider,
            _pct(a.files, a.limits.max_files),
            _pct(a.bytes, a.limits.max_total_bytes, format_size),
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
                _when(r, "created_at"),
                _when(r, "expires_at"),
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
            ],
            daily_rows,
        )
    )
    out.append(
        (
            "By actor",
            ["actor", "account", "uploads", "bytes uploaded", "reused", "refused", "deletes"],
            [
                [
                    a["actor"],
                    a["account"],
                    str(a["uploads"]),
                    format_size(a["bytes_uploaded"]),
                    str(a["reused"]),
                    str(a["refused"]),
                    str(a["deletes"]),
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


def _title(report: Report) -> str:
    return (
        f"filekeeper report: {report.since:%Y-%m-%d} to {report.until:%Y-%m-%d} "
        f"(generated {report.generated_at:%Y-%m-%d %H:%M} UTC)"
    )


def render_table(report: Report) -> str:
    lines = [_title(report)]
    for title, headers, rows in _sections(report):
        lines += ["", title]
        if not rows:
            lines.append("  (none)")
            continue
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
        lines.append("  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    refusals = summarize_refusals(report.daily)
    if refusals:
        lines += ["", "Refusals by limit: " + ", ".join(f"{k} {v}" for k, v in refusals.most_common())]
    return "\n".join(lines) + "\n"


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_md(report: Report) -> str:
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
_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem;color:#111827;max-width:1200px}
h1{font-size:1.4rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #e5e7eb;padding-bottom:.3rem}
table{border-collapse:collapse;margin:.5rem 0 1rem;font-size:13px}
th,td{border:1px solid #e5e7eb;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f3f4f6}td.num{text-align:right}.charts{display:flex;flex-wrap:wrap;gap:1rem}
figure{margin:0;border:1px solid #e5e7eb;padding:.5rem}figcaption{font-size:12px;color:#4b5563}
.legend span{display:inline-block;margin-right:1rem}.swatch{display:inline-block;width:12px;height:3px;
vertical-align:middle;margin-right:4px}
"""


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


def render_html(report: Report, recent: list[EventOut]) -> str:
    e = html.escape
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
        body += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows]
        body.append("</tbody></table>")
    refusals = summarize_refusals(report.daily)
    if refusals:
        body.append("<p>Refusals by limit: " + e(", ".join(f"{k} {v}" for k, v in refusals.most_common())) + "</p>")
    body.append(f"<h2>Latest events ({len(recent)})</h2>")
    body.append("<table><thead><tr>" + "".join(f"<th>{c}</th>" for c in EVENT_COLUMNS) + "</tr></thead><tbody>")
    body += [
        "<tr>" + "".join(f"<td>{e('' if c is None else str(c))}</td>" for c in ev.row()) + "</tr>" for ev in recent
    ]
    body.append("</tbody></table>")
    body.append(f'<p style="color:#6b7280;font-size:12px">schema {SCHEMA}; generated by filekeeper</p>')
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{e(_title(report))}</title><style>{_CSS}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )
