"""`tokenhub up` as a person runs it: the stack in one terminal, commands in
another, Ctrl-C stops everything, and a restart on an empty broker republishes
the archives without counting anything twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 120
SETTLE_TIMEOUT_S = 150


def _tokenhub(cwd: Path, *arguments: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("TOKENHUB_")}
    result = subprocess.run([sys.executable, "-m", "tokenhub.cli.main", *arguments], cwd=cwd, env=environment,
                            capture_output=True, text=True, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"tokenhub {' '.join(arguments)} failed: {result.stderr}")
    return result


def _start_up(cwd: Path) -> subprocess.Popen[str]:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("TOKENHUB_")}
    process = subprocess.Popen([sys.executable, "-m", "tokenhub.cli.main", "up"], cwd=cwd, env=environment,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.monotonic() + START_TIMEOUT_S
    while not (cwd / ".tokenhub" / "stack.env").exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"tokenhub up did not start: {process.stdout.read() if process.stdout else ''}")
        time.sleep(0.2)
    return process


def _stop_up(process: subprocess.Popen[str]) -> list[int]:
    children = [child.pid for child in psutil.Process(process.pid).children(recursive=True)]
    process.send_signal(signal.SIGINT)
    process.wait(timeout=60)
    return [pid for pid in children if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]


def _wait_for_registry(cwd: Path, business_units: int) -> None:
    """Registry changes and usage travel on different topics: usage for a BU
    metering has not heard of yet is rejected (and stored), so wait."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while len(json.loads(_tokenhub(cwd, "bu", "list", "--json").stdout)) < business_units:
        assert time.monotonic() < deadline, "the registry never arrived"
        time.sleep(0.3)


def _balances(cwd: Path) -> dict[str, dict]:
    return {row["bu"]: row for row in json.loads(_tokenhub(cwd, "balance", "--json").stdout)}


def _wait_for_balances(cwd: Path, posted_tokens: int) -> dict[str, dict]:
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while True:
        rows = _balances(cwd)
        if sum(row["tokens_served"] for row in rows.values()) >= posted_tokens > 0 or time.monotonic() > deadline:
            return rows
        time.sleep(0.5)


def test_up_serves_commands_stops_cleanly_and_restarts_without_double_counting(tmp_path: Path) -> None:
    up = _start_up(tmp_path)
    try:
        _tokenhub(tmp_path, "registry", str(ROOT / "infra/demo/registry.yaml"))
        _wait_for_registry(tmp_path, business_units=9)
        _tokenhub(tmp_path, "pricebook", "publish", str(ROOT / "infra/demo/pricebook.yaml"), "--retroactive")
        sent = _tokenhub(tmp_path, "emit", "--generate", "200", "--seed", "3")
        assert "sent 200 usage events" in sent.stdout
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        rows: dict[str, dict] = {}
        while time.monotonic() < deadline:
            rows = _balances(tmp_path)
            consumed = sum(row["tokens_consumed"] for row in rows.values())
            served = sum(row["tokens_served"] for row in rows.values())
            if consumed and consumed == served:
                time.sleep(2)  # nothing more may arrive: compare twice
                if _balances(tmp_path) == rows:
                    break
            time.sleep(0.5)
        assert rows and sum(Decimal(row["net"]) for row in rows.values()) == 0
        assert sum(Decimal(row["spend"]) for row in rows.values()) > 0
    finally:
        leftovers = _stop_up(up)
    assert leftovers == [], f"processes left behind: {leftovers}"
    assert not (tmp_path / ".tokenhub" / "stack.env").exists()
    missing = _tokenhub(tmp_path, "balance", check=False)
    assert missing.returncode == 1 and "tokenhub up" in missing.stderr and "Traceback" not in missing.stderr

    # Same state folder, new empty broker: the archives are republished and deduplicated.
    up = _start_up(tmp_path)
    try:
        again = _wait_for_balances(tmp_path, sum(row["tokens_served"] for row in rows.values()))
        time.sleep(3)
        assert _balances(tmp_path) == rows
        assert again == rows
    finally:
        assert _stop_up(up) == []
