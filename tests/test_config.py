from __future__ import annotations

from pathlib import Path

import pytest

from filekeeper.config import load_settings
from filekeeper.errors import ConfigError, UsageError
from filekeeper.units import parse_duration, parse_size
from tests.conftest import write


@pytest.mark.parametrize(
    ("text", "expected"),
    [(10, 10), ("10GB", 10 * 10**9), ("100MB", 100 * 10**6), ("1.5 KiB", 1536), ("2.5TB", 2_500_000_000_000)],
)
def test_sizes(text: int | str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["10XB", "GB", "-1", "1e3", ""])
def test_bad_sizes(bad: str) -> None:
    with pytest.raises(ValueError, match="not a size"):
        parse_size(bad)


def test_durations() -> None:
    assert parse_duration("30d") == 30 * 86400
    assert parse_duration("2h") == 7200
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("3w")


def test_builtin_accounts_and_env_overrides(home: Path, monkeypatch: pytest.MonkeyPatch, backend: str) -> None:
    monkeypatch.setenv("MOONSHOT_BASE_URL", "http://127.0.0.1:9/v1/")
    settings = load_settings()
    moonshot = settings.resolve(provider="moonshot")
    assert moonshot.base_url == "http://127.0.0.1:9/v1"
    assert moonshot.api_key_env == "MOONSHOT_API_KEY"
    assert moonshot.limits.max_files == 1000 and moonshot.limits.max_total_bytes == 10 * 10**9
    assert settings.resolve(provider="zai").limits.max_total_bytes is None
    assert settings.resolve(provider="openai").default_purpose == "assistants"
    assert settings.ledger_path == (home / "ledger.db" if backend == "sqlite" else None)


def test_config_overrides_per_provider_and_account(home: Path) -> None:
    write(
        home / "config.toml",
        """
[providers.moonshot]
base_url = "https://api.moonshot.cn/v1"
max_files = 500
max_total_bytes = "5GB"
retention_days = 0

[accounts.team-b]
provider = "moonshot"
api_key_env = "TEAM_B_MOONSHOT_KEY"
max_files = 200

[accounts.local]
provider = "compatible"
base_url = "http://localhost:8000/v1"
api_key_env = "LOCAL_KEY"
max_total_bytes = "unlimited"
""",
    )
    settings = load_settings()
    base = settings.resolve(provider="moonshot")
    assert base.base_url == "https://api.moonshot.cn/v1"
    assert (base.limits.max_files, base.limits.max_total_bytes, base.limits.retention_days) == (500, 5 * 10**9, 0)
    team = settings.resolve(account="team-b")
    # account keys win, provider keys fill in the rest, built-in profile the remainder
    assert (team.limits.max_files, team.limits.max_total_bytes) == (200, 5 * 10**9)
    assert team.limits.max_file_bytes == 100 * 10**6
    assert team.api_key_env == "TEAM_B_MOONSHOT_KEY" and team.base_url == "https://api.moonshot.cn/v1"
    local = settings.resolve(account="local")
    assert local.provider == "compatible" and local.limits.max_total_bytes is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[providers.moonshot\nmax_files = 1", "not valid TOML"),
        ("[providers.moonshot]\nmax_files = -3", "[providers.moonshot] max_files: expected a whole number"),
        (
            '[providers.moonshot]\nmax_total_bytes = "lots"',
            "[providers.moonshot] max_total_bytes: 'lots' is not a size",
        ),
        ('[providers.moonshot]\ncolour = "blue"', "[providers.moonshot] colour: unknown key"),
        ("[providers.acme]\nmax_files = 1", "[providers.acme]: unknown provider"),
        ("[accounts.x]\nmax_files = 1", "[accounts.x] provider: required"),
        ('[accounts.x]\nprovider = "nope"', "[accounts.x] provider: unknown provider 'nope'"),
        ('[accounts.x]\nprovider = "compatible"\napi_key_env = "K"', "[accounts.x] base_url: required"),
        ('[accounts.x]\nprovider = "moonshot"\nbase_url = "ftp://x"', "[accounts.x] base_url: expected an http"),
        ('[accounts.x]\nprovider = "moonshot"\napi_key_env = "not a var"', "api_key_env: expected the NAME"),
        ('[accounts.moonshot]\nprovider = "moonshot"', "implicit account"),
        ('[accounts.x]\nprovider = "moonshot"\nretention_days = true', "retention_days: expected a whole number"),
        ("[defaults]\nx = 1", "defaults: unknown section"),
        ("[http]\nattempts = 0", "[http] attempts: expected a number at least 1 and at most 100, got 0"),
        ("[http]\nretries = 3", "[http] retries: unknown key"),
        ("[http]\ntimeout_seconds = nan", "[http] timeout_seconds: expected a number, got nan"),
        ("[http]\ntotal_seconds = inf", "[http] total_seconds: expected a number, got inf"),
        ("[http]\ntimeout_seconds = 0", "[http] timeout_seconds: expected a number above 0"),
        ("[http]\nattempts = 1e9", "[http] attempts: expected a whole number"),
        ("[providers.openai]\nretention_days = 99999999", "retention_days: expected a whole number of days from 0"),
        ("[providers.openai]\ngenerated_retention_days = -1", "generated_retention_days: expected a whole number"),
        ("[providers.openai]\nmax_files = nan", "max_files: expected a whole number"),
        (
            '[accounts.x]\nprovider = "compatible"\napi_key_env = "K"\nbase_url = "https://me:hunter2@llm.example/v1"',
            "base_url: a base URL must not carry credentials (user:password@)",
        ),
        ('[accounts.x]\nprovider = "moonshot"\nbase_url = "https://h:99999/v1"', "base_url: not a valid URL"),
    ],
)
def test_malformed_config_names_file_and_key(home: Path, text: str, message: str) -> None:
    path = write(home / "config.toml", text)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert str(path) in str(info.value)
    assert message in str(info.value)
    assert info.value.exit_code == 2


def test_unknown_account_and_provider(home: Path) -> None:
    settings = load_settings()
    with pytest.raises(UsageError, match="unknown account 'nobody'"):
        settings.resolve(account="nobody")
    with pytest.raises(UsageError, match="unknown provider 'acme'"):
        settings.resolve(provider="acme")
    with pytest.raises(UsageError, match="not both"):
        settings.resolve(provider="xai", account="xai")


def test_malformed_config_on_the_cli(run, home: Path) -> None:
    write(home / "config.toml", '[providers.moonshot]\nmax_files = "many"\n')
    result = run("usage")
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert "config.toml: [providers.moonshot] max_files" in result.stderr
    assert "Traceback" not in result.stderr
