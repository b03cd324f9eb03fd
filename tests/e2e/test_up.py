"""`tokenhub up` as a person runs it: the stack in one terminal, commands in
another, Ctrl-C stops everything, and a restart on an empty broker republishes
the services' records without counting anything twice."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Final, TypeVar

import asyncpg
import psutil

from tokenhub.client import usage_event
from tokenhub.infra.pipeline import counters

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S: Final = 120
SETTLE_TIMEOUT_S: Final = 150
POLL_INTERVAL_S: Final = 0.3

# Usage whose figures are known exactly from the demo price book (CNY per million
# Tokens): qwen-turbo input 0.3, output 0.6; qwen-max input 2.4, output 9.6. Both
# models are provided by qwen-platform, and neither consumer has a funding
# agreement, so each pays for itself.
CAINIAO_EVENTS: Final = 40  # 1,000 input + 100 output on qwen-turbo: 0.00036 CNY each
ECOMMERCE_EVENTS: Final = 30  # 2,000 input + 500 output on qwen-max: 0.0096 CNY each
EXPECTED: Final = {
    # bu: (tokens consumed, tokens served, spend, revenue)
    "cainiao": (44_000, 0, Decimal("0.0144"), Decimal(0)),
    "international-ecommerce": (75_000, 0, Decimal("0.288"), Decimal(0)),
    "qwen-platform": (0, 119_000, Decimal(0), Decimal("0.3024")),
}
ENTRIES: Final = CAINIAO_EVENTS + ECOMMERCE_EVENTS

T = TypeVar("T")


def _environment() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if not key.startswith("TOKENHUB_")}


def _tokenhub(cwd: Path, *arguments: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "tokenhub.cli.main", *arguments], cwd=cwd, env=_environment(),
                            capture_output=True, text=True, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"tokenhub {' '.join(arguments)} failed: {result.stderr}")
    return result


def _wait_for(what: str, probe: Callable[[], T], accept: Callable[[T], bool], timeout_s: float) -> T:
    """Poll `probe` until `accept` holds; at the deadline fail, naming what was awaited and what was last seen."""
    deadline = time.monotonic() + timeout_s
    while True:
        seen = probe()
        if accept(seen):
            return seen
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}; last seen: {seen!r}")
        time.sleep(POLL_INTERVAL_S)


def _start_up(cwd: Path) -> subprocess.Popen[bytes]:
    # The stack's own output goes to a file: a pipe nobody reads would fill and stop it.
    output = (cwd / "up.log").open("ab")
    process = subprocess.Popen([sys.executable, "-m", "tokenhub.cli.main", "up"], cwd=cwd, env=_environment(),
                               stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    output.close()
    stack_env = cwd / ".tokenhub" / "stack.env"
    try:
        _wait_for("tokenhub up to write .tokenhub/stack.env", lambda: stack_env.exists() or process.poll() is not None,
                  bool, START_TIMEOUT_S)
    except AssertionError:
        process.kill()
        raise
    if process.poll() is not None:
        raise AssertionError(f"tokenhub up exited with {process.returncode}: {(cwd / 'up.log').read_text()[-4000:]}")
    return process


def _stop_up(process: subprocess.Popen[bytes]) -> list[int]:
    children = [child.pid for child in psutil.Process(process.pid).children(recursive=True)]
    process.send_signal(signal.SIGINT)
    process.wait(timeout=60)
    return [pid for pid in children if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]


def _usage_file(path: Path) -> Path:
    at = datetime.now(UTC) - timedelta(hours=2)
    events = [usage_event("gateway/cainiao", f"up-cainiao-{index}", at,
                          {"consumer_bu": "cainiao", "model": "qwen-turbo", "input_tokens": 1000, "output_tokens": 100})
              for index in range(CAINIAO_EVENTS)]
    events += [usage_event("gateway/aidc", f"up-aidc-{index}", at,
                           {"consumer_bu": "international-ecommerce", "model": "qwen-max", "input_tokens": 2000,
                            "output_tokens": 500})
               for index in range(ECOMMERCE_EVENTS)]
    path.write_text("".join(event.model_dump_json() + "\n" for event in events))
    return path


def _figures(cwd: Path) -> dict[str, tuple[int, int, Decimal, Decimal]]:
    """Every BU with something posted, as (Tokens consumed, Tokens served, spend, revenue)."""
    rows = json.loads(_tokenhub(cwd, "balance", "--json").stdout)
    figures = {row["bu"]: (int(row["tokens_consumed"]), int(row["tokens_served"]), Decimal(row["spend"]),
                           Decimal(row["revenue"])) for row in rows}
    return {bu: values for bu, values in figures.items() if any(values)}


def _ledger_duplicates(cwd: Path) -> int:
    settings = dict(line.split("=", 1) for line in (cwd / ".tokenhub" / "stack.env").read_text().split() if "=" in line)

    async def read() -> int:
        connection = await asyncpg.connect(settings["TOKENHUB_DATABASE_URL"])
        try:
            return (await counters(connection)).get("ledger.duplicates", 0)
        finally:
            await connection.close()
    return asyncio.run(read())



def test_up_serves_commands_stops_cleanly_and_restarts_without_double_counting(tmp_path: Path) -> None:
    up = _start_up(tmp_path)
    try:
        _tokenhub(tmp_path, "registry", str(ROOT / "infra/demo/registry.yaml"), "--reason", "the demo registry")
        # Usage for a BU metering has not heard of yet would be rejected (and stored), so wait.
        _wait_for("the registry's nine business units", lambda: len(json.loads(_tokenhub(tmp_path, "bu", "list", "--json").stdout)),
                  lambda count: count == 9, START_TIMEOUT_S)
        _tokenhub(tmp_path, "pricebook", "publish", str(ROOT / "infra/demo/pricebook.yaml"), "--retroactive",
                  "--reason", "the demo prices")
        sent = _tokenhub(tmp_path, "emit", str(_usage_file(tmp_path / "usage.jsonl")))
        assert sent.stdout.strip() == (f"sent {ENTRIES} usage events to usage.reported; metering accepted {ENTRIES}, "
                                       "found 0 duplicates, rejected 0")
        _wait_for("the exact balances of the usage sent", lambda: _figures(tmp_path), lambda seen: seen == EXPECTED,
                  SETTLE_TIMEOUT_S)
        duplicates_before = _ledger_duplicates(tmp_path)
    finally:
        leftovers = _stop_up(up)
    assert leftovers == [], f"processes left behind: {leftovers}"
    assert not (tmp_path / ".tokenhub" / "stack.env").exists()
    missing = _tokenhub(tmp_path, "balance", check=False)
    assert missing.returncode == 1 and "tokenhub up" in missing.stderr and "Traceback" not in missing.stderr

    # Same state folder, new empty broker: the records are republished, and the ledger
    # recognises every Priced it already posted instead of posting it again.
    up = _start_up(tmp_path)
    try:
        _wait_for("the ledger to receive the republished Priced again", lambda: _ledger_duplicates(tmp_path),
                  lambda duplicates: duplicates >= duplicates_before + ENTRIES, SETTLE_TIMEOUT_S)
        assert _figures(tmp_path) == EXPECTED
    finally:
        assert _stop_up(up) == []
