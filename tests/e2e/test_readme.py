"""README, tried as a new user would: in a fresh copy of the repository, with
the `tokenhub` command reached as README says, `tokenhub up` in one terminal
and every command of README's `sh` blocks run in order in another. Each must
succeed, print no trace, and say something."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import asyncpg
import pytest

from tokenhub.infra.pipeline import counters, settled

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
START_TIMEOUT_S: Final = 120
SETTLE_TIMEOUT_S: Final = 180
COMMAND_TIMEOUT_S: Final = 180
POLL_INTERVAL_S: Final = 0.5
GENERATE: Final = re.compile(r"tokenhub emit --generate (\d+)")


def readme_commands(text: str) -> list[str]:
    """The commands of README's `sh` blocks, in order."""
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.DOTALL):
        commands += [line.strip() for line in block.splitlines() if line.strip() and not line.strip().startswith("#")]
    return commands


@pytest.fixture
def fresh_copy() -> Iterator[Path]:
    """What `git clone` gives: the repository's files, nothing built or started.
    Outside pytest's base folder, which PostgreSQL (its own user) must traverse."""
    folder = Path(tempfile.mkdtemp(prefix="tokenhub-readme-"))
    files = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=True).stdout.split(b"\0")
    for name in filter(None, (entry.decode() for entry in files)):
        source = ROOT / name
        if source.is_file():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, folder / name)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _environment() -> dict[str, str]:
    """As README says: the virtualenv's `bin` first on the PATH (`source .venv/bin/activate`)."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith("TOKENHUB_")}
    environment["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{environment.get('PATH', '')}"
    return environment


def _wait_for(what: str, check, timeout_s: float) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(POLL_INTERVAL_S)


def _settled(folder: Path, usage_sent: int) -> bool:
    settings = dict(line.split("=", 1) for line in (folder / ".tokenhub" / "stack.env").read_text().split() if "=" in line)

    async def read() -> dict[str, int]:
        connection = await asyncpg.connect(settings["TOKENHUB_DATABASE_URL"])
        try:
            return await counters(connection)
        finally:
            await connection.close()
    return settled(asyncio.run(read()), usage_sent)


def test_readme_says_how_to_reach_the_command() -> None:
    text = README.read_text()
    assert "source .venv/bin/activate" in text and ".venv/bin/tokenhub" in text and "make up" in text


def test_every_command_readme_shows_runs_from_a_fresh_copy(fresh_copy: Path) -> None:
    commands = readme_commands(README.read_text())
    assert len(commands) >= 15 and all(command.startswith("tokenhub ") for command in commands), commands
    up_log = (fresh_copy / "up.log").open("ab")
    up = subprocess.Popen(["tokenhub", "up"], cwd=fresh_copy, env=_environment(), stdout=up_log,
                          stderr=subprocess.STDOUT, start_new_session=True)
    up_log.close()
    try:
        _wait_for("tokenhub up", lambda: (fresh_copy / ".tokenhub" / "stack.env").exists() or up.poll() is not None,
                  START_TIMEOUT_S)
        assert up.poll() is None, (fresh_copy / "up.log").read_text()[-3000:]
        for command in commands:
            result = subprocess.run(["bash", "-c", command], cwd=fresh_copy, env=_environment(), capture_output=True,
                                    text=True, timeout=COMMAND_TIMEOUT_S)
            assert result.returncode == 0, f"`{command}` exited {result.returncode}: {result.stderr}"
            assert "Traceback" not in result.stderr and result.stdout.strip(), f"`{command}`: {result.stderr}"
            generated = GENERATE.search(command)
            if generated:
                # What a person reads next is the figures of this usage: let it reach the invoices first.
                _wait_for(f"the {generated[1]} events to settle", lambda: _settled(fresh_copy, int(generated[1])),
                          SETTLE_TIMEOUT_S)
    finally:
        os.killpg(up.pid, signal.SIGINT)
        up.wait(timeout=90)
