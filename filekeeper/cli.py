"""The ``filekeeper`` command: parse the arguments, call :class:`filekeeper.Keeper`, render the result.

No business logic here. Start-up stays light: SQLAlchemy is imported when a command first opens
the ledger, httpx only by the commands that talk to a provider, alembic only to create or
upgrade the ledger.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from ._version import __version__
from .config import load_settings
from .display import json_safe, printable, table, used_of, when
from .errors import EXIT_FAILURE, EXIT_QUOTA, FilekeeperError, QuotaExceeded, UsageError, exit_code_for, redact
from .providers import PROVIDERS
from .report_formats import FORMATS
from .units import format_size

if TYPE_CHECKING:
    from .keeper import Keeper
    from .quota import Held
    from .reconcile_plan import ReconcilePlan
    from .records import CheckResult, UploadResult

F = TypeVar("F", bound=Callable[..., Any])


class State:
    def __init__(self, verbose: bool) -> None:
        self.verbose = verbose
        self._keeper: Keeper | None = None

    def keeper(self) -> Keeper:
        if self._keeper is None:
            from .keeper import Keeper  # the ledger's SQLAlchemy comes with it: only for commands that use it

            self._keeper = Keeper(load_settings())
        return self._keeper

    def close(self) -> None:
        if self._keeper is not None:
            self._keeper.close()


class _RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = printable(redact(record.getMessage()))
        record.args = None
        return True


class FilekeeperGroup(click.Group):
    """Turns expected failures into one line on stderr and the documented exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FilekeeperError as e:
            self._traceback(ctx)
            say_error(str(e))
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:
            say("filekeeper: interrupted", err=True)
            ctx.exit(130)
        except BrokenPipeError:
            # The reader went away (`filekeeper report | head`): stop quietly, as Unix tools do.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            ctx.exit(EXIT_FAILURE)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as e:
            self._traceback(ctx)
            if type(e).__module__.startswith("sqlalchemy"):  # one that slipped past the ledger's own
                reason = str(getattr(e, "orig", None) or e).strip()
                say_error(f"ledger error: {redact(reason.splitlines()[0] if reason else type(e).__name__)}")
                ctx.exit(EXIT_FAILURE)
            message = redact(f"{type(e).__name__}: {e}")
            click.echo(f"filekeeper: internal error: {printable(message)} (run with --verbose for details)", err=True)
            ctx.exit(EXIT_FAILURE)

    @staticmethod
    def _traceback(ctx: click.Context) -> None:
        state: State | None = ctx.obj
        if state and state.verbose:
            traceback.print_exc()


@click.group(cls=FilekeeperGroup)
@click.option("--verbose", "-v", is_flag=True, help="Log HTTP requests and retries; show tracebacks.")
@click.version_option(__version__, prog_name="filekeeper")
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """Track files uploaded to LLM providers, and keep accounts within their quotas.

    Exit codes: 0 ok, 1 operational failure, 2 bad input or usage, 3 refused by quota policy;
    4 from `reconcile --exit-code` when the plan found something to do.
    """
    state = State(verbose)
    ctx.obj = state
    # systemd stops a service with SIGTERM: handled like Ctrl-C, so in-flight work is finished and recorded.
    signal.signal(signal.SIGTERM, _interrupt)
    ctx.call_on_close(state.close)
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RedactingFilter())
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.INFO if verbose else logging.WARNING)


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def account_options(f: F) -> F:
    f = click.option("--account", "-a", metavar="NAME", help="A configured account (or a provider's own).")(f)
    return click.option("--provider", "-p", metavar="NAME", help=f"{', '.join(PROVIDERS)} (its default account).")(f)


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON only on stdout.")


def emit_json(data: Any) -> None:
    click.echo(json_safe(json.dumps(data, indent=2, ensure_ascii=False)))


def say(message: str, *, err: bool = False) -> None:
    """Every line of text filekeeper prints: control characters in it (from a filename, a
    provider's message) are shown as escapes, never obeyed by the terminal."""
    click.echo(printable(message, newlines=True), err=err)


def say_error(message: str) -> None:
    """``filekeeper: error: ...`` on stderr, on one line whatever the message holds."""
    click.echo(f"filekeeper: error: {printable(message)}", err=True)


def fail_with(errors: Sequence[FilekeeperError | None]) -> None:
    """Exit with the most severe of several failures, if there were any."""
    if code := exit_code_for(errors):
        raise click.exceptions.Exit(code)


paths_argument = click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=str))
purpose_option = click.option("--purpose", metavar="PURPOSE", help="Upload purpose (default: the provider's usual).")
ttl_option = click.option(
    "--ttl", metavar="DURATION", help="Expire after this long, e.g. 30d, 12h (default: the retention policy)."
)
force_option = click.option("--force", is_flag=True, help="Upload even if an identical file is already active.")


# --- upload and check -------------------------------------------------------------------------------


@cli.command()
@paths_argument
@account_options
@purpose_option
@ttl_option
@click.option(
    "--evict",
    type=click.Choice(["expired", "oldest"]),
    help="When the account is full, delete expired (or the oldest) files to make room.",
)
@force_option
@click.option("--concurrency", default=4, show_default=True, type=click.IntRange(1, 32), help="Files uploaded at once.")
@json_option
@click.pass_obj
def upload(
    state: State,
    paths: tuple[str, ...],
    provider: str | None,
    account: str | None,
    purpose: str | None,
    ttl: str | None,
    evict: str | None,
    force: bool,
    concurrency: int,
    as_json: bool,
) -> None:
    """Upload files: each is checked against the quota and recorded in the ledger before it is sent."""
    keeper = state.keeper()
    bar = None
    if not as_json and sys.stderr.isatty():
        from .keeper import check_upload_path
        from .progress import ByteProgress

        bar = ByteProgress(sum(check_upload_path(p).stat().st_size for p in paths), sys.stderr)
    try:
        results = keeper.upload(
            paths,
            provider=provider,
            account=account,
            purpose=purpose,
            ttl=ttl,
            evict=evict,  # type: ignore[arg-type]
            force=force,
            concurrency=concurrency,
            on_progress=bar.update if bar else None,
        )
    finally:
        if bar:
            bar.close()
    render_upload(results, as_json)
    fail_with([r.error for r in results])


def render_upload(results: Sequence[UploadResult], as_json: bool) -> None:
    for r in results:
        for h in r.evicted:
            what = f"{h.file_id} ({printable(h.filename)}, {format_size(h.bytes)})"
            say(f"evicted {what} to make room for {printable(str(r.path))}", err=True)
    failed = [r for r in results if not r.ok]
    for r in failed:
        say_error(f"{r.path}: {r.error}")
    if any(isinstance(r.error, QuotaExceeded) for r in failed):
        say("  (see `filekeeper check` for what to free, or retry with --evict expired|oldest)", err=True)
    if as_json:
        emit_json([r.to_json() for r in results])  # one per path given, whatever became of it
        return
    for rec in [r.record for r in results if r.record is not None]:
        note = "  (already uploaded: reused)" if rec.reused else ""
        say(f"{rec.id}  {printable(rec.filename)}  {format_size(rec.bytes)}  → {rec.account} ({rec.provider}){note}")


@cli.command()
@paths_argument
@account_options
@purpose_option
@ttl_option
@force_option
@json_option
@click.pass_obj
def check(
    state: State,
    paths: tuple[str, ...],
    provider: str | None,
    account: str | None,
    purpose: str | None,
    ttl: str | None,
    force: bool,
    as_json: bool,
) -> None:
    """Would these files fit, together? Exit 0 if so, 3 if not. Nothing leaves the machine."""
    result = state.keeper().check(paths, provider=provider, account=account, purpose=purpose, ttl=ttl, force=force)
    if as_json:
        emit_json(result.to_json())
    else:
        say(render_check(result))
    if not result.ok:
        raise click.exceptions.Exit(EXIT_QUOTA)


def render_check(r: CheckResult) -> str:
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
        lines += render_advice(r)
    return "\n".join(lines)


def render_advice(r: CheckResult) -> list[str]:
    advice = r.advice
    assert advice is not None
    need = [
        f"{advice.free_files} file(s)" if advice.free_files else "",
        format_size(advice.free_bytes) if advice.free_bytes else "",
    ]
    lines = [f"to make room, free at least {' and '.join(x for x in need if x)}:"]
    now = datetime.now(UTC)

    def show(h: Held) -> str:
        word = "expired" if h.expired(now) else "expires"
        expires = f", {word} {h.expires_at:%Y-%m-%d}" if h.expires_at else ""
        size = format_size(h.bytes)
        return f"{h.file_id} ({printable(h.filename)}, {size}, uploaded {h.created_at:%Y-%m-%d}{expires})"

    for title, held in (("expired files that could go", advice.expired), ("or the oldest files", advice.oldest)):
        if held:
            lines.append(f"  {title}:")
            lines += [f"    {show(h)}" for h in held[:10]]
            if len(held) > 10:
                lines.append(f"    … and {len(held) - 10} more")
    lines.append(
        f"  delete them with `filekeeper delete ID... --account {r.account.name}`, "
        "or upload with --evict expired|oldest"
    )
    return lines


# --- the ledger's views -------------------------------------------------------------------------------


@cli.command("ls")
@account_options
@click.option(
    "--status",
    "statuses",
    multiple=True,
    metavar="STATUS",
    help=(
        "pending, active, unclaimed, generated, deleted, expired, missing, failed, or all "
        "(repeatable; default: those that hold quota: active, pending, unclaimed, generated)."
    ),
)
@json_option
@click.pass_obj
def ls(state: State, provider: str | None, account: str | None, statuses: tuple[str, ...], as_json: bool) -> None:
    """List files the ledger knows."""
    wanted = None if "all" in statuses else (list(statuses) or ["active", "pending", "unclaimed", "generated"])
    records = state.keeper().files(provider=provider, account=account, statuses=wanted)
    if as_json:
        emit_json([r.to_json() for r in records])
        return
    if not records:
        say("no files", err=True)
        return
    rows = [
        [
            r.id or f"(#{r.ledger_id})",
            r.account,
            r.status,
            format_size(r.bytes),
            when(r.created_at),
            when(r.expires_at),
            r.filename,
        ]
        for r in records
    ]
    say(table(["ID", "ACCOUNT", "STATUS", "SIZE", "CREATED", "EXPIRES", "FILENAME"], rows))


@cli.command()
@account_options
@json_option
@click.pass_obj
def usage(state: State, provider: str | None, account: str | None, as_json: bool) -> None:
    """Files and bytes in use per account (the files that hold quota), against its limits."""
    rows = state.keeper().usage(provider=provider, account=account)
    if as_json:
        emit_json([u.to_json() for u in rows])
        return
    if not rows:
        say("no accounts yet: set a provider's API key or configure one in config.toml", err=True)
        return
    body = [
        [
            u.account,
            u.provider,
            used_of(u.files, u.limits.max_files),
            used_of(u.bytes, u.limits.max_total_bytes, format_size),
            f"{u.limits.retention_days}d" if u.limits.retention_days else "for ever",
        ]
        for u in rows
    ]
    say(table(["ACCOUNT", "PROVIDER", "FILES", "BYTES", "RETENTION"], body))


@cli.command()
@click.argument("file_ids", nargs=-1, required=True)
@account_options
@json_option
@click.pass_obj
def delete(state: State, file_ids: tuple[str, ...], provider: str | None, account: str | None, as_json: bool) -> None:
    """Delete files at the provider and record it (a file already gone counts as deleted)."""
    results = state.keeper().delete(file_ids, provider=provider, account=account)
    for r in results:
        if r.error is not None:
            say_error(f"{r.file_id}: {r.error}")
    done = [r for r in results if r.error is None]
    if as_json:
        emit_json([r.to_json() for r in done])
    else:
        for r in done:
            say(f"deleted {r.file_id}{' (was already gone)' if r.already_gone else ''}")
    fail_with([r.error for r in results])


# --- reconcile --------------------------------------------------------------------------------------


def parse_min_age(_ctx: click.Context, _param: click.Parameter, value: str) -> timedelta:
    from .units import parse_duration

    if value.strip() == "0":
        return timedelta(0)
    try:
        return timedelta(seconds=parse_duration(value))
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def parse_max_delete_option(_ctx: click.Context, _param: click.Parameter, value: str) -> int | str:
    from .reconcile_plan import parse_max_delete

    try:
        return parse_max_delete(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


@cli.command()
@account_options
@click.option(
    "--all", "all_accounts", is_flag=True, help="Every configured account, and each provider whose API key is set."
)
@click.option("--apply", is_flag=True, help="Act on the plan. Without it, only print the plan and change nothing.")
@click.option("--adopt", is_flag=True, help="Record orphans in the ledger as active instead of deleting them.")
@click.option(
    "--max-delete",
    default="100",
    show_default=True,
    metavar="N|N%",
    callback=parse_max_delete_option,
    help="Refuse a plan that deletes more files than this (or this share of those listed).",
)
@click.option(
    "--min-age",
    default="1h",
    show_default=True,
    metavar="DURATION",
    callback=parse_min_age,
    help="Never delete orphans, or settle reservations, younger than this.",
)
@click.option(
    "--accept-empty",
    is_flag=True,
    help="Accept an empty listing while the ledger holds active files (else refused: a wrong key looks the same).",
)
@click.option(
    "--accept-missing",
    is_flag=True,
    help="Act although most files the ledger expects are not listed (else refused: a wrong key looks the same).",
)
@click.option(
    "--trust-key",
    is_flag=True,
    help="Act on a listing made with a key this account was never used with (after checking it is the right one).",
)
@click.option(
    "--delete-unclaimed",
    is_flag=True,
    help="Also delete unclaimed files (found by a ledger that never tracked the account), like orphans.",
)
@click.option("--wait", is_flag=True, help="Wait for another reconcile of the account instead of failing.")
@click.option(
    "--concurrency", default=32, show_default=True, type=click.IntRange(1, 64), help="Deletes in flight at once."
)
@click.option(
    "--exit-code", "exit_code", is_flag=True, help="Exit 4 when the plan found anything to do (for monitoring)."
)
@json_option
@click.pass_obj
def reconcile(
    state: State,
    provider: str | None,
    account: str | None,
    all_accounts: bool,
    exit_code: bool,
    as_json: bool,
    **options: Any,
) -> None:
    """Make the ledger and the provider agree: orphans, missing, expired, pending, drift.

    Prints the plan and changes nothing unless --apply. Quiet when there is nothing to do.
    Exit 0 done, 1 failed, and with --exit-code 4 when there was anything to do.
    """
    from . import reconcile as rec
    from .reconcile_plan import ReconcileOptions

    if all_accounts and (provider or account):
        raise UsageError("give --all, or --provider/--account, not both")
    keeper = state.keeper()
    line = None
    if not as_json and sys.stderr.isatty():
        from .progress import StatusLine

        line = StatusLine(sys.stderr, "reconcile")
    kwargs: dict[str, Any] = {
        "options": ReconcileOptions(**options),
        "progress": line.update if line else None,
        "on_wait": lambda message: say(f"filekeeper: {message}", err=True),
    }
    try:
        if all_accounts:
            outcomes = keeper.reconcile_all(**kwargs)
        else:
            acct = keeper.account(provider, account)
            try:
                outcomes = [(acct, keeper.reconcile(account=acct.name, **kwargs))]
            except FilekeeperError as e:  # a rail held, a listing failed: said in --json too
                outcomes = [(acct, e)]
    finally:
        if line:
            line.close()
    render_reconcile(outcomes, as_json=as_json, many=all_accounts)
    if code := rec.exit_code([o for _, o in outcomes], changes=exit_code):
        raise click.exceptions.Exit(code)


def render_reconcile(
    outcomes: Sequence[tuple[Any, ReconcilePlan | FilekeeperError]], *, as_json: bool, many: bool
) -> None:
    plans = [p for _, p in outcomes if not isinstance(p, FilekeeperError)]
    if as_json:
        docs = [
            {"account": a.name, "provider": a.provider, "applied": False, "error": str(o), "exit_code": o.exit_code}
            if isinstance(o, FilekeeperError)
            else o.to_json()
            for a, o in outcomes
        ]
        emit_json(docs if many else (docs[0] if docs else None))
    else:
        for p in plans:
            if p.has_work or p.errors or p.skipped:
                say(render_plan(p))
    for a, e in outcomes:
        if isinstance(e, FilekeeperError):
            say_error(f"{a.name}: {e}")
    for p in plans:
        for file_id, error in p.errors:
            say_error(f"{p.account.name}: could not delete {file_id}: {redact(error)}")


def render_plan(r: ReconcilePlan) -> str:
    a = r.account
    lines = [f"reconcile {a.name} ({a.provider}): {r.listed:,} files listed at the provider"]
    young = sum(1 for _, why in r.skipped if why.startswith("younger"))
    unclaimed = len(r.unclaimed_new) + len(r.unclaimed)
    rows = [
        ("orphans", len(r.orphans), "at the provider, not in the ledger"),
        (
            "unclaimed",
            unclaimed,
            f"someone else's ({len(r.unclaimed_new)} new): found before this ledger first listed the account; "
            "kept, counted, until --adopt or --delete-unclaimed",
        ),
        ("generated", len(r.generated_new), "made by the provider (batch results): kept for their own retention"),
        ("missing", len(r.missing), "active in the ledger, proven gone at the provider"),
        ("unconfirmed", len(r.unconfirmed), "not in the listing, not proven gone: kept and still counted"),
        ("reappeared", len(r.reappeared), "missing in the ledger, listed again: active again"),
        ("gone", len(r.gone), "unclaimed files that left the provider"),
        ("expired", len(r.expired), f"past their expiry ({len(r.expired_present)} still at the provider)"),
        (
            "pending",
            len(r.settled) + len(r.failed_pending),
            f"{len(r.settled)} settled, {len(r.failed_pending)} failed, {len(r.waiting_pending)} still young",
        ),
        ("drift", len(r.drift), "same id, different size or name"),
        ("journal", len(r.intents_done), "deletes an interrupted run sent but never recorded: recorded now"),
    ]
    if r.key in ("rotated", "trusted"):
        how = "the listing shows the files the ledger expects" if r.key == "rotated" else "--trust-key"
        lines.append(f"  a new API key for this account, accepted: {how}")
    lines += [f"  {name:<11} {count:>6}  {what}" for name, count, what in rows if count]
    for t, why in r.unconfirmed[:10]:
        lines.append(f"    unconfirmed {t.file_id} ({printable(t.filename)}): {why}")
    for t, rf in r.drift[:10]:
        ledger, provider = f"{printable(t.filename)} ({t.bytes} B)", f"{printable(rf.filename)} ({rf.bytes} B)"
        lines.append(f"    drift {t.file_id}: ledger {ledger}, provider {provider}")
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
    if r.interrupted:
        left = max(r.to_delete - len(r.deleted) - len(r.errors), 0)
        lines.append(
            f"  interrupted (SIGINT/SIGTERM): stopped after {len(r.deleted)} delete(s), each recorded; "
            f"{left} not deleted: run again to finish"
        )
    if young:
        lines.append(f"  {young} orphan(s) younger than --min-age were left alone")
    return "\n".join(lines)


# --- reports ----------------------------------------------------------------------------------------


def parse_date_option(end_of_day: bool) -> Callable[[click.Context, click.Parameter, str | None], datetime | None]:
    def parse(_ctx: click.Context, _param: click.Parameter, value: str | None) -> datetime | None:
        from .reports import parse_when

        if value is None:
            return None
        try:
            return parse_when(value, end_of_day=end_of_day)
        except ValueError as e:
            raise click.BadParameter(str(e)) from None

    return parse


@cli.command()
@account_options
@click.option(
    "--since",
    metavar="DATE",
    callback=parse_date_option(False),
    help="Start (YYYY-MM-DD or ISO time; default: 30 days before --until).",
)
@click.option("--until", metavar="DATE", callback=parse_date_option(True), help="End (default: now).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(list(FORMATS)),
    help="Default: from --output's extension, else table on a terminal and json otherwise.",
)
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), help="Write to this file.")
@click.option("--json", "as_json", is_flag=True, help="The same as --format json.")
@click.pass_obj
def report(
    state: State,
    provider: str | None,
    account: str | None,
    since: datetime | None,
    until: datetime | None,
    fmt: str | None,
    output: Path | None,
    as_json: bool,
) -> None:
    """Audit report: usage against limits now, activity by day, reconcile runs, every event."""
    from .report_formats import infer_format, write_report

    if as_json and fmt not in (None, "json"):
        raise UsageError(f"give --json or --format {fmt}, not both")
    fmt = infer_format("json" if as_json else fmt, output, terminal=sys.stdout.isatty())
    query = state.keeper().report_query(provider=provider, account=account, since=since, until=until)
    write_report(query, fmt, output)
    if output is not None:
        say(f"wrote {fmt} report to {output}", err=True)


# --- the ledger itself ------------------------------------------------------------------------------


@cli.group()
def db() -> None:
    """The ledger's schema and its audit log."""


@db.command("upgrade")
@json_option
@click.pass_obj
def db_upgrade(state: State, as_json: bool) -> None:
    """Create the ledger or bring it to this filekeeper's schema (a SQLite ledger is backed up first)."""
    from .migrate import upgrade

    before, after, backup = upgrade(state.keeper().settings)
    if as_json:
        emit_json(
            {"before": before.current, "after": after.current, "head": after.head, "backup": backup and str(backup)}
        )
    elif before.current == after.current:
        say(f"ledger already at {after.current} (head)")
    else:
        say(f"ledger upgraded from {before.current or 'empty'} to {after.current}")
        if backup:
            say(f"backup of the previous ledger: {backup}")


@db.command("current")
@json_option
@click.pass_obj
def db_current(state: State, as_json: bool) -> None:
    """Show the ledger's schema revision (reads only; creates nothing)."""
    from .migrate import status

    settings = state.keeper().settings
    st = status(settings)
    missing = st.current is None and settings.ledger_path is not None and not settings.ledger_path.exists()
    if as_json:
        emit_json({"revision": st.current, "head": st.head, "state": "missing" if missing else st.state})
        return
    if missing:
        say(f"no ledger yet at {settings.ledger_path} (head is {st.head})")
        return
    notes = {
        "current": "(head)",
        "empty": "(empty; run: filekeeper db upgrade)",
        "behind": f"(behind head {st.head}; run: filekeeper db upgrade)",
        "newer": f"(written by a newer filekeeper; this one knows up to {st.head})",
    }
    say(f"{st.current or 'none'} {notes[st.state]}")


@db.command("prune-events")
@click.option(
    "--before",
    required=True,
    metavar="DATE",
    callback=parse_date_option(False),
    help="Remove events before this date (YYYY-MM-DD or ISO time).",
)
@click.option(
    "--archive",
    type=click.Path(path_type=Path),
    help="CSV archive to write first (default: $FILEKEEPER_HOME/archive/events-before-DATE-*.csv).",
)
@click.option("--yes", is_flag=True, help="Do it. Without --yes, only say how many events (of which dates) would go.")
@json_option
@click.pass_obj
def db_prune_events(state: State, before: datetime, archive: Path | None, yes: bool, as_json: bool) -> None:
    """Archive old events to CSV, then remove them from the ledger (nothing is ever pruned implicitly)."""
    result = state.keeper().prune_events(before, archive, apply=yes)
    if as_json:
        emit_json({**result.to_json(), "before": before.isoformat()})
        return
    span = f" ({when(result.first)} to {when(result.last)} UTC)" if result.count else ""
    if result.applied:
        say(f"archived {result.count} event(s){span} to {result.archive}; removed them from the ledger")
    elif not result.count:
        say(f"no events before {before:%Y-%m-%d %H:%M} UTC: nothing to prune")
    else:
        say(
            f"would archive {result.count} event(s){span} to {result.archive} and remove them from the ledger; "
            "run again with --yes to do it"
        )


@db.command("import-events")
@click.argument("archive", type=click.Path(dir_okay=False, path_type=Path))
@json_option
@click.pass_obj
def db_import_events(state: State, archive: Path, as_json: bool) -> None:
    """Put the events of a prune-events archive back in the ledger (importing one twice adds nothing)."""
    imported, present = state.keeper().import_events(archive)
    if as_json:
        emit_json({"imported": imported, "already_present": present, "archive": str(archive)})
        return
    say(f"imported {imported} event(s) from {archive}" + (f"; {present} were there already" if present else ""))


def main() -> None:
    cli(prog_name="filekeeper")
