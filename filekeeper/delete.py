"""The delete workflow of ``filekeeper delete``: journal, send, record.

Each delete is written down before it is sent (the journal a later reconcile settles if this
process dies), sent, and recorded with its outcome. "Already gone" is said only of a file the
ledger knows, and only on the provider's own not-found answer; an id neither knows is an error
and leaves no trace.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from .errors import FileNotFoundAtProvider, ProviderError
from .records import DeleteResult
from .schema import Status

if TYPE_CHECKING:
    from .config import Account
    from .ledger import Ledger
    from .providers import Provider


def delete_files(
    ledger: Ledger, remote: Provider, account: Account, account_id: int, file_ids: Sequence[str]
) -> list[DeleteResult]:
    """Delete each file at the provider and record it; one result per id, in order."""
    results = []
    for file_id in file_ids:
        with ledger.write() as w:
            known = w.find(account_id, file_id)
            [intent] = w.add_intents(account_id, [(file_id, known and known.ledger_id, "delete")], run_id=None)
        try:
            existed = remote.delete(file_id)
        except FileNotFoundAtProvider as e:
            with ledger.write() as w:
                w.void_intents([intent])
                if known is None:
                    missing = ProviderError(
                        f"no such file {file_id} in account {account.name!r}: neither the ledger nor "
                        f"{account.provider} knows it; nothing was deleted",
                        provider=e.provider,
                        status=e.status,
                    )
                    results.append(DeleteResult(file_id, account.name, account.provider, error=missing))
                    continue
                if known.status in (Status.DELETED, Status.EXPIRED):  # deleted before: nothing new to record
                    results.append(DeleteResult(file_id, account.name, account.provider, True, known))
                    continue
                record = w.mark_deleted(account_id, file_id, already_gone=True)
            results.append(DeleteResult(file_id, account.name, account.provider, True, record))
            continue
        except ProviderError as e:
            if not e.retryable:  # a definite refusal: nothing was deleted
                with ledger.write() as w:
                    w.void_intents([intent])
            # else the request may have gone through: the intent stays for reconcile to settle
            results.append(DeleteResult(file_id, account.name, account.provider, error=e))
            continue
        with ledger.write() as w:
            record = w.mark_deleted(account_id, file_id, already_gone=not existed)
            w.void_intents([intent])
        results.append(DeleteResult(file_id, account.name, account.provider, not existed, record))
    return results
