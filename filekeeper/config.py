"""Settings: where the ledger lives, which accounts exist, and their limits.

Read from the environment and ``$FILEKEEPER_HOME/config.toml``. Every problem is a
:class:`ConfigError` naming the file, the key and what is wrong.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import ConfigError, MissingKeyError, UsageError, register_secret
from .profiles import Limits, Profile, PurposeLimits
from .providers import PROFILES, PROVIDERS
from .quota import Rules
from .units import parse_size

LIMIT_KEYS = ("max_files", "max_total_bytes", "max_file_bytes", "retention_days")
#: the limits one purpose's files may have of their own ([providers.NAME.purpose_limits.PURPOSE])
PURPOSE_LIMIT_KEYS = ("max_files", "max_total_bytes", "max_file_bytes")
_PROVIDER_KEYS = {
    "base_url",
    "api_key_env",
    "purposes",
    "formats",
    "generated_retention_days",
    "purpose_limits",
    *LIMIT_KEYS,
}
#: how long files the provider made (batch results) are kept before reconcile deletes them
GENERATED_RETENTION_DAYS = 30
_ACCOUNT_KEYS = {"provider", *_PROVIDER_KEYS}
_HTTP_KEYS = {"attempts", "total_seconds", "backoff_seconds", "timeout_seconds"}
#: [http] key -> (lowest, highest) it may be; those in _HTTP_POSITIVE must also be above 0
_HTTP_BOUNDS = {
    "attempts": (1, 100),
    "total_seconds": (0, 86_400),
    "backoff_seconds": (0, 600),
    "timeout_seconds": (0, 3_600),
}
_HTTP_POSITIVE = {"total_seconds", "timeout_seconds"}
#: the longest retention a setting may ask for, in days: a hundred years
MAX_RETENTION_DAYS = 36_500
_ACCOUNT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def default_home() -> Path:
    from platformdirs import user_data_path

    return user_data_path("filekeeper", appauthor=False)


@dataclass(frozen=True)
class Account:
    """One provider account: where to reach it, which variable holds its key, its limits."""

    name: str
    provider: str
    base_url: str
    api_key_env: str
    limits: Limits
    default_purpose: str
    rules: Rules = field(default_factory=Rules)
    generated_retention_days: int = GENERATED_RETENTION_DAYS
    #: setting -> where its value came from: "built-in", a config file's section, or an env var
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)
    #: variables read for the key when ``api_key_env`` is not set (the provider's SDK reads them too)
    api_key_fallbacks: tuple[str, ...] = ()
    #: seconds after upload at which the provider deletes files by itself, per purpose ("*": all)
    provider_expiry: Mapping[str, int] = field(default_factory=dict)
    #: the key itself, when it comes with a request (the OpenAI SDK's) rather than the environment
    given_key: str | None = field(default=None, repr=False, compare=False)

    def with_key(self, key: str) -> Account:
        """This account, reached with ``key`` (never written anywhere: only its fingerprint is)."""
        register_secret(key)
        return replace(self, given_key=key)

    @property
    def key_variables(self) -> tuple[str, ...]:
        return (self.api_key_env, *self.api_key_fallbacks)

    def key_is_set(self) -> bool:
        return any(os.environ.get(name, "").strip() for name in self.key_variables)

    @property
    def key_variable(self) -> str:
        """The variable the key is read from now (a fallback when only it is set): the one to check."""
        return next((n for n in self.key_variables if os.environ.get(n, "").strip()), self.api_key_env)

    def api_key(self) -> str:
        if self.given_key is not None:
            return _usable(self.given_key, "the request's API key")
        found = [(name, os.environ.get(name, "").strip()) for name in self.key_variables]
        found = [(name, value) for name, value in found if value]
        if not found:
            raise MissingKeyError(self.name, " or ".join(self.key_variables))
        for _, value in found:
            register_secret(value)
        if len({value for _, value in found}) > 1:
            # Two keys, maybe of two projects: using one while the provider's SDK uses the other
            # would track files where they are not. Say which, never what they hold.
            names = " and ".join(name for name, _ in found)
            raise ConfigError(
                f"{names} are both set, to different keys: unset one, or name the one account {self.name!r} "
                "uses with api_key_env in config.toml"
            )
        return _usable(found[0][1], f"the API key in {found[0][0]}", "check that variable")

    def key_fingerprint(self) -> str:
        """A short, one-way identity of the key: enough to notice a change, useless to an attacker."""
        return fingerprint(self.api_key())

    def identity(self) -> tuple[str, str]:
        """Where and as whom this account is reached: its base URL (normalised) and key fingerprint."""
        return identity_url(self.base_url), self.key_fingerprint()


def _usable(key: str, what: str, fix: str = "check it") -> str:
    register_secret(key)  # from now on no error, log or output can show it
    if not key or not (key.isascii() and key.isprintable()) or any(c.isspace() for c in key):
        # An HTTP header cannot carry it; say which variable, never what is in it.
        raise ConfigError(
            f"{what} holds characters an API key cannot have (non-ASCII, spaces or control characters): {fix}"
        )
    return key


def check_base_url(url: str) -> None:
    """A base URL filekeeper will talk to and record; raises ValueError saying what is wrong."""
    from urllib.parse import urlsplit

    if not url.startswith(("http://", "https://")):
        raise ValueError(f"expected an http:// or https:// URL, got {url!r}")
    if any(c.isspace() or not c.isprintable() for c in url):
        raise ValueError(f"a URL cannot hold spaces or control characters: {url!r}")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ValueError(f"not a valid URL: {url!r}") from None
    if parts.username is not None or parts.password is not None:
        # It would end up in the ledger, in reports and in logs: keys belong in the environment.
        raise ValueError(
            "a base URL must not carry credentials (user:password@); put the API key in the variable "
            "named by api_key_env instead"
        )
    if not parts.hostname:
        raise ValueError(f"no host in {url!r}")
    if parts.query or parts.fragment:
        # A ?api_key=... would end up in the ledger and reports: keys belong in the environment.
        raise ValueError(f"a base URL takes no ?query or #fragment: {url!r}")


def identity_url(url: str) -> str:
    """A base URL as an identity: scheme and host in lower case, a default port dropped, loopback
    spelled one way, no trailing slash, so that two spellings of one endpoint compare equal.
    (Migration 0003 keeps a copy: change both, or add a migration.)"""
    from urllib.parse import urlsplit

    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if host in ("localhost", "127.0.0.1", "::1"):
        host = "localhost"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = host if port in (None, {"http": 80, "https": 443}.get(scheme)) else f"{host}:{port}"
    return f"{scheme}://{netloc}{parts.path.rstrip('/')}"


def fingerprint(secret: str) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(secret.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class HttpSettings:
    """How patiently to talk to providers (``[http]`` in config.toml)."""

    attempts: int = 5
    total_seconds: float = 120.0
    backoff_seconds: float = 0.5
    timeout_seconds: float = 60.0


@dataclass(frozen=True)
class Settings:
    home: Path
    config_path: Path
    database_url: str
    providers: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    accounts: Mapping[str, Account] = field(default_factory=dict)
    http: HttpSettings = field(default_factory=HttpSettings)

    @property
    def ledger_path(self) -> Path | None:
        """The SQLite file behind the ledger, or None for any other database."""
        file = sqlite_file(self.database_url)
        return Path(file) if file and file != ":memory:" else None

    def account(self, name: str) -> Account:
        """A configured account, or a provider's implicit account named after it."""
        if name in self.accounts:
            return self.accounts[name]
        if name in PROFILES:
            return self._implicit_account(name)
        known = ", ".join(sorted({*self.accounts, *PROVIDERS}))
        raise UsageError(f"unknown account {name!r} (known: {known})")

    def account_or_default(self, name: str, provider: str) -> Account:
        """An account the ledger knows: as configured, or, if the config no longer names it, with
        its provider's built-in limits (for showing its usage; it has no key or URL here)."""
        try:
            return self.account(name)
        except UsageError:
            profile = PROFILES[provider]
            return Account(
                name, provider, "", "", profile.limits, profile.default_purpose, provider_expiry=profile.expiry
            )

    def resolve(self, provider: str | None = None, account: str | None = None) -> Account:
        """The account a command acts on, from exactly one of --provider and --account."""
        if provider and account:
            raise UsageError("give --provider or --account, not both")
        if provider:
            if provider not in PROFILES:
                raise UsageError(f"unknown provider {provider!r} (choose from {', '.join(PROVIDERS)})")
            return self._implicit_account(provider)
        if account:
            return self.account(account)
        raise UsageError("say which account: --provider NAME or --account NAME")

    def known_accounts(self) -> list[Account]:
        """Configured accounts plus the implicit ones that can be used (key or config present)."""
        found = dict(self.accounts)
        for name, profile in PROFILES.items():
            section = self.providers.get(name, {})
            key_env = section.get("api_key_env", profile.key_env)
            names = (key_env, *profile.key_env_fallbacks) if "api_key_env" not in section else (key_env,)
            if section or any(name and os.environ.get(name) for name in names):
                try:
                    found[name] = self._implicit_account(name)
                except ConfigError:
                    continue
        return [found[k] for k in sorted(found)]

    def _implicit_account(self, provider: str) -> Account:
        return _build_account(provider, provider, {}, self.providers.get(provider, {}), self.config_path)


def _build_account(
    name: str,
    provider: str,
    own: Mapping[str, Any],
    provider_section: Mapping[str, Any],
    path: Path,
) -> Account:
    profile: Profile = PROFILES[provider]
    where = f"[accounts.{name}]" if own else f"[providers.{provider}]"
    env_url = os.environ.get(profile.base_url_env, "").strip() if profile.base_url_env else ""
    if env_url:
        try:
            check_base_url(env_url)
        except ValueError as e:
            raise ConfigError(f"{profile.base_url_env}: {e}") from None
    in_account, in_provider = f"{path} [accounts.{name}]", f"{path} [providers.{provider}]"
    # Where each value came from, most specific first (for `filekeeper doctor`).
    sources: dict[str, str] = {}

    def pick(key: str, *candidates: tuple[Any, str]) -> Any:
        for value, source in candidates:
            if value:
                sources[key] = source
                return value
        return None

    base_url = pick(
        "base_url",
        (own.get("base_url"), in_account),
        (env_url, f"environment {profile.base_url_env}"),
        (provider_section.get("base_url"), in_provider),
        (profile.default_base_url, "built-in"),
    )
    if not base_url:
        raise ConfigError(f"{path}: {where} base_url: required for provider {provider!r}")
    key_env = pick(
        "api_key_env",
        (own.get("api_key_env"), in_account),
        (provider_section.get("api_key_env"), in_provider),
        (profile.key_env, "built-in"),
    )
    if not key_env:
        raise ConfigError(f"{path}: {where} api_key_env: required for provider {provider!r}")
    limits = profile.limits
    rules = Rules(profile.purposes, profile.formats)
    for key in (*LIMIT_KEYS, "purposes", "formats", "generated_retention_days", "purpose_limits"):
        sources[key] = "built-in"
    for section, source in ((provider_section, in_provider), (own, in_account)):
        overrides: dict[str, Any] = {k: section[k] for k in LIMIT_KEYS if k in section}
        if "purpose_limits" in section:
            scoped = dict(limits.by_purpose)
            for purpose, values in section["purpose_limits"].items():
                scoped[purpose] = replace(scoped.get(purpose, PurposeLimits()), **values)
            overrides["by_purpose"] = scoped
            sources["purpose_limits"] = source
        limits = replace(limits, **overrides)
        rules = replace(rules, **{k: section[k] for k in ("purposes", "formats") if k in section})
        sources.update(
            {k: source for k in (*LIMIT_KEYS, "purposes", "formats", "generated_retention_days") if k in section}
        )
    configured = {p for section in (provider_section, own) for p in section.get("purpose_limits", {})}
    for purpose in sorted(configured):
        # A misspelt purpose would be a limit that never applies: the user believes they are covered.
        if rules.purposes is not None and purpose not in rules.purposes:
            known = ", ".join(sorted(rules.purposes)) or "none: its files have no purpose"
            raise ConfigError(
                f"{path}: {where} purpose_limits.{purpose}: {provider} has no purpose {purpose!r} "
                f"(its purposes: {known})"
            )
    return Account(
        name=name,
        provider=provider,
        base_url=str(base_url).rstrip("/"),
        api_key_env=key_env,
        api_key_fallbacks=profile.key_env_fallbacks if sources["api_key_env"] == "built-in" else (),
        provider_expiry=profile.expiry,
        limits=limits,
        default_purpose=profile.default_purpose,
        rules=rules,
        generated_retention_days=own.get(
            "generated_retention_days", provider_section.get("generated_retention_days", GENERATED_RETENTION_DAYS)
        ),
        sources=sources,
    )


def sqlite_file(url: str) -> str | None:
    """The file a SQLite URL names, whatever its driver (``sqlite+pysqlite:///…``); None for any
    other database. As SQLAlchemy reads it: ``sqlite:///relative``, ``sqlite:////absolute``."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.split("+", 1)[0].lower() != "sqlite":
        return None
    return rest[1:] if rest.startswith("/") else rest


def load_settings() -> Settings:
    """Read the environment and config.toml; raise ConfigError on anything malformed."""
    env = os.environ
    home = Path(env["FILEKEEPER_HOME"]).expanduser() if env.get("FILEKEEPER_HOME") else default_home()
    named = env.get("FILEKEEPER_CONFIG", "").strip()
    config_path = Path(named or home / "config.toml").expanduser()
    if named and not config_path.is_file():
        # Named on purpose: a typo must not silently drop a team's accounts and limits.
        what = "is not a file" if config_path.exists() else "does not exist"
        raise ConfigError(f"FILEKEEPER_CONFIG names {config_path}, which {what}")
    database_url = env.get("FILEKEEPER_DATABASE_URL") or f"sqlite:///{home / 'ledger.db'}"
    file = sqlite_file(database_url)
    if file is not None and (not file or file == ":memory:" or file.endswith("/") or "?" in file):
        # Else a folder's name became the ledger's file, "?mode=ro" part of the file's name, or the
        # ledger a database in memory that is gone when the command ends.
        raise ConfigError(
            f"FILEKEEPER_DATABASE_URL {database_url!r}: a SQLite ledger's URL names its file and nothing "
            "else, as sqlite:///path/to/ledger.db (no trailing /, no ?options, not in memory)"
        )
    raw = _read_toml(config_path)
    providers, accounts_raw = _validate(raw, config_path)
    http = HttpSettings(**_validate_http(raw.get("http", {}), config_path))
    accounts = {
        name: _build_account(name, section["provider"], section, providers.get(section["provider"], {}), config_path)
        for name, section in accounts_raw.items()
    }
    settings = Settings(home, config_path, database_url, providers, accounts, http)
    # Every key this process could read is a secret from now on, read or not: a provider's error
    # may echo any of them (a teammate's key in the wrong variable, say).
    for name in {a.api_key_env for a in accounts.values()} | {n for n in env if n.endswith("_API_KEY")}:
        register_secret(env.get(name, "").strip())
    # Resolve every configured provider section now so that a bad one fails early, naming its key.
    for name in providers:
        if name != "compatible" or "base_url" in providers[name]:
            settings._implicit_account(name)
    return settings


def _read_toml(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    import tomllib

    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not valid TOML: it is not UTF-8 text") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot be read: {e.strerror}") from None


def _validate(raw: Mapping[str, Any], path: Path) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    for key in raw:
        if key not in ("providers", "accounts", "http"):
            raise ConfigError(f"{path}: {key}: unknown section (expected [http], [providers.NAME] or [accounts.NAME])")
    providers: dict[str, dict[str, Any]] = {}
    for name, section in _tables(raw, "providers", path).items():
        if name not in PROFILES:
            raise ConfigError(f"{path}: [providers.{name}]: unknown provider (choose from {', '.join(PROVIDERS)})")
        providers[name] = _validate_section(section, _PROVIDER_KEYS, f"[providers.{name}]", path)
    accounts: dict[str, dict[str, Any]] = {}
    for name, section in _tables(raw, "accounts", path).items():
        where = f"[accounts.{name}]"
        if not _ACCOUNT_NAME.match(name):
            raise ConfigError(f"{path}: {where}: account names use letters, digits, '.', '_' and '-'")
        if name in PROFILES:
            raise ConfigError(
                f"{path}: {where}: {name!r} is the provider's implicit account; "
                f"configure it under [providers.{name}] or pick another name"
            )
        values = _validate_section(section, _ACCOUNT_KEYS, where, path)
        provider = values.get("provider")
        if provider is None:
            raise ConfigError(f"{path}: {where} provider: required (one of {', '.join(PROVIDERS)})")
        if provider not in PROFILES:
            raise ConfigError(
                f"{path}: {where} provider: unknown provider {provider!r} (choose from {', '.join(PROVIDERS)})"
            )
        accounts[name] = values
    return providers, accounts


def _validate_http(section: Any, path: Path) -> dict[str, Any]:
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: http: expected a table [http]")
    out: dict[str, Any] = {}
    for key, value in section.items():
        if key not in _HTTP_KEYS:
            raise ConfigError(f"{path}: [http] {key}: unknown key (allowed: {', '.join(sorted(_HTTP_KEYS))})")
        low, high = _HTTP_BOUNDS[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ConfigError(f"{path}: [http] {key}: expected a number, got {value!r}")
        if key == "attempts" and not isinstance(value, int):
            raise ConfigError(f"{path}: [http] attempts: expected a whole number, got {value!r}")
        if not low <= value <= high or (key in _HTTP_POSITIVE and value == 0):
            above = "above 0" if key in _HTTP_POSITIVE else f"at least {low}"
            raise ConfigError(f"{path}: [http] {key}: expected a number {above} and at most {high}, got {value!r}")
        out[key] = value
    return out


def _tables(raw: Mapping[str, Any], key: str, path: Path) -> dict[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise ConfigError(f"{path}: {key}: expected tables like [{key}.NAME]")
    return value


def _validate_section(section: Mapping[str, Any], allowed: set[str], where: str, path: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in section.items():
        if key not in allowed:
            raise ConfigError(f"{path}: {where} {key}: unknown key (allowed: {', '.join(sorted(allowed))})")
        try:
            out[key] = _parse_value(key, value)
        except ValueError as e:
            raise ConfigError(f"{path}: {where} {key}: {e}") from None
    return out


def _parse_purpose_limits(value: Any) -> dict[str, dict[str, int | None]]:
    """``{purpose = {max_files = 100, max_file_bytes = "20MB"}}``: each purpose's own limits."""
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise ValueError("expected tables like [providers.NAME.purpose_limits.PURPOSE]")
    out: dict[str, dict[str, int | None]] = {}
    for purpose, limits in value.items():
        if not purpose.strip():
            raise ValueError("a purpose name cannot be empty")
        for key, raw in limits.items():
            if key not in PURPOSE_LIMIT_KEYS:
                allowed = ", ".join(PURPOSE_LIMIT_KEYS)
                raise ValueError(f"{purpose}: {key}: unknown key (allowed: {allowed})")
            try:
                out.setdefault(purpose, {})[key] = _parse_value(key, raw)
            except ValueError as e:
                raise ValueError(f"{purpose}.{key}: {e}") from None
        out.setdefault(purpose, {})
    return out


def _parse_value(key: str, value: Any) -> Any:
    if key in ("provider", "base_url", "api_key_env"):
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"expected a non-empty string, got {value!r}")
        if key == "base_url":
            check_base_url(value)
        if key == "api_key_env" and not _ENV_NAME.match(value):
            raise ValueError(f"expected the NAME of an environment variable, got {value!r}")
        return value.strip()
    if key == "purpose_limits":
        return _parse_purpose_limits(value)
    if key in ("purposes", "formats"):
        if value == "any":
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            raise ValueError(f'expected a list of strings or "any", got {value!r}')
        return frozenset(v.strip().lower().lstrip(".") if key == "formats" else v.strip() for v in value)
    if key in ("retention_days", "generated_retention_days"):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_RETENTION_DAYS:
            raise ValueError(
                f"expected a whole number of days from 0 (keep for ever) to {MAX_RETENTION_DAYS}, got {value!r}"
            )
        return value
    if key == "max_files":
        if value == "unlimited":
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f'expected a whole number or "unlimited", got {value!r}')
        return value
    # max_total_bytes, max_file_bytes
    if value == "unlimited":
        return None
    if not isinstance(value, int | str):
        raise ValueError(f'expected a size like 10GB or "unlimited", got {value!r}')
    return parse_size(value)
