"""The delete workflow of ``filekeeper delete``: journal, send, record.

Each delete is written down before it is sent (the journal a later reconcile settles if this
process dies), sent, and recorded with its outcome. "Already gone" is said only of a file the
ledger knows, and only on the provider's own not-found answer; an id neither knows is an error
and leaves no trace.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Protocol

from .errors import GoneNotRecorded, Interrupted, LedgerError, ProviderError
from .records import DeleteResult, FileRecord
from .schema import DeleteKind, Status, utcnow

if TYPE_CHECKING:
    from .config import Account
    from .ledger import Ledger


class Deleter(Protocol):
    """What sends one delete: a provider adapter, or the OpenAI SDK's own request (:mod:`.sdk`)."""

    def delete(self, file_id: str) -> bool:
        """True if deleted; False on the provider's own "no such file"; ProviderError otherwise."""
        ...


def delete_files(ledger: Ledger, remote: Deleter, account: Account, file_ids: Sequence[str]) -> list[DeleteResult]:
    """Delete each file at the provider and record it; one result per id, in order. An account the
    ledger has never seen is recorded only once a delete there is done (an id nobody knows leaves
    no trace). Ctrl-C stops it: what was done is returned as done, the delete in flight as
    unknown (its journal entry lets the next reconcile record it), the rest as not done."""
    results: list[DeleteResult] = []
    try:
        _delete_each(ledger, remote, account, file_ids, results)
    except KeyboardInterrupt:
        in_flight = file_ids[len(results)] if len(results) < len(file_ids) else None
        for file_id in file_ids[len(results) :]:
            why = (
                "interrupted while its delete was on its way: it may be deleted or not, and the next reconcile "
                "records which"
                if file_id == in_flight
                else "not deleted: interrupted before it was sent"
            )
            results.append(DeleteResult(file_id, account.name, account.provider, error=Interrupted(why)))
    except _LedgerFailed as stop:
        # What was done is returned as done; nothing more is sent while its outcome cannot be recorded.
        unrecorded = stop.unrecorded
        if unrecorded is not None:
            gone = isinstance(unrecorded, GoneNotRecorded) and unrecorded.already_gone
            results.append(DeleteResult(file_ids[len(results)], account.name, account.provider, gone, error=unrecorded))
        for file_id in file_ids[len(results) :]:
            why = LedgerError(f"not deleted: not sent, as the ledger cannot be written ({stop})")
            results.append(DeleteResult(file_id, account.name, account.provider, error=why))
    return results


class _LedgerFailed(Exception):
    """The ledger failed mid-way: the deletes not yet sent are not sent. ``unrecorded``: the
    error of the one the provider answered and the ledger could not record, if any."""

    def __init__(self, reason: str, unrecorded: LedgerError | None = None) -> None:
        super().__init__(reason)
        self.unrecorded = unrecorded


def _delete_each(
    ledger: Ledger, remote: Deleter, account: Account, file_ids: Sequence[str], results: list[DeleteResult]
) -> None:
    with ledger.read() as r:
        row = r.account_row(account.name)
    account_id = row.id if row is not None else None
    for file_id in file_ids:
        if account_id is None:
            result, account_id = _delete_unrecorded(ledger, remote, account, file_id)
            results.append(result)
            continue
        try:
            with ledger.write() as w:
                known = w.find(account_id, file_id)
                entry = (file_id, known and known.ledger_id, DeleteKind.DELETE)
                [intent] = w.add_intents(account_id, [entry], run_id=None)
        except LedgerError as e:
            raise _LedgerFailed(str(e)) from None
        results.append(_send_and_record(ledger, remote, account, account_id, file_id, known, intent))


@contextmanager
def _recording(answer: str, *, already_gone: bool | None, journalled: bool = True) -> Iterator[None]:
    """The ledger failing as the provider's ``answer`` is recorded. ``already_gone``: whether the
    provider had no such file, or deleted it then (False); None: the file is still there."""
    try:
        yield
    except LedgerError as e:
        then = (
            "its journal entry stays, and a `filekeeper reconcile --apply` from 15 minutes on records what became "
            "of the file (until then, the delete could still be running)"
            if journalled
            else "the ledger had no record of the file, so none is left wrong"
        )
        message = f"{answer}, but the ledger could not record it ({e}); {then}"
        unrecorded = (
            LedgerError(message) if already_gone is None else GoneNotRecorded(message, already_gone=already_gone)
        )
        raise _LedgerFailed(str(e), unrecorded) from None


def _send_and_record(
    ledger: Ledger,
    remote: Deleter,
    account: Account,
    account_id: int,
    file_id: str,
    known: FileRecord | None,
    intent: int,
) -> DeleteResult:
    """Send one journalled delete and record its outcome."""
    try:
        existed = remote.delete(file_id)  # False: the provider's own "no such file"
    except ProviderError as e:
        if e.status == 403 and known is not None and _expired_at_provider(known):
            # Gemini's 403 for a file it no longer has, and it deleted this one itself, on time.
            with _recording("the provider no longer has it (it expired there)", already_gone=True), ledger.write() as w:
                w.void_intents([intent])
                w.settle_file_intents(account_id, file_id)
                record = w.found_expired(account_id, known)
            return DeleteResult(file_id, account.name, account.provider, True, record)
        if not e.retryable:  # a definite refusal: nothing was deleted
            with _recording(f"not deleted ({e.message})", already_gone=None), ledger.write() as w:
                w.void_intents([intent])
        # else the request may have gone through: the intent stays for reconcile to settle
        return DeleteResult(file_id, account.name, account.provider, error=e)
    answer = "deleted at the provider" if existed else "the provider has no such file"
    with _recording(answer, already_gone=not existed), ledger.write() as w:
        w.void_intents([intent])
        w.settle_file_intents(account_id, file_id)  # and any earlier attempt's, now answered
        if not existed and known is None:
            return DeleteResult(file_id, account.name, account.provider, error=_no_such_file(account, file_id))
        if not existed and known is not None and known.status in (Status.DELETED, Status.EXPIRED):
            # Deleted before: nothing new to record.
            return DeleteResult(file_id, account.name, account.provider, True, known)
        record = w.mark_deleted(account_id, file_id, already_gone=not existed)
    return DeleteResult(file_id, account.name, account.provider, not existed, record)


def _delete_unrecorded(
    ledger: Ledger, remote: Deleter, account: Account, file_id: str
) -> tuple[DeleteResult, int | None]:
    """A delete in an account the ledger has no row for (so none of its files): sent without a
    journal entry (there is no ledger row it could leave wrong), recorded if it was done, with
    the account then (its ledger id is returned, None while it is still unrecorded)."""
    try:
        existed = remote.delete(file_id)
    except ProviderError as e:
        return DeleteResult(file_id, account.name, account.provider, error=e), None
    if not existed:
        return DeleteResult(file_id, account.name, account.provider, error=_no_such_file(account, file_id)), None
    with _recording("deleted at the provider", already_gone=False, journalled=False):
        account_id = ledger.ensure_account(account)
        with ledger.write() as w:
            record = w.mark_deleted(account_id, file_id, already_gone=False)
    return DeleteResult(file_id, account.name, account.provider, False, record), account_id


def _expired_at_provider(record: FileRecord) -> bool:
    return record.provider_expires_at is not None and record.provider_expires_at <= utcnow()


def _no_such_file(account: Account, file_id: str) -> ProviderError:
    return ProviderError(
        f"no such file {file_id} in account {account.name!r}: neither the ledger nor {account.provider} knows it; "
        "nothing was deleted",
        provider=account.provider,
        status=404,
    )
