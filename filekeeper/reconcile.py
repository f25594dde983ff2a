"""Reconcile: make the ledger and a provider agree, safely enough to run unattended from cron.

An applying reconcile acts only on information that proves what it is about to do; when in doubt
it stops, changes nothing, and says why and how to proceed. In order:

1. with ``--apply``, take the account's lock (a ``running`` row in ``reconcile_runs``);
2. read the ledger's side (:class:`~.reconcile_plan.Snapshot`) and stream the provider's listing
   through :func:`~.reconcile_plan.classify`; a listing that fails, cycles, repeats a file or
   runs past its page budget raises before anything changes;
3. hold the plan against the rails: a key the account never used must prove it reaches the same
   account; an empty listing, or one missing most of the files the ledger expects, is refused;
   each absence is confirmed (a retrieve's 404, or a second listing) before a file is called
   missing; ``--max-delete`` bounds the deletes;
4. apply: the ledger-only changes in one transaction, then the deletes, each written down before
   it is sent (a journal the next run settles if this one dies), re-checked in the ledger right
   before it goes, and recorded with its outcome. SIGINT and SIGTERM stop new deletes, let those
   in flight finish, record them, and mark the run interrupted.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from .errors import (
    EXIT_CHANGES,
    EXIT_INTERRUPTED,
    EXIT_OK,
    FilekeeperError,
    FileNotFoundAtProvider,
    IncompleteListing,
    LedgerError,
    NotResent,
    ProviderError,
    ReconcileBusy,
    ReconcileRefused,
    UsageError,
    exit_code_for,
)
from .reconcile_plan import (
    ReconcilePlan,
    Snapshot,
    age,
    classify,
    delete_limit,
    expected_live,
    unlisted,
)
from .records import DeleteJob, DeleteOutcome, ReconcileOptions, iso
from .schema import HELD, DeleteKind, RunStatus, Status, utcnow
from .units import parse_max_delete

if TYPE_CHECKING:
    from .config import Account
    from .ledger import Ledger, Stage
    from .providers import Listing, Provider, RemoteFile

__all__ = ["ReconcileOptions", "ReconcilePlan", "exit_code", "parse_max_delete", "reconcile"]

#: a running reconcile that has not shown a sign of life for this long is taken to have died
#: (unless its process is seen alive on this host)
STALE_AFTER = timedelta(minutes=10)
HEARTBEAT_EVERY = 15.0  # seconds
#: a run on this host whose process is not found is taken over once its heartbeat is this old
QUIET_AFTER = timedelta(seconds=60)
#: how far a list endpoint may lag behind an upload: younger files absent from a listing prove nothing
LIST_LAG = timedelta(minutes=2)
#: a `filekeeper delete` whose intent is older than this has ended, one way or another (its
#: requests give up long before: see the [http] total_seconds)
LOOSE_DELETE_AFTER = timedelta(minutes=15)
#: a listing begun before the lock was taken is used only if no other run of the account was at
#: work since this long before it began: clocks of hosts sharing a ledger a little apart, a
#: delete the server carried out after its client had given up on it
OTHERS_MARGIN = timedelta(minutes=2)
RESULT_BATCH = 50  # delete results written to the ledger per transaction
JOURNAL_AHEAD = 64  # deletes written down per transaction, before they are sent
#: deletes failing in a row (each after its retries) that stop a run sending more: a provider
#: gone down mid-run would otherwise cost every remaining delete its whole retry budget
GIVE_UP_AFTER = 8

Progress = Callable[[str, int, int], None]  # (phase, done, total-or-0)
_Sent = bool | ProviderError | NotResent  # a delete's outcome: existed (True) or already gone, or why not


# --- the lock -----------------------------------------------------------------------------------


def _host_of(actor: str) -> str:
    return actor.rpartition("@")[2]


def _alive_since(pid: int, started: datetime) -> bool:
    """Whether ``pid`` is a live process that was already running at ``started`` (a pid reused
    by a younger process is not the run's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        with open(f"/proc/{pid}/stat") as f:
            ticks = int(f.read().rpartition(")")[2].split()[19])
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime"))
    except (OSError, ValueError, StopIteration, IndexError):
        return True  # no /proc: a live pid is taken to be the run's
    began = datetime.fromtimestamp(boot + ticks / os.sysconf("SC_CLK_TCK"), UTC)
    return began <= started + timedelta(seconds=5)


def _stale(run: Any, now: datetime) -> str | None:
    """Why a running row's process is gone, or None if it may still be working. A process seen
    alive on this host is never taken over, however long its deletes take; one not seen is taken
    over only once its heartbeat has gone quiet too (another container may share the host name,
    but not its process table)."""
    import socket

    if _host_of(run.actor) == socket.gethostname():
        if _alive_since(run.pid, run.started_at):
            return None
        if run.heartbeat_at < now - QUIET_AFTER:
            return f"process {run.pid} is gone (no heartbeat since {iso(run.heartbeat_at)})"
        return None
    if run.heartbeat_at < now - STALE_AFTER:
        return f"no heartbeat since {iso(run.heartbeat_at)}"
    return None


def acquire(ledger: Ledger, account_id: int, *, wait: bool, on_wait: Callable[[str], None] | None = None) -> int:
    """Take the account's reconcile lock: a ``running`` row, inserted under the write lock."""
    announced = False
    while True:
        now = utcnow()
        with ledger.write() as w:
            w.lock_account(account_id)
            running = None
            for holder_row in w.running_runs(account_id):
                if why := _stale(holder_row, now):
                    w.abandon_run(account_id, holder_row.id, why, now)
                else:
                    running = holder_row
            if running is None:
                return w.start_run(account_id, now)
        holder = f"run #{running.id} by {running.actor} (pid {running.pid}), started {iso(running.started_at)}"
        if not wait:
            raise ReconcileBusy(
                f"another reconcile of this account is running: {holder}; try again later, or pass --wait"
            )
        if not announced and on_wait:
            on_wait(f"waiting for {holder} to finish")
            announced = True
        time.sleep(1.0)


class _Run:
    """The lock's row while a run works: heartbeats, and the outcome at the end."""

    def __init__(self, ledger: Ledger, run_id: int | None) -> None:
        self.ledger = ledger
        self.id = run_id
        self.deleting = False  # a delete has been handed to a worker
        self._beat = time.monotonic()

    def heartbeat(self, *, force: bool = False) -> None:
        if self.id is not None and (force or time.monotonic() - self._beat > HEARTBEAT_EVERY):
            with self.ledger.write() as w:
                w.heartbeat(self.id)
            self._beat = time.monotonic()

    def finish(self, status: RunStatus, plan: ReconcilePlan, outcome: str, error: str | None = None) -> None:
        if self.id is not None:
            with self.ledger.write() as w:
                w.finish_run(self.id, status, listed=plan.listed, counts=plan.counts(), outcome=outcome, error=error)


# --- identity -----------------------------------------------------------------------------------


def refuse_shared_identity(
    account: Account, identity: tuple[str, str], others: Iterable[tuple[str, str, set[str]]]
) -> None:
    """Two accounts that are one provider account (same base URL, however spelled, and same key)
    would each see the other's files as orphans: refuse to reconcile either (exit 2), naming both."""
    url, fingerprint = identity
    for name, other_url, fingerprints in others:
        if name != account.name and other_url == url and fingerprint in fingerprints:
            raise UsageError(
                f"accounts {account.name!r} and {name!r} are one provider account (same base URL {url}, "
                f"same API key {fingerprint}): reconciling one would delete the other's files as orphans. "
                "Give each its own key, or use one account name for both"
            )


def _refuse_overlap(plan: ReconcilePlan) -> None:
    """The listing shows files the ledger tracks under another account of the provider: the two
    reach one provider account (a shared key, or two keys of one project), whatever their config."""
    if not plan.elsewhere:
        return
    rf, other = plan.elsewhere[0]
    a = plan.account
    raise UsageError(
        f"accounts {a.name!r} and {other!r} reach one provider account: the listing through {a.name!r} shows "
        f"{len(plan.elsewhere)} file(s) the ledger tracks under {other!r} (such as {rf.id}); reconciling either "
        "would delete the other's files as orphans. Nothing was changed. Give each account its own provider "
        "account, or use one account name for both"
    )


def _check_identity(
    plan: ReconcilePlan, stage: Stage, snapshot: Snapshot, account: Account, options: ReconcileOptions, now: datetime
) -> None:
    """A listing made through a base URL and key this account was never proven to be reached by is
    acted on only if it shows that it reaches the same account: at least half of the files the
    ledger recorded before that URL and key first appeared are in it. (Files uploaded through the
    suspect key itself prove nothing: a teammate's key uploads to the teammate's account.)"""
    identity = account.identity()
    known = snapshot.identities.get(identity)
    if not snapshot.identities:
        plan.key = "first"
        return
    if known is not None and known.proven:
        return
    if options.trust_key:
        plan.key = "trusted"
        return
    since = known.first_seen if known is not None else now
    expected, present = expected_live(plan, stage, now, LIST_LAG, ours_only=False, created_before=since)
    if expected and present * 2 >= expected:
        plan.key = "rotated"
        return
    url, fingerprint = identity
    url_known = url in {u for u, _ in snapshot.identities}
    key_known = fingerprint in {fp for _, fp in snapshot.identities}
    what = "API key" if url_known else "base URL" if key_known else "base URL and API key"
    seen = f"shows {present} of the {expected} files" if expected else "cannot show any of the files"
    raise ReconcileRefused(
        f"{account.name}: this {what} ({url}, key in {account.api_key_env}, {fingerprint}) was never shown to "
        f"reach this account, and the provider's listing through it {seen} the ledger recorded there before: "
        f"this looks like another account. Nothing was changed. Check {account.api_key_env} and the base URL; "
        "if they are this account's, run again with --trust-key"
    )


# --- the rails on the listing -------------------------------------------------------------------


def _hold_listing(plan: ReconcilePlan, stage: Stage, options: ReconcileOptions, now: datetime) -> None:
    """An empty listing, or one without most of the files the ledger expects, is what a wrong key,
    a wrong URL or a broken list endpoint looks like: refuse it unless told it is right."""
    a = plan.account
    held, _ = expected_live(plan, stage, now, timedelta(0), ours_only=True)  # however young
    if plan.listed == 0 and held and not options.accept_empty:
        raise ReconcileRefused(
            f"{a.name}: the provider listed no files while the ledger holds {held} active; "
            "a wrong API key or base URL looks exactly like this. Nothing was changed. "
            "If the account really is empty, run again with --accept-empty"
        )
    # Young files count too (all but those a list endpoint may still be catching up with): a wrong
    # URL met right after a few uploads must not pass for an account that lost nothing.
    expected, present = expected_live(plan, stage, now, LIST_LAG, ours_only=True)
    absent = expected - present
    if plan.listed and absent * 2 > expected and not options.accept_missing:
        raise ReconcileRefused(
            f"{a.name}: {absent} of the {expected} files the ledger expects at the provider are not in "
            "its listing; a wrong key, a wrong base URL or a listing that hides files looks like this. Nothing was "
            f"changed. Check with `filekeeper reconcile --account {a.name}`; if they really are gone, run again "
            "with --accept-missing"
        )


def _confirm_absences(plan: ReconcilePlan, remote: Provider, concurrency: int, beat: Callable[[], None]) -> None:
    """A file absent from one listing is not yet gone: a retrieve's 404 proves it (or, where the
    provider has no retrieve, a second complete listing). Until then it is kept as it is."""
    if not plan.absent:
        return
    ids = [t.file_id for t in plan.absent if t.file_id]
    outcomes: dict[str, str] = {}
    if remote.retrieve_proves_absence or remote.retrieve_proves_presence:
        outcomes = _retrieve_all(remote, ids, concurrency, beat)
    if not remote.retrieve_proves_absence:
        # A retrieve that finds the file proves it there; anything else it answers proves nothing
        # (Gemini's 403 for a file that may not exist): a second listing decides those.
        undecided = {i for i in ids if outcomes.get(i) != "present"}
        if undecided:
            outcomes.update(_relist(remote, undecided))
    for t in plan.absent:
        outcome = outcomes.get(t.file_id or "", "not checked")
        if outcome == "gone":
            (plan.gone if t.status == Status.UNCLAIMED else plan.missing).append(t)
        elif outcome == "present":
            plan.unconfirmed.append((t, "the listing left it out, but the provider still has it"))
        else:
            plan.unconfirmed.append((t, f"could not confirm it is gone: {outcome}"))
    plan.absent = []


def _retrieve_all(remote: Provider, file_ids: list[str], concurrency: int, beat: Callable[[], None]) -> dict[str, str]:
    from concurrent.futures import ThreadPoolExecutor

    def ask(file_id: str) -> tuple[str, str]:
        try:
            remote.retrieve(file_id)
        except FileNotFoundAtProvider:
            return file_id, "gone"
        except ProviderError as e:
            return file_id, str(e)
        return file_id, "present"

    out = {}
    with ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(file_ids)))) as pool:
        for file_id, outcome in pool.map(ask, file_ids):
            out[file_id] = outcome
            beat()
    return out


def _relist(remote: Provider, file_ids: set[str]) -> dict[str, str]:
    try:
        listed = {rf.id for rf in remote.list_files() if rf.id in file_ids}
    except IncompleteListing as e:
        return dict.fromkeys(file_ids, f"the second listing failed: {e.message}")
    return {i: "present" if i in listed else "gone" for i in file_ids}


# --- the whole run ------------------------------------------------------------------------------


def snapshot(ledger: Ledger, account: Account, account_id: int | None, now: datetime) -> Snapshot:
    if account_id is None:  # a ledger that has never seen the account (a plan changes nothing)
        return Snapshot()
    with ledger.read() as r:
        # A plan takes over no lock, but sees through a dead run's: its journal is settled as it will be.
        dead = [run.id for run in r.running_runs(account_id) if _stale(run, now)]
        return Snapshot(
            identities=r.identities_of(account_id),
            history=r.baselined(account_id),
            baselined_at=r.baselined_at(account_id),
            intents=r.open_intents(account_id, loose_before=now - LOOSE_DELETE_AFTER, dead_runs=dead),
        )


def stage_listing(
    stage: Stage, pages: Iterator[list[RemoteFile]], provider: str, on_page: Callable[[int, int], None]
) -> None:
    """Read the provider's whole listing (:meth:`~.providers.Provider.list_pages`) into ``stage``,
    a page at a time. A page that repeats a file listed before ends it (IncompleteListing); only a
    listing read to its end is marked complete, so nothing can compare a partial one with the
    ledger."""
    for page in pages:
        if (repeated := stage.add_page(page)) is not None:
            raise IncompleteListing(
                f"the provider listed file {repeated} twice (page {stage.pages}); the listing cannot be "
                "trusted, stopped",
                provider=provider,
            )
        on_page(stage.pages, stage.listed)
    stage.finish()


def reconcile(
    ledger: Ledger,
    account: Account,
    account_id: int | None,
    remote: Provider,
    options: ReconcileOptions,
    *,
    progress: Progress | None = None,
    on_wait: Callable[[str], None] | None = None,
    listing: Listing | None = None,
) -> ReconcilePlan:
    """Compare one account's ledger with its provider's listing; with ``options.apply``, act.

    ``account_id`` is None only for a plan of an account the ledger has never recorded. Returns the
    plan (``interrupted`` if SIGINT or SIGTERM stopped its deletes); raises before changing
    anything when a rail holds. ``listing``: one begun before this was called (``remote.list_pages(
    track_ids=False)``, while the ledger opened); an applying run uses it only if no other run
    of the account was at work since shortly before it began, and lists again otherwise.
    """
    plan = ReconcilePlan(account, applied=options.apply, adopt=options.adopt, delete_unclaimed=options.delete_unclaimed)
    if options.apply and account_id is None:
        raise ValueError("an applying reconcile needs the account recorded in the ledger")
    run = _Run(ledger, acquire(ledger, account_id, wait=options.wait, on_wait=on_wait) if options.apply else None)
    plan.run_id = run.id

    def on_page(pages: int, seen: int) -> None:
        if progress:
            progress("listing", seen, 0)
        run.heartbeat()

    stage: Stage | None = None
    try:
        now = utcnow()
        snap = snapshot(ledger, account, account_id, now)
        stage = ledger.stage(account_id, account.provider)
        # Files of a purpose the listing cannot show (Z.AI lists four of its seven) are neither
        # confirmed nor missing: they are left out of the comparison, as they are.
        unseen = stage.snapshot(remote.lists_purpose)
        if listing is None or (run.id is not None and _others_since(ledger, account_id, run.id, listing.began)):
            if listing is not None:
                listing.close()
            listing = remote.list_pages(track_ids=False)  # the stage finds repeated files itself
        try:
            stage_listing(stage, listing, remote.name, on_page)
        finally:
            listing.close()  # read to its end, or stopped: it asks for no more pages either way
        classify(plan, snap, stage, now, options.min_age)
        unlisted(plan, unseen, now)
        _refuse_overlap(plan)
        _check_identity(plan, stage, snap, account, options, now)
        _hold_listing(plan, stage, options, now)
        _confirm_absences(plan, remote, options.concurrency, run.heartbeat)
        plan.max_delete = delete_limit(options.max_delete, plan.listed)
        if options.apply:
            assert account_id is not None
            _apply(ledger, account_id, remote, plan, options, now, progress, run)
    except KeyboardInterrupt:
        _drop(plan, stage)
        if run.deleting:  # a third signal, say, while the deletes in flight were waited for
            why = (
                f"interrupted during its deletes ({len(plan.deleted)} answered); any sent but not "
                "recorded are in the delete journal, for the next run to settle"
            )
        else:
            why = "interrupted before its deletes"
        run.finish(RunStatus.INTERRUPTED, plan, "interrupted", why)
        raise
    except BaseException as e:
        _drop(plan, stage)
        status = RunStatus.ABORTED if isinstance(e, ReconcileRefused) else RunStatus.FAILED
        run.finish(status, plan, str(status), str(e) or type(e).__name__)
        raise
    plan.detach()
    if plan.interrupted:
        run.finish(RunStatus.INTERRUPTED, plan, f"interrupted after {len(plan.deleted)} delete(s)")
    elif plan.errors:
        run.finish(
            RunStatus.FAILED,
            plan,
            f"done with {len(plan.errors)} error(s)",
            "; ".join(f"{i}: {e}" for i, e in plan.errors[:20]),
        )
    else:
        run.finish(RunStatus.DONE, plan, "done")
    return plan


def _others_since(ledger: Ledger, account_id: int | None, run_id: int, began: datetime) -> bool:
    """Whether another applying run of the account may have deleted files since a listing began
    (running, or finished since shortly before): its deletes could be in that listing, unrecorded
    when the run's journal was read. Asked once this run holds the lock, so that none can start."""
    assert account_id is not None
    with ledger.read() as r:
        return r.runs_since(account_id, began - OTHERS_MARGIN, besides=run_id) > 0


def _drop(plan: ReconcilePlan, stage: Stage | None) -> None:
    """A run that raises hands back no plan: its staging goes at once (the counts stay)."""
    plan.close()
    if stage is not None:
        stage.close()


def exit_code(outcomes: Iterable[ReconcilePlan | FilekeeperError], *, changes: bool = False) -> int:
    """The exit code of a reconcile of one or more accounts: 130 if interrupted; else the most
    severe failure (a delete that failed counts as 1); else, with ``changes`` (--exit-code), 4
    when anything had work."""
    outcomes = list(outcomes)
    failures = [o for o in outcomes if isinstance(o, FilekeeperError)]
    plans = [o for o in outcomes if isinstance(o, ReconcilePlan)]
    if any(p.interrupted for p in plans):
        return EXIT_INTERRUPTED
    if failures or any(p.errors for p in plans):
        return max(exit_code_for(failures), 1)
    if changes and any(p.has_work for p in plans):
        return EXIT_CHANGES
    return EXIT_OK


# --- apply --------------------------------------------------------------------------------------


def _eligible(
    plan: ReconcilePlan, files: Iterable[tuple[str, datetime | None]], min_age: timedelta, now: datetime
) -> list[str]:
    """The ids old enough to act on; the rest are skipped, with the reason."""
    out = []
    for file_id, created_at in files:
        if created_at is None:
            plan.skipped.append((file_id, "the provider gave no creation time"))
        elif created_at > now - min_age:
            plan.skipped.append((file_id, f"younger than --min-age ({age(min_age)}): may be mid-upload"))
        else:
            out.append(file_id)
    return out


def _apply(
    ledger: Ledger,
    account_id: int,
    remote: Provider,
    plan: ReconcilePlan,
    options: ReconcileOptions,
    now: datetime,
    progress: Progress | None,
    run: _Run,
) -> None:
    orphans = _eligible(plan, ((rf.id, rf.created_at) for rf in plan.orphans), options.min_age, now)
    unclaimed: list[tuple[str, datetime | None]] = [(rf.id, rf.created_at) for rf in plan.unclaimed_new]
    unclaimed += [(rf.id, rf.created_at) for _, rf in plan.unclaimed]
    claimable = _eligible(plan, unclaimed, options.min_age, now) if options.adopt or options.delete_unclaimed else []
    jobs = [
        DeleteJob(t.file_id, DeleteKind.EXPIRED, t.ledger_id)
        for t in plan.expired
        if t.file_id and t.file_id in plan.expired_present
    ]
    if not options.adopt:
        jobs += [DeleteJob(file_id, DeleteKind.ORPHAN) for file_id in orphans]
    if options.delete_unclaimed:
        jobs += [DeleteJob(file_id, DeleteKind.UNCLAIMED) for file_id in claimable]
    if len(jobs) > plan.max_delete:
        raise ReconcileRefused(
            f"{plan.account.name}: the plan would delete {len(jobs)} files, more than --max-delete "
            f"{options.max_delete}; nothing was changed. Review it with `filekeeper reconcile --account "
            f"{plan.account.name}` and, if it is right, run again with --max-delete {len(jobs)}"
        )
    _apply_ledger(ledger, account_id, plan, options, now, run.id, set(orphans) if options.adopt else set(), claimable)
    _delete_all(ledger, account_id, remote, jobs, plan, options.concurrency, progress, run)


def _apply_ledger(
    ledger: Ledger,
    account_id: int,
    plan: ReconcilePlan,
    options: ReconcileOptions,
    now: datetime,
    run_id: int | None,
    adopt_orphans: set[str],
    claimable: list[str],
) -> None:
    """Every change that needs no request, in one transaction."""
    account = plan.account
    retention = account.limits.retention_days
    generated_days = account.generated_retention_days  # 0: kept for ever, as retention_days
    with ledger.write() as w:
        if plan.new_key_accepted:
            proven_by = "listing" if plan.key == "rotated" else "trusted"
            w.prove_identity(account_id, account, proven_by=proven_by, detail={"run_id": run_id})
        w.note_account(account)  # the key (now proven) and URL this run acted with
        w.set_baseline(account_id, now)  # from now on, what appears unknown is an orphan
        for t, rf in plan.settled:
            if why := w.settle(account_id, t, rf, run_id=run_id):
                plan.skipped.append((rf.id, why))
        for t in plan.failed_pending:
            w.fail_pending(account_id, t, run_id=run_id)
        for t in plan.missing:
            w.mark_missing(account_id, t, run_id=run_id)
        for t in plan.gone:
            w.mark_gone(account_id, t, run_id=run_id)
        for t in plan.reappeared:
            w.reappear(account_id, t, run_id=run_id)
        for t in plan.expired:
            if t.file_id not in plan.expired_present:
                w.mark_expired(account_id, t, now=now, run_id=run_id)
        for t, rf in plan.drift:
            w.record_drift(account_id, t, rf, run_id=run_id)
        for rf in plan.unclaimed_new:
            w.record_unclaimed(account_id, rf, run_id=run_id)
        for rf in plan.generated_new:
            # From when it was found, not made: a first reconcile must not delete at once what the
            # provider made long ago, which may be results someone still needs.
            keep_until = now + timedelta(days=generated_days) if generated_days else None
            w.record_generated(account_id, rf, expires_at=rf.expires_at or keep_until, run_id=run_id)
        if options.adopt:
            remotes = {rf.id: rf for rf in [*plan.orphans, *plan.unclaimed_new, *(rf for _, rf in plan.unclaimed)]}
            for file_id in [*adopt_orphans, *claimable]:
                rf = remotes[file_id]
                # Ours from now on: the retention policy runs from the adoption, so that adopting an old
                # file does not hand it to the next run as already expired.
                expires = rf.expires_at or (now + timedelta(days=retention) if retention else None)
                w.adopt(account_id, rf, expires_at=expires, run_id=run_id)
                plan.adopted.append(file_id)
        w.record_deletes(
            account_id,
            [
                DeleteOutcome(DeleteJob(i.file_id, i.kind, i.file_pk, i.id), existed=True, settled=True)
                for i in plan.intents_done
                if i.kind != DeleteKind.EVICT  # an eviction's event was written when it was marked
            ],
            run_id=run_id,
        )
        for i in plan.restored:
            assert i.file_pk is not None
            w.undo_evict(account_id, i.file_pk, i.file_id, run_id=run_id)
        # Evictions' journal rows go without a new event (the eviction wrote its own).
        evictions = [i.id for i in plan.intents_done if i.kind == DeleteKind.EVICT]
        w.void_intents([i.id for i in plan.intents_void] + evictions)
        w.fold_usage(account_id)  # what all the above added to the account's usage rows


def _still_wanted(job: DeleteJob, status: str | None) -> str | None:
    """Why a delete must not be sent after all (the ledger moved on since the listing), or None."""
    if job.kind == DeleteKind.ORPHAN and status in HELD:
        return f"became {status} in the ledger since the listing"
    if job.kind == DeleteKind.EXPIRED and status not in (Status.ACTIVE, Status.GENERATED):
        return f"no longer active in the ledger ({status})"
    if job.kind == DeleteKind.UNCLAIMED and status != Status.UNCLAIMED:
        return f"no longer unclaimed in the ledger ({status})"
    return None


@contextmanager
def _interrupts_as_requests() -> Iterator[threading.Event]:
    """While deletes are in flight, SIGINT and SIGTERM ask the delete loop to stop (it looks between
    steps) instead of raising wherever the main thread happens to be, which could fall between a
    delete's answer and its record. A second signal raises KeyboardInterrupt as usual."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop  # signals reach only the main thread; a library caller in a thread handles its own
        return

    def request_stop(_signum: int, _frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def _delete_all(
    ledger: Ledger,
    account_id: int,
    remote: Provider,
    jobs: list[DeleteJob],
    plan: ReconcilePlan,
    concurrency: int,
    progress: Progress | None,
    run: _Run,
) -> None:
    """Delete concurrently, at most ``concurrency`` in flight.

    This thread schedules. Deletes are written down (the journal) a batch at a time before any of
    them is sent; right before handing deletes to free workers, it re-checks those files in the
    ledger (one query on a connection of its own), and the workers send them at once. Each
    completion comes back on a queue, those that came together taken at once: the fewer turns
    the loop takes, the fewer re-check queries (each a few ms beside 32 busy threads, since this
    thread waits for the interpreter's lock). Outcomes are recorded in
    batches, each removing its journal rows. On SIGINT/SIGTERM nothing new is sent; what is in
    flight finishes and is recorded, and the plan says it was interrupted.
    """
    if not jobs:
        return
    from concurrent.futures import Future, ThreadPoolExecutor, wait
    from queue import Empty, SimpleQueue

    from .providers import checked_before_resending

    def send(job: DeleteJob) -> _Sent:
        def still_wanted(failed: BaseException | None) -> None:
            # A retry may go a minute after the first attempt (a 429's Retry-After): the file is
            # re-checked again first, here in the worker (retries are rare; the loop's probe is
            # its thread's).
            try:
                with ledger.read() as r:
                    status = r.statuses_of(account_id, [job.file_id]).get(job.file_id)
            except LedgerError as e:
                raise NotResent(f"not sent again after: {failed}; the ledger could not be read: {e}") from None
            if why := _still_wanted(job, status):
                raise NotResent(f"not sent again after: {failed}; {why}")

        try:
            with checked_before_resending(still_wanted):
                return remote.delete(job.file_id)
        except FileNotFoundAtProvider:
            return False
        except (ProviderError, NotResent) as e:
            return e

    queue = deque(jobs)
    journaled: deque[DeleteJob] = deque()
    done: list[DeleteOutcome] = []
    void: list[int] = []
    finished = 0
    failing: list[str] = []  # the errors of the deletes that failed since the last one that went through

    def record() -> None:
        with ledger.write() as w:
            w.record_deletes(account_id, done, run_id=run.id)
            w.void_intents(void)
            if run.id is not None:
                w.heartbeat(run.id)
        done.clear()
        void.clear()

    def journal_more() -> None:
        batch = [queue.popleft() for _ in range(min(JOURNAL_AHEAD, len(queue)))]
        with ledger.write() as w:
            ids = w.add_intents(
                account_id,
                [(j.file_id, j.file_pk, j.kind) for j in batch],
                run_id=run.id,
            )
        for job, intent_id in zip(batch, ids, strict=True):
            job.intent_id = intent_id
        journaled.extend(batch)

    def leave_unsent(why: str) -> None:
        void.extend(j.intent_id for j in journaled if j.intent_id is not None)
        plan.skipped += [(j.file_id, why) for j in (*journaled, *queue)]
        journaled.clear()
        queue.clear()

    def collect(completed: Iterable[Future[_Sent]], in_flight: dict[Future[_Sent], DeleteJob]) -> None:
        nonlocal finished
        for future in completed:
            job = in_flight.pop(future)
            outcome = future.result()
            finished += 1
            if isinstance(outcome, NotResent):
                # Its first attempt failed, and may have gone through (a lost response): the
                # intent stays, for the next run to settle against its listing.
                plan.skipped.append((job.file_id, str(outcome)))
            elif isinstance(outcome, ProviderError):
                failing.append(str(outcome))
                plan.errors.append((job.file_id, str(outcome)))
                if job.intent_id is not None and not outcome.retryable:
                    void.append(job.intent_id)  # refused: nothing was deleted
                # else it may have gone through: the intent stays, for the next run to settle
            else:
                failing.clear()
                plan.deleted.append(job.file_id)
                done.append(DeleteOutcome(job, existed=outcome))

    pool = ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="reconcile")
    in_flight: dict[Future[_Sent], DeleteJob] = {}
    # Each delete's future lands here as it completes: one hand-off per delete, where waiting on
    # all those in flight would register with each of them on every turn of the loop.
    completions: SimpleQueue[Future[_Sent]] = SimpleQueue()

    def completed() -> list[Future[_Sent]]:
        """Those completed: at least one, unless a second goes by without one (a heartbeat is due)."""
        out = []
        try:
            out.append(completions.get(timeout=1.0))
            while True:
                out.append(completions.get_nowait())
        except Empty:
            return out

    try:
        with ledger.status_probe(account_id) as statuses_now:

            def next_jobs(room: int) -> list[DeleteJob]:
                """Up to ``room`` deletes to send at once, re-checked in the ledger (one query for
                them all) right before they go."""
                nonlocal finished
                out: list[DeleteJob] = []
                while len(out) < room:
                    if not journaled:
                        if not queue:
                            break
                        journal_more()
                    batch = [journaled.popleft() for _ in range(min(room - len(out), len(journaled)))]
                    now_status = statuses_now([job.file_id for job in batch])
                    for job in batch:
                        why = _still_wanted(job, now_status.get(job.file_id))
                        if why is None:
                            out.append(job)
                            continue
                        plan.skipped.append((job.file_id, why))
                        assert job.intent_id is not None
                        void.append(job.intent_id)
                        finished += 1
                return out

            def refill() -> None:
                if not stop.is_set() and len(failing) < GIVE_UP_AFTER and len(in_flight) < concurrency:
                    for job in next_jobs(concurrency - len(in_flight)):
                        run.deleting = True
                        future = pool.submit(send, job)
                        in_flight[future] = job
                        future.add_done_callback(completions.put)

            with _interrupts_as_requests() as stop:
                try:
                    while True:
                        refill()
                        if not in_flight:
                            break
                        collect(completed(), in_flight)
                        # The slots just freed are filled before anything else is written, so
                        # that the ledger's writes overlap deletes in flight instead of idling
                        # their slots; the journal is written ahead while there is time.
                        refill()
                        if len(journaled) < concurrency and queue:
                            journal_more()
                        if len(done) + len(void) >= RESULT_BATCH:
                            record()
                        run.heartbeat()
                        if progress:
                            progress("deleting", finished, len(jobs))
                except KeyboardInterrupt:
                    # A second interrupt: what is in flight is still waited for and recorded if
                    # it can be; otherwise the journal is left for the next run to settle.
                    stop.set()
                    collect(wait(in_flight).done, in_flight)
                # Stopped (by SIGINT/SIGTERM), or given up (the provider failed GIVE_UP_AFTER
                # deletes in a row): nothing more was sent, and the rest wait for the next run,
                # each said not sent.
                if stop.is_set():
                    plan.interrupted = True
                    leave_unsent("not sent: interrupted")
                elif journaled or queue:
                    leave_unsent(f"not sent: {len(failing)} deletes in a row failed (the last: {failing[-1]})")
        record()
    except LedgerError as e:
        sent = len(plan.deleted) + len(in_flight)
        raise LedgerError(
            f"{e}; {sent} delete(s) had been sent: they are in the delete journal, and the next reconcile "
            "records what became of them"
        ) from None
    finally:
        # In-flight deletes finish either way (their outcome is recorded above, or their intent
        # stays in the journal); nothing queued is started.
        pool.shutdown(wait=True, cancel_futures=True)
