"""How the command line shows what the library hands back: text for people, one function each.

Every value from outside (a filename, a provider's message) goes through :func:`printable`, so a
terminal shows it and never obeys it. Light on purpose: the CLI imports this at start-up.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .display import ago, fit, printable, table, used_of, when
from .units import format_duration, format_size

if TYPE_CHECKING:
    from .doctor import Diagnosis
    from .quota import Held
    from .reconcile_plan import ReconcilePlan
    from .records import AccountUsage, CheckResult, FileHistory, FileRecord

#: files listed per category of a reconcile plan before "… and N more"
PLAN_ROWS = 20


# --- usage -------------------------------------------------------------------------------------------


def usage(rows: Sequence[AccountUsage]) -> str:
    """``usage``: one row per account, and under it one per purpose that has limits of its own."""
    body: list[list[str]] = []
    for u in rows:
        body.append(
            [
                u.account,
                u.provider,
                used_of(u.files, u.limits.max_files),
                used_of(u.bytes, u.limits.max_total_bytes, format_size),
                retention(u),
            ]
        )
        for purpose, scoped in sorted(u.limits.by_purpose.items()):
            held = u.by_purpose.get(purpose)
            files, size = (held.files, held.bytes) if held is not None else (0, 0)
            body.append(
                [
                    f"  {purpose}",
                    "",
                    used_of(files, scoped.max_files),
                    used_of(size, scoped.max_total_bytes, format_size),
                    "",
                ]
            )
    return table(["ACCOUNT", "PROVIDER", "FILES", "BYTES", "RETENTION"], body)


def retention(u: AccountUsage) -> str:
    """How long files are kept: our policy, or the provider's own expiry where it comes first."""
    ours = f"{u.limits.retention_days}d" if u.limits.retention_days else "for ever"
    theirs = u.provider_expiry.get("*")
    if theirs is not None and (not u.limits.retention_days or theirs < u.limits.retention_days * 86400):
        return f"{format_duration(theirs)} (the provider deletes them)"
    extra = [f"{p}: {format_duration(sec)}" for p, sec in sorted(u.provider_expiry.items()) if p != "*"]
    return f"{ours} ({', '.join(extra)} by the provider)" if extra else ours


# --- files -------------------------------------------------------------------------------------------


def files_table(records: Sequence[FileRecord], *, local: bool = False, width: int | None = None) -> str:
    """``ls``: one row per record; with ``width`` (a terminal's), long filenames cut to fit."""
    headers = ["ID", "ACCOUNT", "STATUS", "SIZE", "CREATED", "EXPIRES", "FILENAME"]
    rows = [
        [
            r.id or f"(#{r.ledger_id})",
            r.account,
            r.status,
            format_size(r.bytes),
            when(r.created_at, local=local),
            when(r.expires_at, local=local),
            r.filename,
        ]
        for r in records
    ]
    return table(headers, fit(rows, headers, width) if width else rows)


def record_line(rec: FileRecord) -> str:
    """One uploaded (or reused) file, as ``upload`` prints it."""
    note = "  (already uploaded: reused)" if rec.reused else ""
    shown = f"{printable(rec.id or '')}  {printable(rec.filename)}  {format_size(rec.bytes)}"
    return f"{shown}  → {rec.account} ({rec.provider}){note}"


def show(h: FileHistory, *, local: bool = False) -> str:
    """``show``: the record, then every event about it, oldest first."""
    r = h.record
    lines = [
        f"{r.id or f'(#{r.ledger_id})'}  {printable(r.filename)}",
        f"  account   {r.account} ({r.provider})",
        f"  status    {r.status}",
        f"  size      {format_size(r.bytes)} ({r.bytes:,} bytes)",
        f"  purpose   {printable(r.purpose)}",
        f"  sha256    {r.sha256 or '-'}",
        f"  created   {when(r.created_at, local=local)}",
        f"  expires   {when(r.expires_at, local=local)}",
        f"  deleted   {when(r.deleted_at, local=local)}",
        f"  ledger id {r.ledger_id}",
        "",
        f"history ({len(h.events)} event(s), oldest first):",
    ]
    rows = []
    for e in h.events:
        at = datetime.fromisoformat(e.time.replace("Z", "+00:00")) if e.time else None
        rows.append([when(at, local=local), e.action, e.actor, _detail(e.detail)])
    lines.append(table(["TIME", "ACTION", "ACTOR", "DETAIL"], rows) if rows else "  (none)")
    return "\n".join(lines)


def _detail(detail: str) -> str:
    import json

    try:
        value = json.loads(detail)
    except ValueError:
        return detail
    if not isinstance(value, dict):
        return detail
    return ", ".join(f"{k}={v}" for k, v in value.items() if v not in (None, "", [], {}))[:200]


# --- check --------------------------------------------------------------------------------------------


def check(r: CheckResult, *, local: bool = False) -> str:
    a, limits = r.account, r.account.limits
    n, size = len(r.requests), sum(q.bytes for q in r.requests)
    lines = []
    if r.reused:
        lines.append(
            f"{len(r.reused)} file(s) already uploaded, would be reused: "
            + ", ".join(f"{printable(x.filename)} ({x.id})" for x in r.reused)
        )
    if r.twins:
        twins = printable(", ".join(r.twins))
        lines.append(f"{len(r.twins)} file(s) identical to another given here, sent once: {twins}")
    if r.ok:
        files_of = f"/{limits.max_files}" if limits.max_files is not None else ""
        bytes_of = f"/{format_size(limits.max_total_bytes)}" if limits.max_total_bytes is not None else ""
        lines.append(
            f"ok: {n} file(s), {format_size(size)}, fit in {a.name} ({a.provider}); "
            f"after upload {r.usage.files + n}{files_of} files, {format_size(r.usage.bytes + size)}{bytes_of}"
        )
        return "\n".join(lines)
    lines.append(f"refused: {n} file(s), {format_size(size)}, do not fit in {a.name} ({a.provider}):")
    lines += [f"  {v.limit}: {v.message}" for v in r.violations]
    if r.advice is not None and (r.advice.free_files or r.advice.free_bytes):
        lines += _advice(r, local)
    return "\n".join(lines)


def _advice(r: CheckResult, local: bool) -> list[str]:
    advice = r.advice
    assert advice is not None
    need = [
        f"{advice.free_files} file(s)" if advice.free_files else "",
        format_size(advice.free_bytes) if advice.free_bytes else "",
    ]
    lines = [f"to make room, free at least {' and '.join(x for x in need if x)}:"]
    now = datetime.now(UTC)

    def held_line(h: Held) -> str:
        word = "expired" if h.expired(now) else "expires"
        expires = f", {word} {when(h.expires_at, local=local)}" if h.expires_at else ""
        size = format_size(h.bytes)
        uploaded = when(h.created_at, local=local)
        return f"{printable(h.file_id)} ({printable(h.filename)}, {size}, uploaded {uploaded}{expires})"

    for title, held in (("expired files that could go", advice.expired), ("or the oldest files", advice.oldest)):
        if held:
            lines.append(f"  {title}:")
            lines += [f"    {held_line(h)}" for h in held[:10]]
            if len(held) > 10:
                lines.append(f"    … and {len(held) - 10} more")
    lines.append(
        f"  delete them with `filekeeper delete ID... --account {r.account.name}`, "
        "or upload with --evict expired|oldest"
    )
    return lines


# --- reconcile ----------------------------------------------------------------------------------------


def plan(r: ReconcilePlan, *, now: datetime | None = None) -> str:
    """A reconcile's plan (or what it did), category by category and file by file: id, name,
    size, age and why, up to :data:`PLAN_ROWS` each."""
    now = now or datetime.now(UTC)
    a = r.account
    lines = [f"reconcile {a.name} ({a.provider}): {r.listed:,} files listed at the provider"]
    if r.new_key_accepted:
        how = "the listing shows the files the ledger expects" if r.key == "rotated" else "--trust-key"
        lines.append(f"  a new API key or URL for this account, accepted: {how}")

    def remote_rows(title: str, files: Iterable[Any], why: str) -> None:
        _section(lines, title, ((f.id, f.filename, f.bytes, f.created_at, why) for f in files), now)

    def tracked_rows(title: str, files: Iterable[Any], why: str | None = None) -> None:
        items = ((t.file_id or f"#{t.ledger_id}", t.filename, t.bytes, t.created_at, why or "") for t in files)
        _section(lines, title, items, now)

    orphan_why = "unknown to the ledger: adopt as ours" if r.adopt else "unknown to the ledger: delete"
    remote_rows("orphans", r.orphans, orphan_why)
    unclaimed_why = "found before this ledger's first listing: " + (
        "adopt" if r.adopt else "delete" if r.delete_unclaimed else "keep (--adopt or --delete-unclaimed)"
    )
    acting = r.adopt or r.delete_unclaimed  # then the unclaimed recorded before are acted on too
    remote_rows(
        "unclaimed",
        itertools.chain(r.unclaimed_new, (rf for _, rf in r.unclaimed)) if acting else r.unclaimed_new,
        unclaimed_why,
    )
    kept = (
        f"kept {format_duration(r.account.generated_retention_days * 86400)} from now"
        if r.account.generated_retention_days
        else "kept for ever"
    )
    remote_rows("generated", r.generated_new, f"made by the provider: record, {kept}")
    tracked_rows("missing", r.missing, "proven gone at the provider: mark missing")
    _section(
        lines,
        "unconfirmed",
        [(t.file_id or "", t.filename, t.bytes, t.created_at, f"kept: {why}") for t, why in r.unconfirmed],
        now,
    )
    tracked_rows("reappeared", r.reappeared, "listed again: active again")
    tracked_rows("gone", r.gone, "unclaimed, left the provider")
    _section(
        lines,
        "expired",
        [
            (t.file_id or "", t.filename, t.bytes, t.created_at, _expired_why(t.file_id in r.expired_present))
            for t in r.expired
        ],
        now,
    )
    pending = [(t, f"landed as {rf.id}: settle") for t, rf in r.settled] + [
        (t, "never landed: mark failed") for t in r.failed_pending
    ]
    pending += [(t, "its purpose is not listed: left pending, look at the provider") for t in r.unknowable_pending]
    pending += [
        (
            t,
            f"could be any of {', '.join(printable(f.id) for f in rs)}: left pending, all kept"
            if len(rs) > 1
            else f"could be {printable(rs[0].id)}, not proven (its content was never sent whole): left pending, kept",
        )
        for t, rs in r.ambiguous_pending
    ]
    _section(
        lines,
        "pending",
        [(t.file_id or f"#{t.ledger_id}", t.filename, t.bytes, t.created_at, w) for t, w in pending],
        now,
    )
    _section(
        lines,
        "drift",
        [
            (t.file_id or "", t.filename, t.bytes, t.created_at, f"provider: {printable(rf.filename)}, {rf.bytes} B")
            for t, rf in r.drift
        ],
        now,
    )
    journal = [(i.file_id, "", None, i.at, f"deleted ({i.kind}), never recorded: record it") for i in r.intents_done]
    _section(lines, "journal", journal, now)
    waiting = "reservation younger than --min-age"
    lagging = "uploaded a moment ago, not listed yet: kept"
    held = itertools.chain(
        ((f.id, f.filename, f.bytes, f.created_at, "younger than --min-age: left alone") for f in r.young),
        ((t.file_id or f"#{t.ledger_id}", t.filename, t.bytes, t.created_at, waiting) for t in r.waiting_pending),
        ((t.file_id or "", t.filename, t.bytes, t.created_at, lagging) for t in r.not_yet_listed),
    )
    _section(lines, "held back", held, now)
    if not r.applied:
        adopting = f", {r.to_adopt} to adopt" if r.adopt else ""
        lines.append(
            f"plan only: run with --apply to act ({r.to_delete} deletion(s) at most{adopting}; "
            f"--max-delete {r.max_delete})"
        )
        return "\n".join(lines)
    lines.append(
        f"applied (run #{r.run_id}): deleted {len(r.deleted)}, adopted {len(r.adopted)}, "
        f"skipped {len(r.skipped)}, errors {len(r.errors)}"
    )
    for file_id, why in r.skipped[:PLAN_ROWS]:
        lines.append(f"    skipped {file_id}: {why}")
    if len(r.skipped) > PLAN_ROWS:
        lines.append(f"    … and {len(r.skipped) - PLAN_ROWS} more skipped")
    if r.interrupted:
        left = max(r.to_delete - len(r.deleted) - len(r.errors), 0)
        lines.append(
            f"  interrupted (SIGINT/SIGTERM): stopped after {len(r.deleted)} delete(s), each recorded; "
            f"{left} not deleted: run again to finish"
        )
    return "\n".join(lines)


def _expired_why(at_provider: bool) -> str:
    return "past expiry: delete" if at_provider else "past expiry, gone: mark expired"


Row = tuple[str, str, "int | None", "datetime | None", str]


def _section(lines: list[str], title: str, items: Iterable[Row], now: datetime) -> None:
    import heapq

    count = 0

    def counted() -> Iterator[Row]:
        nonlocal count
        for item in items:
            count += 1
            yield item

    # Oldest first, then by name: the same plan reads the same whatever order the provider lists in.
    # One pass that keeps only the rows shown (as sorted()[:n] would pick them): a category may
    # hold a million files, read back from the staged listing.
    latest = datetime.max.replace(tzinfo=UTC)
    ordered = heapq.nsmallest(PLAN_ROWS, counted(), key=lambda i: (i[3] or latest, i[1], i[0]))
    if not count:
        return
    lines.append(f"  {title} ({count}):")
    rows = [
        ["   " + file_id, printable(name) or "-", format_size(size), ago(created, now), why]
        for file_id, name, size, created, why in ordered
    ]
    lines.append(table(["   ID", "NAME", "SIZE", "AGE", "WHY"], rows))
    if count > PLAN_ROWS:
        lines.append(f"    … and {count - PLAN_ROWS} more")


# --- doctor ---------------------------------------------------------------------------------------------


def _limit(name: str, value: int | None) -> str:
    if value is None:
        return "unlimited"
    if name == "retention_days":
        return "keep for ever" if value == 0 else f"{value} days"
    return format_size(value) if "bytes" in name else str(value)


def doctor(d: Diagnosis) -> str:
    lines = [
        f"config    {d.config_path}" + ("" if d.config_exists else "  (no such file: built-in settings only)"),
        f"home      {d.home}",
        f"ledger    {d.ledger}",
        f"schema    {d.ledger_state}"
        + (f" (revision {d.ledger_revision}, head {d.ledger_head})" * bool(d.ledger_head)),
    ]
    if not d.accounts:
        lines.append("accounts  none: set a provider's API key (e.g. OPENAI_API_KEY) or configure one in config.toml")
    for c in d.accounts:
        a = c.account
        key = f"set ({c.key_fingerprint})" if c.key_fingerprint else (c.key_problem or "not set")
        variable = a.key_variable if c.key_fingerprint else a.api_key_env  # the one read, or to set
        lines += [
            "",
            f"account {a.name} ({a.provider})" + ("" if c.in_ledger else "  (not in the ledger yet)"),
            f"  base URL        {a.base_url}   [{a.sources.get('base_url', 'built-in')}]",
            f"  key             {variable}: {key}",
        ]
        if a.api_key_fallbacks:
            others = [n for n in a.key_variables if n != variable]
            lines.append(f"                  (or {', '.join(others)}, which the provider's SDK reads)")
        limits = a.limits
        for name, value in (
            ("max_files", limits.max_files),
            ("max_total_bytes", limits.max_total_bytes),
            ("max_file_bytes", limits.max_file_bytes),
            ("retention_days", limits.retention_days),
        ):
            shown = _limit(name, value)
            if name == "retention_days" and not value and "*" in a.provider_expiry:
                shown = "none of ours: the provider's own expiry (below) comes first"
            lines.append(f"  {name:<15} {shown}   [{a.sources.get(name, 'built-in')}]")
        for purpose, scoped in sorted(limits.by_purpose.items()):
            own = ", ".join(f"{k} {_limit(k, v)}" for k, v in scoped.as_dict().items() if v is not None)
            lines.append(
                f"  purpose {purpose:<7} {own or 'no limits of its own'}   "
                f"[{a.sources.get('purpose_limits', 'built-in')}]"
            )
        if limits.by_format:
            caps: dict[int, list[str]] = {}
            for fmt, cap in sorted(limits.by_format.items()):
                caps.setdefault(cap, []).append(fmt)
            for cap, fmts in sorted(caps.items()):
                lines.append(f"  per file, .{fmts[0]:<4}  {format_size(cap)} (and {' '.join(fmts[1:])})   [built-in]")
        for purpose, seconds in sorted(a.provider_expiry.items()):
            which = "every file" if purpose == "*" else f"{purpose} files"
            lines.append(f"  {'provider expiry':<15} {which} after {format_duration(seconds)}, by the provider itself")
        for name, values in (("purposes", a.rules.purposes), ("formats", a.rules.formats)):
            shown = "any" if values is None else ", ".join(sorted(values)) or "none (its files have no purpose)"
            if len(shown) > 60:
                shown = shown[:59] + "…"
            lines.append(f"  {name:<15} {shown}   [{a.sources.get(name, 'built-in')}]")
        generated = a.generated_retention_days
        lines.append(
            f"  {'generated files':<15} kept {generated} days"
            if generated
            else f"  {'generated files':<15} kept for ever"
        )
        if c.online is not None:
            lines.append(f"  online          {printable(c.online)}")
    problems = d.problems
    lines += ["", "ok: nothing looks wrong" if not problems else f"{len(problems)} problem(s):"]
    lines += [f"  - {printable(p)}" for p in problems]
    return "\n".join(lines)
