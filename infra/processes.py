"""The four services as child processes: started in their own process groups,
stopped with SIGTERM then SIGKILL, never left behind."""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Final

import structlog

SERVICES: Final = ("metering", "pricing", "ledger", "invoicing")
COMMANDS: Final = {"api": ("api", "serve")}
"""Processes that are not services (`tokenhub run NAME`), by the arguments that run them."""
STOP_GRACE_S: Final = 10.0
"""A service finishing its batch and outbox relay needs well under this."""

log = structlog.get_logger()


class ServiceProcesses:
    def __init__(self, env: dict[str, str], log_dir: Path, services: tuple[str, ...] = SERVICES) -> None:
        self.env = env
        self.log_dir = log_dir
        self.services = services
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        atexit.register(self.stop)

    def start(self, service: str | None = None, extra_env: dict[str, str] | None = None, name: str | None = None) -> None:
        """Start one service (or all); `name` tells instances of one service apart."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for each in ([service] if service else list(self.services)):
            key = name or each
            environment = {**os.environ, **self.env, **(extra_env or {})}
            log_file = (self.log_dir / f"{key}.log").open("ab")
            self.processes[key] = subprocess.Popen(
                [sys.executable, "-m", "tokenhub.cli.main", *COMMANDS.get(each, ("run", each))],
                env=environment,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            log_file.close()
            log.info("service_process_started", service=key, pid=self.processes[key].pid)

    def kill(self, name: str) -> None:
        """SIGKILL, as a crash would: no shutdown hooks run."""
        process = self.processes.pop(name)
        _signal_group(process, signal.SIGKILL)
        process.wait()

    def stop_one(self, name: str) -> None:
        process = self.processes.pop(name)
        _terminate(process)

    def running(self, name: str) -> bool:
        process = self.processes.get(name)
        return process is not None and process.poll() is None

    def exited(self) -> dict[str, int]:
        return {name: code for name, process in self.processes.items() if (code := process.poll()) is not None}

    def stop(self) -> None:
        for name in list(self.processes):
            _terminate(self.processes.pop(name))


def _signal_group(process: subprocess.Popen[bytes], signal_number: int) -> None:
    """Signal the process's group, only while the process is not reaped: until
    then its pid, which is the group's id, is still its own. Once reaped, the
    kernel may give that number to any new process (pid_max is 32,768 here), and
    a group signal would end a stranger's job."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal_number)
    except ProcessLookupError:
        pass


def _terminate(process: subprocess.Popen[bytes]) -> None:
    _signal_group(process, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    while process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    _signal_group(process, signal.SIGKILL)
    process.wait()
