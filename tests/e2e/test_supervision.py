"""`tokenhub up` supervises the whole stack, as an operator sees it (issue 15,
defect 5; issue 20, item 5): a second `up` in the same folder is refused in one
line; `tokenhub status` shows every process and its restarts; a SIGKILLed
service and a SIGKILLed PostgreSQL are noticed, reaped (no zombie keeps
postmaster.pid alive) and restarted; Ctrl-C leaves nothing behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psutil

START_TIMEOUT_S = 120
RECOVERY_TIMEOUT_S = 90
PROCESSES = {"postgres", "broker", "metering", "pricing", "ledger", "invoicing", "api"}


def _environment() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if not key.startswith("TOKENHUB_")}


def tokenhub(cwd: Path, *arguments: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tokenhub.cli.main", *arguments], cwd=cwd, env=_environment(),
                          capture_output=True, text=True, timeout=timeout)


def status(cwd: Path) -> dict[str, Any]:
    result = tokenhub(cwd, "status", "--json")
    assert result.returncode in (0, 3), result.stderr
    return json.loads(result.stdout)


def processes(cwd: Path) -> dict[str, dict[str, Any]]:
    """What the supervisor says of each process, read from its status file (polled
    often: cheaper than `tokenhub status`, which also measures every lag)."""
    try:
        document = json.loads((cwd / ".tokenhub" / "status.json").read_text())
    except (OSError, ValueError):
        return {}
    if document.get("state") != "running":
        return {}
    return {process["name"]: process for process in document.get("processes", [])}


def wait_for(what: str, check: Any, timeout_s: float = RECOVERY_TIMEOUT_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.3)


def start_up(cwd: Path) -> subprocess.Popen[str]:
    process = subprocess.Popen([sys.executable, "-m", "tokenhub.cli.main", "up"], cwd=cwd, env=_environment(),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)

    def running() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"tokenhub up exited: {process.stdout.read() if process.stdout else ''}")
        found = processes(cwd)
        return set(found) == PROCESSES and all(each["state"] == "running" for each in found.values())
    wait_for("tokenhub up to start every process", running, START_TIMEOUT_S)
    return process


def stop_up(process: subprocess.Popen[str]) -> tuple[list[int], str]:
    """SIGINT, as Ctrl-C; returns the children still alive after it exited, and its output."""
    children = [child.pid for child in psutil.Process(process.pid).children(recursive=True)]
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=90)
    alive = [pid for pid in children if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    return alive, output


def restarted(cwd: Path, name: str, old_pid: int, restarts: int) -> dict[str, Any] | None:
    process = processes(cwd).get(name)
    if process and process["restarts"] == restarts and process["state"] == "running" and process["pid"] != old_pid:
        return process
    return None



def test_up_refuses_a_second_up_and_restarts_what_dies(tmp_path: Path) -> None:
    up = start_up(tmp_path)
    try:
        supervisor = status(tmp_path)["supervisor"]
        assert supervisor["pid"] == up.pid

        second = tokenhub(tmp_path, "up", timeout=60)
        assert second.returncode != 0
        since = datetime.fromisoformat(supervisor["started_at"]).astimezone(ZoneInfo("Asia/Shanghai"))
        assert second.stderr.strip() == (f"tokenhub up: already running in .tokenhub (pid {up.pid}, "
                                         f"since {since:%Y-%m-%d %H:%M:%S} Asia/Shanghai (+08:00))")
        assert "postmaster.pid" not in second.stdout + second.stderr
        assert up.poll() is None, "the second up must not disturb the first"

        before = processes(tmp_path)
        os.kill(before["pricing"]["pid"], signal.SIGKILL)
        after = wait_for("pricing to be restarted",
                         lambda: restarted(tmp_path, "pricing", before["pricing"]["pid"], 1))
        assert after["last_exit_code"] == -signal.SIGKILL

        postgres = before["postgres"]["pid"]
        os.kill(postgres, signal.SIGKILL)
        wait_for("PostgreSQL to be restarted", lambda: restarted(tmp_path, "postgres", postgres, 1))
        # Reaped: no zombie keeps the old postmaster's pid (and with it postmaster.pid) alive.
        assert not psutil.pid_exists(postgres) or psutil.Process(postgres).status() != psutil.STATUS_ZOMBIE
        wait_for("the database to answer again", lambda: tokenhub(tmp_path, "bu", "list", "--json").returncode == 0)
        # The four services waited for it: none of them exited (the API may end and be restarted).
        restarts = {name: process["restarts"] for name, process in processes(tmp_path).items()}
        assert {name: restarts[name] for name in PROCESSES - {"api"}} == {
            "postgres": 1, "broker": 0, "metering": 0, "pricing": 1, "ledger": 0, "invoicing": 0}
        wait_for("the API to run", lambda: processes(tmp_path)["api"]["state"] == "running")

        text = tokenhub(tmp_path, "status")
        assert text.returncode == 0, text.stderr
        assert "pricing exited with status -9; back after" in text.stdout
        assert "postgres exited with status -9; back after" in text.stdout
        faults = [fault for fault in status(tmp_path)["faults"] if fault["process"] != "api"]
        assert [(fault["process"], fault["exit_code"]) for fault in faults] == [("pricing", -9), ("postgres", -9)]
        assert all(fault["seconds_to_resume"] is not None for fault in faults)
    finally:
        alive, output = stop_up(up)
    assert alive == [], f"processes left behind: {alive}"
    assert "postgres exited with status -9: reaping it" in output
    gone = tokenhub(tmp_path, "status")
    assert gone.returncode == 3 and "not running" in gone.stdout
