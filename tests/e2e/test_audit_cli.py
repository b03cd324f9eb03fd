"""The auditor's and budget owner's commands as a person runs them: verify and
replay pass on a settled ledger and fail, naming the row, on a corrupted one;
a statement lists the entries behind a balance; a budget records its actor and
reason; restore fills an empty database; errors are one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest

from tests.integration.support import World, emit, read_counters, wait_settled
from tokenhub.infra.pipeline import wait_until

STATE_DIR = Path(tempfile.mkdtemp(prefix="tokenhub-e2e-"))  # the commands' log file goes here, not into the checkout
pytestmark = pytest.mark.asyncio(loop_scope="session")
WAIT_S = 60


def _run(backend, *arguments: str) -> subprocess.CompletedProcess[str]:  # noqa: ANN001
    environment = {key: value for key, value in os.environ.items() if not key.startswith("TOKENHUB_")}
    environment.update({"TOKENHUB_BOOTSTRAP_SERVERS": backend.endpoints.bootstrap_servers,
                        "TOKENHUB_DATABASE_URL": backend.endpoints.database_url, "TOKENHUB_STATE_DIR": str(STATE_DIR)})
    return subprocess.run([sys.executable, "-m", "tokenhub.cli.main", *arguments], env=environment,
                          capture_output=True, text=True, timeout=120)


async def _settled(backend) -> tuple[World, datetime]:  # noqa: ANN001
    world = World(backend.settings)
    await world.publish(["shop"])
    now = datetime.now(UTC).replace(microsecond=0)
    events = [world.usage("shop", index, 20_000 + index, 2_000, time=now - timedelta(hours=3 - index % 3)) for index in range(9)]
    before = await read_counters(world.settings)
    await emit(world.settings, events)
    await wait_settled(world.settings, before, len(events))
    connection = await asyncpg.connect(world.settings.database_url)
    try:
        async def relayed() -> bool:
            return not await connection.fetchval("select count(*) from ledger.outbox")
        await wait_until(relayed, 30, "the ledger's outbox to drain")
    finally:
        await connection.close()
    return world, now


async def test_verify_and_replay_pass_then_fail_naming_a_corrupted_row(backend) -> None:
    world, now = await _settled(backend)
    verified = _run(backend, "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "verify OK" in verified.stdout and "invariant-6" in verified.stdout
    report = json.loads(_run(backend, "verify", "--json").stdout)
    assert report["ok"] and [check["name"] for check in report["checks"]] == [
        "chains", "published", "invariant-1", "invariant-2", "invariant-3", "invariant-4", "invariant-5", "invariant-6"]

    as_of = (now - timedelta(hours=2)).isoformat()
    for source in ("topic", "archive"):
        replayed = _run(backend, "replay", "--source", source, "--as-of", as_of, "--reprice", "--json")
        assert replayed.returncode == 0, replayed.stdout + replayed.stderr
        document = json.loads(replayed.stdout)
        assert document["ok"] and document["differences"] == [] and document["reprice"]["mismatches"] == []
        expected = sum((world.expected_amount(20_000 + index, 2_000) for index in range(9) if 3 - index % 3 >= 2), Decimal(0))
        assert Decimal(document["balances"][world.bu("shop")]["spend"]) == expected

    account = f"bu:{world.bu('shop')}:consumed"
    connection = await asyncpg.connect(world.settings.database_url)
    try:
        await connection.execute("update ledger.balances set debit_total = debit_total + 1 where account = $1", account)
        broken = _run(backend, "replay", "--bu", world.bu("shop"))
        assert broken.returncode == 1
        assert f"ledger.balances (tokens, {account})" in broken.stdout and "tokens_consumed" in broken.stdout
        failed = _run(backend, "verify")
        assert failed.returncode == 1 and "verify FAILED" in failed.stdout
        assert f"ledger.balances (tokens, {account})" in failed.stdout
    finally:
        await connection.execute("update ledger.balances set debit_total = debit_total - 1 where account = $1", account)
        await connection.close()
    assert _run(backend, "replay").returncode == 0


async def test_balance_as_of_goes_by_event_time_or_by_posting_time(backend) -> None:
    world, now = await _settled(backend)
    payer = world.bu("shop")
    as_of = (now - timedelta(minutes=90)).isoformat()

    def spend(*arguments: str) -> tuple[Decimal, int]:
        result = _run(backend, "balance", "--bu", payer, *arguments, "--json")
        assert result.returncode == 0, result.stderr
        [row] = json.loads(result.stdout)
        return Decimal(row["spend"]), int(row["tokens_consumed"])

    by_event_time = [index for index in range(9) if 3 - index % 3 >= 2]  # used three and two hours ago
    assert spend("--as-of", as_of) == spend("--as-of", as_of, "--by", "event-time") == (
        sum((world.expected_amount(20_000 + index, 2_000) for index in by_event_time), Decimal(0)),
        sum(22_000 + index for index in by_event_time))
    assert spend("--as-of", as_of, "--by", "posting-time") == (Decimal(0), 0), "nothing was posted 90 minutes ago"
    whole = spend()
    assert whole[0] == sum((world.expected_amount(20_000 + index, 2_000) for index in range(9)), Decimal(0))
    assert spend("--as-of", (now + timedelta(days=1)).isoformat(), "--by", "posting-time") == whole
    unknown = _run(backend, "balance", "--bu", f"{world.prefix}-nobody", "--as-of", as_of)
    assert unknown.returncode == 1 and f"--bu {world.prefix}-nobody is not one of: " in unknown.stderr


async def test_statement_lists_the_entries_between_two_balances(backend) -> None:
    world, now = await _settled(backend)
    result = _run(backend, "statement", "--bu", world.bu("shop"), "--from", (now - timedelta(hours=2, minutes=30)).isoformat(),
                  "--to", now.isoformat(), "--json")
    assert result.returncode == 0, result.stderr
    statement = json.loads(result.stdout)
    inside = [index for index in range(9) if 3 - index % 3 <= 2]
    assert len(statement["entries"]) == len(inside) == 6
    expected = sum((world.expected_amount(20_000 + index, 2_000) for index in inside), Decimal(0))
    assert Decimal(statement["movements"]["spend"]) == expected
    assert Decimal(statement["opening"]["spend"]) + expected == Decimal(statement["closing"]["spend"])
    text = _run(backend, "statement", "--bu", world.bu("shop"), "--from", (now - timedelta(hours=4)).isoformat(), "--to", now.isoformat())
    assert "opening + entries = closing" in text.stdout and world.bu("shop") in text.stdout
    naive = _run(backend, "statement", "--bu", world.bu("shop"), "--from", "2026-03-01T00:00:00", "--to", now.isoformat())
    assert naive.returncode == 1 and "Traceback" not in naive.stderr and len(naive.stderr.strip().splitlines()) == 1
    assert "has no time zone" in naive.stderr


async def test_budget_set_records_actor_and_reason_and_show_reports_the_month(backend) -> None:
    world, _ = await _settled(backend)
    payer = world.bu("shop")
    result = _run(backend, "budget", "set", "--bu", payer, "--amount", "0.5", "--hard-limit", "10", "--thresholds", "10,50",
                  "--actor", "carol", "--reason", "Q2 plan")
    assert result.returncode == 0, result.stderr
    deadline = time.monotonic() + WAIT_S
    while True:
        shown = _run(backend, "budget", "show", "--bu", payer, "--json")
        if shown.returncode == 0:
            rows = json.loads(shown.stdout)
            if rows and rows[0]["thresholds_crossed"]:
                break
        assert time.monotonic() < deadline, shown.stdout + shown.stderr
        time.sleep(0.3)
    row = rows[0]
    spent = sum((world.expected_amount(20_000 + index, 2_000) for index in range(9)), Decimal(0))
    assert (row["actor"], row["reason"], row["amount"], row["hard_limit"]) == ("carol", "Q2 plan", "0.500000000000", "10.000000000000")
    assert Decimal(row["spent"]) == spent and row["thresholds_crossed"] == ["10", "50"] and not row["quota_exhausted"]
    bad = _run(backend, "budget", "set", "--bu", payer, "--amount", "-1", "--reason", "x")
    assert bad.returncode == 1 and "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


async def test_restore_fills_an_empty_database(backend) -> None:
    world, _ = await _settled(backend)
    name = f"restore_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(world.settings.database_url)
    target = (world.settings.database_url or "").replace("/tokenhub?", f"/{name}?")
    try:
        await admin.execute(f"create database {name}")
        result = _run(backend, "restore", "--into", target)
        assert result.returncode == 0, result.stderr
        entries = await admin.fetchval("select count(*) from ledger.journal")
        assert f"restored {entries} entries" in result.stdout
        again = _run(backend, "restore", "--into", target)
        assert again.returncode == 1 and "empty" in again.stderr and len(again.stderr.strip().splitlines()) == 1
    finally:
        await admin.execute(f"drop database if exists {name} with (force)")
        await admin.close()
