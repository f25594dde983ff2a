"""``filekeeper doctor``: where things are, what is in effect and why, and what looks wrong.

Reads settings, the environment and the ledger's schema revision; changes nothing (a ledger that
does not exist yet is not created). With ``online``, one list request per account says whether
its key and URL work.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import FilekeeperError, ProviderError, redact

if TYPE_CHECKING:
    from .config import Account, Settings
    from .providers import Provider


@dataclass(frozen=True)
class AccountCheck:
    """One account as filekeeper would use it now."""

    account: Account
    key_set: bool
    key_fingerprint: str | None
    #: what is wrong with its key (not set, unusable), or None
    key_problem: str | None
    in_ledger: bool
    #: with --online: "ok", or what the one list request met ("auth failed: …", "unreachable: …")
    online: str | None = None

    @property
    def problems(self) -> list[str]:
        out = [f"{self.account.name}: {self.key_problem}"] if self.key_problem else []
        if self.online not in (None, "ok"):
            out.append(f"{self.account.name}: {self.online}")
        return out

    def to_json(self) -> dict[str, Any]:
        a = self.account
        limits = a.limits.as_dict()
        return {
            "account": a.name,
            "provider": a.provider,
            "base_url": a.base_url,
            "api_key_env": a.api_key_env,
            "api_key_fallbacks": list(a.api_key_fallbacks),
            "api_key_env_used": a.key_variable if self.key_set else None,
            "key_set": self.key_set,
            "key_fingerprint": self.key_fingerprint,
            "key_problem": self.key_problem,
            "in_ledger": self.in_ledger,
            "limits": {k: {"value": v, "from": a.sources.get(k, "built-in")} for k, v in limits.items()},
            "purposes": _listed(a.rules.purposes, a.sources.get("purposes")),
            "formats": _listed(a.rules.formats, a.sources.get("formats")),
            "provider_expiry_seconds": dict(sorted(a.provider_expiry.items())),
            "generated_retention_days": {
                "value": a.generated_retention_days,
                "from": a.sources.get("generated_retention_days", "built-in"),
            },
            "base_url_from": a.sources.get("base_url", "built-in"),
            "api_key_env_from": a.sources.get("api_key_env", "built-in"),
            "online": self.online,
        }


def _listed(values: frozenset[str] | None, source: str | None) -> dict[str, Any]:
    return {"value": "any" if values is None else sorted(values), "from": source or "built-in"}


@dataclass(frozen=True)
class Diagnosis:
    """What `filekeeper doctor` found."""

    home: Path
    config_path: Path
    config_exists: bool
    ledger: str
    #: current, empty, behind, newer, missing (no ledger yet), or unreadable
    ledger_state: str
    ledger_revision: str | None
    ledger_head: str
    ledger_problem: str | None
    accounts: list[AccountCheck] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        out = [f"ledger: {self.ledger_problem}"] if self.ledger_problem else []
        for a in self.accounts:
            out += a.problems
        return out

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "version": __version__,
            "home": str(self.home),
            "config": {"path": str(self.config_path), "exists": self.config_exists},
            "ledger": {
                "url": self.ledger,
                "state": self.ledger_state,
                "revision": self.ledger_revision,
                "head": self.ledger_head,
                "problem": self.ledger_problem,
            },
            "accounts": [a.to_json() for a in self.accounts],
            "problems": self.problems,
        }


def ledger_location(settings: Settings) -> str:
    """The ledger's URL as it can be shown: a SQLite file's path, or the URL without its password."""
    if settings.ledger_path is not None:
        return str(settings.ledger_path)
    return redact(settings.database_url)


def diagnose(
    settings: Settings,
    *,
    online: bool = False,
    connect: Callable[[Account], Provider] | None = None,
    ledger_accounts: Callable[[], Mapping[str, tuple[int, str]]] | None = None,
) -> Diagnosis:
    """Settings, the ledger's schema and every account (configured, or with a key set here), and
    with ``online`` one list request each. Nothing is changed."""
    from . import migrate  # the revision and head; imports alembic, as `db current` does

    problem = None
    revision = None
    head = ""
    state = "unreadable"
    try:
        status = migrate.status(settings)
        revision, head = status.current, status.head
        missing = settings.ledger_path is not None and not settings.ledger_path.exists()
        state = "missing" if missing else status.state
        if state == "newer":
            problem = f"written by a newer filekeeper (revision {revision}; this one knows up to {head})"
        elif state == "behind":
            problem = f"at revision {revision}, behind {head}: the next command upgrades it (a backup copy first)"
    except FilekeeperError as e:
        problem = str(e)
    known: Mapping[str, tuple[int, str]] = {}
    if ledger_accounts is not None and state == "current":  # opening one behind would upgrade it
        try:
            known = ledger_accounts()
        except FilekeeperError as e:
            problem = problem or str(e)
    checks = [
        _check_account(a, online=online, connect=connect, in_ledger=a.name in known) for a in settings.known_accounts()
    ]
    return Diagnosis(
        home=settings.home,
        config_path=settings.config_path,
        config_exists=settings.config_path.is_file(),
        ledger=ledger_location(settings),
        ledger_state=state,
        ledger_revision=revision,
        ledger_head=head,
        ledger_problem=problem,
        accounts=checks,
    )


def _check_account(
    account: Account, *, online: bool, connect: Callable[[Account], Provider] | None, in_ledger: bool
) -> AccountCheck:
    key_set = account.key_is_set()
    fingerprint = problem = None
    if not key_set:
        problem = f"no API key: set {' or '.join(account.key_variables)}"
    else:
        try:
            fingerprint = account.key_fingerprint()
        except FilekeeperError as e:
            problem = str(e)
    result = None
    if online and problem is None and connect is not None:
        result = _try_listing(account, connect)
    return AccountCheck(account, key_set, fingerprint, problem, in_ledger, result)


def _try_listing(account: Account, connect: Callable[[Account], Provider]) -> str:
    """One list request: "ok", or what it met."""
    try:
        remote = connect(account)
    except FilekeeperError as e:
        return f"error: {e}"
    try:
        remote.first_page()
    except ProviderError as e:
        if e.status in (401, 403):
            return f"auth failed: {e}"
        if e.status is None:
            return f"unreachable: {e}"
        return f"error: {e}"
    finally:
        remote.close()
    return "ok"
