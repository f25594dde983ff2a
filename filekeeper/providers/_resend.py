"""What runs before a failed request is sent again: a check its sender sets for the requests it
makes (see :func:`checked_before_resending`), which :class:`~._http.HTTP` runs before a retry."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

#: what runs before a request is sent again (see :func:`checked_before_resending`)
BEFORE_RESENDING: ContextVar[Callable[[BaseException | None], None] | None] = ContextVar(
    "filekeeper_before_resending", default=None
)


@contextmanager
def checked_before_resending(check: Callable[[BaseException | None], None]) -> Iterator[None]:
    """Within: before a request that failed is sent again, ``check(its error)`` runs, in the
    sending thread, after the wait; it raises (:class:`~filekeeper.errors.NotResent`) to send no
    more. A retry may come a minute after the first attempt (a 429's Retry-After): a reconcile
    re-checks the file in the ledger then, as it did before the first."""
    token = BEFORE_RESENDING.set(check)
    try:
        yield
    finally:
        BEFORE_RESENDING.reset(token)
