"""Shared fixtures: a fresh FILEKEEPER_HOME per test, emulators over real sockets, a CLI runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from filekeeper.cli import cli
from tests.emulator import Emulator

PROVIDERS = ("moonshot", "zai", "xai", "openai")
KEY_VARS = {"moonshot": "MOONSHOT_API_KEY", "zai": "ZAI_API_KEY", "xai": "XAI_API_KEY", "openai": "OPENAI_API_KEY"}
URL_VARS = {"moonshot": "MOONSHOT_BASE_URL", "zai": "ZAI_BASE_URL", "xai": "XAI_BASE_URL", "openai": "OPENAI_BASE_URL"}
# Long and distinctive, so that a grep for it cannot match by accident.
SECRET = "sk-fk-test-5b1f0c9e3d7a4e2b8c6d"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty FILEKEEPER_HOME and an environment with no provider variables of the machine's."""
    for name in list(os.environ):
        if name.startswith("FILEKEEPER_") or name.endswith(("_API_KEY", "_BASE_URL")):
            monkeypatch.delenv(name)
    path = tmp_path / "home"
    monkeypatch.setenv("FILEKEEPER_HOME", str(path))
    return path


@pytest.fixture
def emulators() -> Iterator[Callable[..., Emulator]]:
    started: list[Emulator] = []

    def start(flavor: str, **kwargs: Any) -> Emulator:
        kwargs.setdefault("api_key", SECRET)
        emu = Emulator(flavor, **kwargs).start()
        started.append(emu)
        return emu

    yield start
    for emu in started:
        emu.stop()


@pytest.fixture
def provider_env(home: Path, emulators: Callable[..., Emulator], monkeypatch: pytest.MonkeyPatch):
    """Point one provider's standard variables at a fresh emulator; returns the emulator."""

    def setup(flavor: str, **kwargs: Any) -> Emulator:
        emu = emulators(flavor, **kwargs)
        monkeypatch.setenv(KEY_VARS[flavor], SECRET)
        monkeypatch.setenv(URL_VARS[flavor], emu.url)
        return emu

    return setup


@dataclass
class Result:
    exit_code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


@pytest.fixture
def run(home: Path) -> Callable[..., Result]:
    """Run the CLI in-process (stdout and stderr kept apart, neither a terminal)."""

    def invoke(*args: str) -> Result:
        result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
        return Result(result.exit_code, result.stdout, result.stderr)

    return invoke


def run_process(*args: str, env: dict[str, str] | None = None, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run the CLI as a real process, as a user or a cron job would."""
    return subprocess.run(
        [sys.executable, "-m", "filekeeper", *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        **kwargs,
    )


def run_on_terminal(*args: str, env: dict[str, str]) -> tuple[int, str]:
    """Run the CLI with its stderr on a pseudo-terminal; return the exit code and what it showed."""
    import pty

    primary, replica = pty.openpty()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "filekeeper", *args], env=env, stdout=subprocess.PIPE, stderr=replica, timeout=60
        )
        os.close(replica)
        chunks = []
        while True:
            try:
                data = os.read(primary, 65536)
            except OSError:  # EIO: the writer side is closed and everything was read
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(primary)
    return proc.returncode, b"".join(chunks).decode()


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path
