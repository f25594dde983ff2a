"""The ``filekeeper`` command: parse the arguments, call :class:`filekeeper.Keeper`, render the result.

No business logic here: the library decides, :mod:`filekeeper.views` shows. Start-up stays light:
``filekeeper --help`` and shell completion import click and a few small modules, no SQLAlchemy;
the ledger's SQLAlchemy comes with the commands that open it, httpx with those that talk to a
provider, alembic only to create or upgrade the ledger.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import click

from ._version import __version__
from .display import json_safe, printable
from .errors import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_QUOTA,
    FilekeeperError,
    QuotaExceeded,
    UsageError,
    exit_code_for,
    redact,
)
from .units import format_size

if TYPE_CHECKING:
    from .keeper import Keeper
    from .reconcile_plan import ReconcilePlan
    from .records import UploadResult

F = TypeVar("F", bound=Callable[..., Any])

ENVIRONMENT = """\b
Environment:
  FILEKEEPER_HOME          where the ledger and config.toml live (default: the user data dir)
  FILEKEEPER_DATABASE_URL  a SQLAlchemy URL for a shared ledger (PostgreSQL) instead of the file
  FILEKEEPER_CONFIG        another config file (it must exist)
  <PROVIDER>_API_KEY       each provider's key, e.g. OPENAI_API_KEY (or the variable config names)
  <PROVIDER>_BASE_URL      each provider's base URL, e.g. MOONSHOT_BASE_URL
  COLUMNS                  the terminal's width, to which ls cuts long names

\b
Exit codes: 0 ok, 1 operational failure, 2 bad input or usage, 3 refused by quota policy,
4 from `reconcile --exit-code` when there is something to act on, 130 interrupted."""


def examples(*lines: str) -> str:
    """A command's epilog: its examples, kept as written (click re-wraps other text)."""
    return "\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)


class State:
    def __init__(self) -> None:
        self.verbose = False
        self.quiet = False
        self._keeper: Keeper | None = None

    def keeper(self) -> Keeper:
        if self._keeper is None:
            from .config import load_settings
            from .keeper import Keeper  # the ledger's SQLAlchemy comes with it: only for commands that use it

            self._keeper = Keeper(load_settings())
        return self._keeper

    def close(self) -> None:
        if self._keeper is not None:
            self._keeper.close()


def _configure_logging(verbose: bool) -> None:
    import logging

    class RedactingFilter(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            record.msg = printable(redact(record.getMessage()))
            record.args = None
            return True

    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.INFO if verbose else logging.WARNING)


class FilekeeperGroup(click.Group):
    """Turns expected failures into one line on stderr and the documented exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FilekeeperError as e:
            self._traceback(ctx)
            _let_go(e)
            say_error(str(e))
            ctx.exit(e.exit_code)
        except KeyboardInterrupt as e:
            _let_go(e)
            say("filekeeper: interrupted", err=True)
            ctx.exit(EXIT_INTERRUPTED)
        except BrokenPipeError as e:
            # The reader went away (`filekeeper report | head`): stop quietly, as Unix tools do.
            _let_go(e)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            ctx.exit(EXIT_FAILURE)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as e:
            self._traceback(ctx)
            _let_go(e)
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
            import traceback

            traceback.print_exc()


def _let_go(e: BaseException) -> None:
    """Clear the failed command's frames, so that what they held is let go at once: a listing
    or report cut off mid-stream holds the ledger connection its generator checked out, and only
    a collection would reach it through the exception's cycle (main() freezes the heap at exit
    instead, so the ledger would be left open, its write-ahead log on disk)."""
    import traceback

    traceback.clear_frames(e.__traceback__)


def _set_verbose(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        state = ctx.ensure_object(State)
        state.verbose = True
        _configure_logging(True)


def _set_quiet(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.ensure_object(State).quiet = True


#: -v/-q, taken before the command (``filekeeper -v ls``) or after it (``filekeeper ls -v``)
verbose_option = click.option(
    "--verbose",
    "-v",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_set_verbose,
    help="Log HTTP requests and retries; show tracebacks.",
)
quiet_option = click.option(
    "--quiet",
    "-q",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_set_quiet,
    help="Only errors on stderr: no progress, no notes.",
)


def common(f: F) -> F:
    return verbose_option(quiet_option(f))


@click.group(cls=FilekeeperGroup, context_settings={"help_option_names": ["-h", "--help"]}, epilog=ENVIRONMENT)
@common
@click.version_option(__version__, prog_name="filekeeper")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Track files uploaded to LLM providers, and keep accounts within their quotas.

    Every upload is checked against its account's limits and recorded in a ledger before it is
    sent; `reconcile` makes the ledger and the provider agree, safely enough for cron.
    """
    import signal

    state = ctx.ensure_object(State)
    # systemd stops a service with SIGTERM: handled like Ctrl-C, so in-flight work is finished and recorded.
    signal.signal(signal.SIGTERM, _interrupt)
    ctx.call_on_close(state.close)
    _configure_logging(state.verbose)


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


class _ProvidersHelp(click.Option):
    """--provider, whose help names the providers; read from the registry only when help is shown."""

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        from .providers import PROVIDERS

        self.help = f"{', '.join(PROVIDERS)} (its default account)."
        return super().get_help_record(ctx)


def _complete_provider(_ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[str]:
    from .providers import PROVIDERS

    return [p for p in PROVIDERS if p.startswith(incomplete)]


def account_options(f: F) -> F:
    f = click.option("--account", "-a", metavar="NAME", help="A configured account (or a provider's own).")(f)
    return click.option("--provider", "-p", metavar="NAME", cls=_ProvidersHelp, shell_complete=_complete_provider)(f)


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON only on stdout.")
local_option = click.option("--local", is_flag=True, help="Show times in this machine's zone (default: UTC, with a Z).")


def emit_json(data: Any) -> None:
    import json

    click.echo(json_safe(json.dumps(data, indent=2, ensure_ascii=False)))


def say(message: str, *, err: bool = False) -> None:
    """Every line of text filekeeper prints: control characters in it (from a filename, a
    provider's message) are shown as escapes, never obeyed by the terminal."""
    click.echo(printable(message, newlines=True), err=err)


def note(message: str) -> None:
    """An informational line on stderr: silent with --quiet."""
    ctx = click.get_current_context(silent=True)
    state = ctx.find_object(State) if ctx is not None else None
    if state is None or not state.quiet:
        say(message, err=True)


def say_error(message: str) -> None:
    """``filekeeper: error: ...`` on stderr, on one line whatever the message holds."""
    click.echo(f"filekeeper: error: {printable(message)}", err=True)


def fail_with(errors: Sequence[FilekeeperError | None]) -> None:
    """Exit with the most severe of several failures, if there were any."""
    if code := exit_code_for(errors):
        raise click.exceptions.Exit(code)


def _terminal(state: State) -> bool:
    return sys.stderr.isatty() and not state.quiet


def parse_duration_option(_ctx: click.Context, _param: click.Parameter, value: str | None) -> timedelta | None:
    from .units import parse_duration

    if value is None:
        return None
    if value.strip() == "0":
        return timedelta(0)
    try:
        return timedelta(seconds=parse_duration(value))
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


paths_argument = click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=str))
purpose_option = click.option("--purpose", metavar="PURPOSE", help="Upload purpose (default: the provider's usual).")
ttl_option = click.option(
    "--ttl", metavar="DURATION", help="Expire after this long, e.g. 30d, 12h (default: the retention policy)."
)
force_option = click.option("--force", is_flag=True, help="Upload even if an identical file is already active.")


# --- upload and check -------------------------------------------------------------------------------


@cli.command(
    short_help="Upload files, each checked against the quota and recorded first.",
    epilog=examples(
        "filekeeper upload report.pdf notes.md --provider moonshot",
        "filekeeper upload batch.jsonl -p openai --purpose batch --ttl 2d --evict expired",
        "filekeeper upload data/*.csv --account team-b --json",
    ),
)
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
@common
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
    if not as_json and _terminal(state):
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
    from .views import record_line

    for r in results:
        for h in r.evicted:
            what = f"{printable(h.file_id)} ({printable(h.filename)}, {format_size(h.bytes)})"
            say(f"evicted {what} to make room for {printable(str(r.path))}", err=True)
    failed = [r for r in results if not r.ok]
    for r in failed:
        say_error(f"{r.path}: {r.error}")
    if any(isinstance(r.error, QuotaExceeded) for r in failed):
        note("  (see `filekeeper check` for what to free, or retry with --evict expired|oldest)")
    if as_json:
        emit_json([r.to_json() for r in results])  # one per path given, whatever became of it
        return
    for rec in [r.record for r in results if r.record is not None]:
        say(record_line(rec))


@cli.command(
    epilog=examples(
        "filekeeper check data/*.pdf --provider moonshot",
        "filekeeper check big.jsonl -p openai --purpose batch --ttl 7d --json",
    )
)
@paths_argument
@account_options
@purpose_option
@ttl_option
@force_option
@local_option
@json_option
@common
@click.pass_obj
def check(
    state: State,
    paths: tuple[str, ...],
    provider: str | None,
    account: str | None,
    purpose: str | None,
    ttl: str | None,
    force: bool,
    local: bool,
    as_json: bool,
) -> None:
    """Would these files fit, together? Exit 0 if so, 3 if not. Nothing leaves the machine."""
    from .views import check as check_view

    result = state.keeper().check(paths, provider=provider, account=account, purpose=purpose, ttl=ttl, force=force)
    if as_json:
        emit_json(result.to_json())
    else:
        say(check_view(result, local=local))
    if not result.ok:
        raise click.exceptions.Exit(EXIT_QUOTA)


# --- the ledger's views -------------------------------------------------------------------------------

SORTS = ("created", "size", "name", "expires")  # records.SORTS (a test keeps them the same)


@cli.command(
    "ls",
    epilog=examples(
        "filekeeper ls --provider openai --name '*.jsonl' --sort size --limit 20",
        "filekeeper ls --expiring-within 7d --status active",
        "filekeeper ls --status all --jsonl | jq -r .id",
    ),
)
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
@click.option("--purpose", metavar="PURPOSE", help="Only files uploaded with this purpose.")
@click.option("--name", metavar="GLOB", help="Only files whose name matches, e.g. '*.pdf' (case-sensitive).")
@click.option(
    "--older-than",
    metavar="DURATION",
    callback=parse_duration_option,
    help="Only files created at least this long ago.",
)
@click.option(
    "--expiring-within",
    metavar="DURATION",
    callback=parse_duration_option,
    help="Only files that expire within this long (those already expired too).",
)
@click.option(
    "--sort",
    type=click.Choice(SORTS),
    default="created",
    show_default=True,
    help="created: oldest first; size: largest first; name; expires: soonest first.",
)
@click.option("--limit", type=click.IntRange(1), metavar="N", help="At most N files.")
@local_option
@json_option
@click.option("--jsonl", is_flag=True, help="One JSON record per line, streamed (for big ledgers and jq).")
@common
@click.pass_obj
def ls(
    state: State,
    provider: str | None,
    account: str | None,
    statuses: tuple[str, ...],
    purpose: str | None,
    name: str | None,
    older_than: timedelta | None,
    expiring_within: timedelta | None,
    sort: str,
    limit: int | None,
    local: bool,
    as_json: bool,
    jsonl: bool,
) -> None:
    """List files the ledger knows."""
    from .views import files_table

    if as_json and jsonl:
        raise UsageError("give --json or --jsonl, not both")
    wanted = None if "all" in statuses else (list(statuses) or ["active", "pending", "unclaimed", "generated"])
    records = state.keeper().iter_files(
        provider=provider,
        account=account,
        statuses=wanted,
        purpose=purpose,
        name=name,
        older_than=None if older_than is None else int(older_than.total_seconds()),
        expiring_within=None if expiring_within is None else int(expiring_within.total_seconds()),
        sort=sort,
        limit=limit,
    )
    if jsonl:
        import json

        for record in records:
            click.echo(json_safe(json.dumps(record.to_json(), ensure_ascii=False)))
        return
    found = list(records)
    if as_json:
        emit_json([r.to_json() for r in found])
        return
    if not found:
        note("no files")
        return
    width = _width() if sys.stdout.isatty() else None
    say(files_table(found, local=local, width=width))


def _width() -> int:
    import shutil

    return shutil.get_terminal_size((100, 24)).columns


@cli.command(
    short_help="One file's record and its whole history.",
    epilog=examples(
        "filekeeper show file-abc123",
        "filekeeper show clg681objj8g9m7n4je0 --account team-b --json",
        "filekeeper show '#42'        # a reservation, by its ledger id",
    ),
)
@click.argument("ref", metavar="ID")
@account_options
@local_option
@json_option
@common
@click.pass_obj
def show(state: State, ref: str, provider: str | None, account: str | None, local: bool, as_json: bool) -> None:
    """One file's record and its whole history, oldest first (ID, or #N for ledger row N)."""
    from .views import show as show_view

    history = state.keeper().show(ref, provider=provider, account=account)
    if as_json:
        emit_json(history.to_json())
    else:
        say(show_view(history, local=local))


@cli.command(
    short_help="Files and bytes held per account, against its limits.",
    epilog=examples("filekeeper usage", "filekeeper usage --provider moonshot --json"),
)
@account_options
@json_option
@common
@click.pass_obj
def usage(state: State, provider: str | None, account: str | None, as_json: bool) -> None:
    """Files and bytes in use per account (the files that hold quota), against its limits."""
    rows = state.keeper().usage(provider=provider, account=account)
    if as_json:
        emit_json([u.to_json() for u in rows])
        return
    if not rows:
        note("no accounts yet: set a provider's API key or configure one in config.toml")
        return
    from .views import usage as usage_view

    say(usage_view(rows))


@cli.command(
    short_help="Delete files at the provider and record it.",
    epilog=examples(
        "filekeeper delete file-abc123 file-def456      # where the ledger records them",
        "filekeeper delete clg681objj8g9m7n4je0 --provider moonshot",
    ),
)
@click.argument("file_ids", nargs=-1, required=True)
@account_options
@json_option
@common
@click.pass_obj
def delete(state: State, file_ids: tuple[str, ...], provider: str | None, account: str | None, as_json: bool) -> None:
    """Delete files at the provider and record it (one the ledger knows and the provider no longer
    has counts as deleted)."""
    results = state.keeper().delete(file_ids, provider=provider, account=account)
    for r in results:
        if r.error is not None:
            say_error(f"{r.file_id}: {r.error}")
    if as_json:
        emit_json([r.to_json() for r in results if r.gone_at_provider])
    else:
        for r in results:
            if r.error is None:
                say(f"deleted {printable(r.file_id)}{' (was already gone)' if r.already_gone else ''}")
    fail_with([r.error for r in results])


@cli.command(
    short_help="Where things are, what is in effect, and why.",
    epilog=examples(
        "filekeeper doctor",
        "filekeeper doctor --online          # one list request per account: is each key right?",
        "filekeeper doctor --json | jq '.accounts[].limits'",
    ),
)
@click.option("--online", is_flag=True, help="Also make one list request per account: ok, auth failed, unreachable.")
@json_option
@common
@click.pass_obj
def doctor(state: State, online: bool, as_json: bool) -> None:
    """Where the config and the ledger are, each account's key and effective limits (and where
    each value came from). Exit 1 when something is wrong. Changes nothing."""
    from .views import doctor as doctor_view

    diagnosis = state.keeper().doctor(online=online)
    if as_json:
        emit_json(diagnosis.to_json())
    else:
        say(doctor_view(diagnosis))
    if not diagnosis.ok:
        raise click.exceptions.Exit(EXIT_FAILURE)


# --- reconcile --------------------------------------------------------------------------------------


def parse_max_delete_option(_ctx: click.Context, _param: click.Parameter, value: str) -> int | str:
    from .units import parse_max_delete

    try:
        return parse_max_delete(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


@cli.command(
    short_help="Make the ledger and the provider agree (a plan unless --apply).",
    epilog=examples(
        "filekeeper reconcile -p openai                     # the plan: changes nothing",
        "filekeeper reconcile --all --apply --wait          # from cron",
        "filekeeper reconcile -a team-b --apply --adopt --max-delete 10%",
    ),
)
@account_options
@click.option(
    "--all", "all_accounts", is_flag=True, help="Every configured account, and each provider whose API key is set."
)
@click.option("--apply", is_flag=True, help="Act on the plan. Without it, only print the plan and change nothing.")
@click.option("--adopt", is_flag=True, help="Record orphans (and unclaimed files) as ours instead of deleting them.")
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
    callback=parse_duration_option,
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
    help="Act on a listing made with a key (or URL) not yet shown to reach this account, after checking it.",
)
@click.option(
    "--delete-unclaimed",
    is_flag=True,
    help="Also delete unclaimed files (there before this ledger first listed the account), like orphans.",
)
@click.option("--wait", is_flag=True, help="Wait for another reconcile of the account instead of failing.")
@click.option(
    "--concurrency", default=32, show_default=True, type=click.IntRange(1, 64), help="Deletes in flight at once."
)
@click.option(
    "--exit-code", "exit_code", is_flag=True, help="Exit 4 when there is something to act on (for monitoring)."
)
@json_option
@common
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

    Prints the plan, file by file, and changes nothing unless --apply. Quiet when there is nothing
    to do. Exit 0 done, 1 failed or refused by a safety rail, and with --exit-code 4 when there is
    something to act on.
    """
    from .records import ReconcileOptions

    if all_accounts and (provider or account):
        raise UsageError("give --all, or --provider/--account, not both")
    keeper = state.keeper()
    line = None
    if not as_json and _terminal(state):
        from .progress import StatusLine

        line = StatusLine(sys.stderr, "reconcile")
    kwargs: dict[str, Any] = {
        "options": ReconcileOptions(**options),
        "progress": line.update if line else None,
        "on_wait": lambda message: note(f"filekeeper: {message}"),
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
    from . import reconcile as rec  # not before: the ledger's modules load while the listing begins

    if code := rec.exit_code([o for _, o in outcomes], changes=exit_code):
        raise click.exceptions.Exit(code)


def render_reconcile(
    outcomes: Sequence[tuple[Any, ReconcilePlan | FilekeeperError]], *, as_json: bool, many: bool
) -> None:
    from .views import plan as plan_view

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
            if p.has_work or p.errors or p.skipped or p.young or p.new_key_accepted:
                say(plan_view(p))
    for a, e in outcomes:
        if isinstance(e, FilekeeperError):
            say_error(f"{a.name}: {e}")
    for p in plans:
        for file_id, error in p.errors:
            say_error(f"{p.account.name}: could not delete {file_id}: {redact(error)}")


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


class _FormatChoice(click.Choice):  # type: ignore[type-arg]
    """--format's choices, read from the report format registry only when they are needed."""

    def __init__(self) -> None:
        super().__init__([])

    @property  # type: ignore[override]
    def choices(self) -> Sequence[str]:
        from .report_formats import FORMATS

        return list(FORMATS)

    @choices.setter
    def choices(self, _value: Iterable[str]) -> None:
        pass


@cli.command(
    short_help="Audit report: usage, activity by day and by actor, runs, events.",
    epilog=examples(
        "filekeeper report --account moonshot --since 2026-11-15 --until 2026-11-21",
        "filekeeper report --since 2026-11-01 -o november.html",
        "filekeeper report --format csv | grep ci@",
    ),
)
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
    type=_FormatChoice(),
    help="table, md, json, csv or html. Default: from --output's extension, else table on a terminal and json.",
)
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Write to this file.")
@click.option("--json", "as_json", is_flag=True, help="The same as --format json.")
@common
@click.pass_obj
def report(
    state: State,
    provider: str | None,
    account: str | None,
    since: datetime | None,
    until: datetime | None,
    fmt: str | None,
    output: str | None,
    as_json: bool,
) -> None:
    """Audit report: usage against limits now, activity by day, reconcile runs, every event."""
    from pathlib import Path

    from .report_formats import infer_format, write_report

    out = Path(output) if output is not None else None
    if as_json and fmt not in (None, "json"):
        raise UsageError(f"give --json or --format {fmt}, not both")
    fmt = infer_format("json" if as_json else fmt, out, terminal=sys.stdout.isatty())
    query = state.keeper().report_query(provider=provider, account=account, since=since, until=until)
    write_report(query, fmt, out)
    if output is not None:
        note(f"wrote {fmt} report to {output}")


# --- the ledger itself ------------------------------------------------------------------------------


@cli.group(epilog=examples("filekeeper db current", "filekeeper db prune-events --before 2026-01-01 --yes"))
@common
def db() -> None:
    """The ledger's schema and its audit log."""


@db.command(
    "upgrade",
    epilog=examples(
        "filekeeper db upgrade",
        "filekeeper db upgrade --json        # with FILEKEEPER_DATABASE_URL set: the team's PostgreSQL ledger",
    ),
)
@json_option
@common
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


@db.command("current", epilog=examples("filekeeper db current", "filekeeper db current --json"))
@json_option
@common
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


@db.command(
    "prune-events",
    epilog=examples(
        "filekeeper db prune-events --before 2026-01-01            # says what would go",
        "filekeeper db prune-events --before 2026-01-01 --archive old.csv --yes",
    ),
)
@click.option(
    "--before",
    required=True,
    metavar="DATE",
    callback=parse_date_option(False),
    help="Remove events before this date (YYYY-MM-DD or ISO time).",
)
@click.option(
    "--archive",
    type=click.Path(),
    help="CSV archive to write first (default: $FILEKEEPER_HOME/archive/events-before-DATE-*.csv).",
)
@click.option("--yes", is_flag=True, help="Do it. Without --yes, only say how many events (of which dates) would go.")
@json_option
@common
@click.pass_obj
def db_prune_events(state: State, before: datetime, archive: str | None, yes: bool, as_json: bool) -> None:
    """Archive old events to CSV, then remove them from the ledger (nothing is ever pruned implicitly)."""
    from pathlib import Path

    from .display import when

    result = state.keeper().prune_events(before, Path(archive) if archive else None, apply=yes)
    if as_json:
        emit_json({**result.to_json(), "before": before.isoformat()})
        return
    span = f" ({when(result.first)} to {when(result.last)})" if result.count else ""
    if result.applied:
        say(f"archived {result.count} event(s){span} to {result.archive}; removed them from the ledger")
    elif not result.count:
        say(f"no events before {when(before)}: nothing to prune")
    else:
        say(
            f"would archive {result.count} event(s){span} to {result.archive} and remove them from the ledger; "
            "run again with --yes to do it"
        )


@db.command(
    "import-events",
    epilog=examples(
        "filekeeper db import-events old-events.csv",
        "filekeeper db import-events ~/.local/share/filekeeper/archive/events-before-2026-01-01-*.csv --json",
    ),
)
@click.argument("archive", type=click.Path(dir_okay=False))
@json_option
@common
@click.pass_obj
def db_import_events(state: State, archive: str, as_json: bool) -> None:
    """Put the events of a prune-events archive back in the ledger (importing one twice adds nothing)."""
    from pathlib import Path

    imported, present = state.keeper().import_events(Path(archive))
    if as_json:
        emit_json({"imported": imported, "already_present": present, "archive": str(archive)})
        return
    say(f"imported {imported} event(s) from {archive}" + (f"; {present} were there already" if present else ""))


def main() -> None:
    import atexit
    import gc

    # The interpreter's last collections at exit walk every object SQLAlchemy and httpx made at
    # import: 0.2 s of a 6 s reconcile here, for nothing, since the ledger and the HTTP clients
    # are closed explicitly before (State.close). Frozen, the heap is left for the OS to reclaim.
    atexit.register(gc.freeze)
    cli(prog_name="filekeeper")
