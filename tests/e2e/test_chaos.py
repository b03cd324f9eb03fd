"""Chaos, as an operator would cause it (issue 15, item 4): `tokenhub up`
runs the stack; usage of known content is sent over HTTP (durable once
answered 202) while services are SIGKILLed at random moments, PostgreSQL once
and the broker once; then every payer's spend and every consumer's Tokens are
compared with a tally computed here from the events sent and the price book
(never from the services' own counters), to the last decimal, and `tokenhub
verify` and `tokenhub replay` must pass.

The short run is in the default suite; the long one (100,000 events, at least
20 service kills, a PostgreSQL kill and a broker kill) is opt-in: `pytest -m soak
tests/e2e/test_chaos.py -s`. Each writes its faults, their time to resume and
the outcome as JSON where TOKENHUB_CHAOS_REPORT names a file (RELIABILITY.md)."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from tests.e2e.test_supervision import processes, start_up, status, stop_up, tokenhub, wait_for
from tokenhub.client import usage_event
from tokenhub.contracts.canonical import canonical_json
from tokenhub.infra.pipeline import counters

pytestmark = pytest.mark.asyncio(loop_scope="session")

MILLION = Decimal(1_000_000)
SOURCE = "chaos/gateway"
BATCH_EVENTS = 100
"""Events per HTTP request: small enough that a request lost to a kill is cheap to send again."""
SEND_DEADLINE_S = 180.0
"""How long one batch may take to be acknowledged, through every restart in its way."""
RESTART_DEADLINE_S = 120.0
PROGRESS_DEADLINE_S = 90.0
STALLED_S = 180.0
"""A ledger that posts nothing for this long while Tokens are missing has lost them."""
SERVICES = ("metering", "pricing", "ledger", "invoicing")
CLASSES = ("input", "cache_read", "output", "reasoning")
PRICES = {"input": Decimal("2.4"), "cache_read": Decimal("0.48"), "output": Decimal("9.6"), "reasoning": Decimal("9.6")}
FIELDS = {"input": "input_tokens", "cache_read": "cache_read_tokens", "output": "output_tokens",
          "reasoning": "reasoning_tokens"}
PROVIDER = "chaos-provider"
MODEL = "chaos-model"
SPONSOR = "chaos-sponsor"
# Who consumes, and who pays each share: two pay for themselves, one is sponsored
# in full, one is split evenly (every quantity it reports is even, so each half is
# whole and the split needs no rounding to be tallied here).
PAYERS = {
    "chaos-shop": {"chaos-shop": 1},
    "chaos-maps": {"chaos-maps": 1},
    "chaos-sponsored": {SPONSOR: 1},
    "chaos-shared": {"chaos-shared": 2, SPONSOR: 2},  # halves
}


@dataclass
class Plan:
    events: int
    service_kills: int
    postgres_kill: bool
    broker_kill: bool
    rate_per_s: float
    """Events sent per second at most, so the faults land while usage flows."""
    seed: int
    settle_deadline_s: float


@dataclass
class FaultRecord:
    kind: str
    target: str
    at_events_sent: int
    restarted_s: float | None = None
    """From the SIGKILL until `tokenhub up` reported the process running again."""
    progress_s: float | None = None
    """From the SIGKILL until the ledger posted Tokens again (durable progress)."""
    supervisor_outcome: str = ""


@dataclass
class Tally:
    spend: dict[str, Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    consumed: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    revenue: Decimal = Decimal(0)
    served: int = 0
    priced_events: int = 0
    tokens_by_event: list[int] = field(default_factory=list)

    def add(self, consumer: str, tokens: dict[str, int]) -> None:
        """By hand: each payer's share of every class, times the book's price per million."""
        shares = PAYERS[consumer]
        whole = sum(shares.values())
        for payer, share in shares.items():
            amount = sum((Decimal(tokens[name] * share // whole) * PRICES[name] for name in CLASSES), Decimal(0)) / MILLION
            self.spend[payer] += amount
            self.revenue += amount
            self.priced_events += 1
        total = sum(tokens.values())
        self.consumed[consumer] += total
        self.served += total
        self.tokens_by_event.append(total)


def _documents(now: datetime) -> tuple[dict[str, Any], dict[str, Any]]:
    since = (now - timedelta(days=60)).isoformat()
    units = sorted({*PAYERS, SPONSOR, PROVIDER})
    registry = {
        "business_units": [{"bu_id": unit, "display_name": unit.replace("-", " ").title()} for unit in units],
        "models": [{"model_id": MODEL, "provider_bu": PROVIDER, "modality": "text", "token_classes": list(CLASSES)}],
        "funding_agreements": [
            {"agreement_id": "chaos-sponsorship", "consumer_bu": "chaos-sponsored",
             "payers": [{"bu": SPONSOR, "percent": "100"}], "effective_from": since},
            {"agreement_id": "chaos-shared", "consumer_bu": "chaos-shared",
             "payers": [{"bu": "chaos-shared", "percent": "50"}, {"bu": SPONSOR, "percent": "50"}],
             "effective_from": since},
        ],
    }
    book = {"book_id": "chaos-book", "version": 1, "currency": "CNY", "effective_from": since,
            "models": [{"model": MODEL, "unit_prices_per_million": {name: str(price) for name, price in PRICES.items()}}]}
    return registry, book


def _usage(plan: Plan, now: datetime) -> tuple[list[bytes], Tally]:
    """The events to send, as canonical JSON, and the tally they must come to."""
    rng = random.Random(plan.seed)
    start = now - timedelta(hours=3)
    step = timedelta(hours=2) / plan.events
    tally = Tally()
    events: list[bytes] = []
    consumers = sorted(PAYERS)
    for index in range(plan.events):
        consumer = consumers[index % len(consumers)]
        even = 2 if consumer == "chaos-shared" else 1
        tokens = {"input": rng.randint(1, 200_000) * even, "cache_read": rng.randint(0, 50_000) * even,
                  "output": rng.randint(0, 20_000) * even, "reasoning": rng.randint(0, 5_000) * even}
        data = {"consumer_bu": consumer, "model": MODEL, **{FIELDS[name]: tokens[name] for name in CLASSES}}
        events.append(canonical_json(usage_event(SOURCE, f"req-{plan.seed}-{index}", start + step * index, data)))
        tally.add(consumer, tokens)
    return events, tally


class Chaos:
    def __init__(self, cwd: Path, plan: Plan, tally: Tally) -> None:
        self.cwd = cwd
        self.plan = plan
        self.tally = tally
        self.sent = 0
        self.sent_tokens = 0
        self.holding_back = False
        self.sending_done = asyncio.Event()
        self.faults_done = asyncio.Event()
        self.faults: list[FaultRecord] = []
        self.retried_batches = 0
        self.endpoints: dict[str, Any] = {}

    async def posted_tokens(self) -> int | None:
        """Tokens the ledger has posted so far (its Tokens ledger's debits, Tokens
        consumed), or None while the database is away."""
        try:
            connection = await asyncpg.connect(self.endpoints["database_url"], timeout=5)
        except (OSError, asyncpg.PostgresError, asyncio.TimeoutError):
            return None
        try:
            return int(await connection.fetchval(
                "select coalesce(sum(debit_total), 0) from ledger.balances where ledger = 'tokens'"))
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            return None
        finally:
            await connection.close()

    async def counters(self) -> dict[str, int]:
        """The services' own counters: never compared with the tally, only shown
        when the tally is not reached, to say at which hop the Tokens stopped."""
        connection = await asyncpg.connect(self.endpoints["database_url"], timeout=5)
        try:
            return await counters(connection)
        finally:
            await connection.close()

    async def send(self, events: list[bytes], key: str) -> None:
        """Every batch until answered 202 (the usage is then durable), with no
        rejection. The last twentieth waits until every fault was injected, so
        each fault lands while usage flows, however slow the machine is."""
        pause = 1.0 / self.plan.rate_per_s * BATCH_EVENTS
        held_back = len(events) - len(events) // 20
        async with httpx.AsyncClient(timeout=30) as client:
            for offset in range(0, len(events), BATCH_EVENTS):
                if offset >= held_back and not self.faults_done.is_set():
                    self.holding_back = True
                    await self.faults_done.wait()
                    self.holding_back = False
                batch = events[offset:offset + BATCH_EVENTS]
                body = b"[" + b",".join(batch) + b"]"
                started = time.monotonic()
                deadline = started + SEND_DEADLINE_S
                attempts = 0
                while True:
                    attempts += 1
                    try:
                        response = await client.post(self.endpoints["ingest_url"], content=body, headers={
                            "authorization": f"Bearer {key}", "content-type": "application/cloudevents-batch+json"})
                        if response.status_code == 202:
                            answer = response.json()
                            assert answer["rejected_count"] == 0, answer["rejected"][:3]
                            break
                        assert response.status_code >= 500, f"{response.status_code}: {response.text[:300]}"
                    except httpx.TransportError:
                        pass
                    assert time.monotonic() < deadline, f"batch at {offset} not acknowledged in {SEND_DEADLINE_S:.0f} s"
                    await asyncio.sleep(min(0.2 * attempts, 2.0))
                self.retried_batches += attempts > 1
                self.sent = offset + len(batch)
                self.sent_tokens += sum(self.tally.tokens_by_event[offset:offset + len(batch)])
                await asyncio.sleep(max(0.0, pause - (time.monotonic() - started)))
        self.sending_done.set()

    async def inject(self) -> None:
        plan = self.plan
        rng = random.Random(plan.seed * 7 + 1)
        kinds = [("service", rng.choice(SERVICES)) for _ in range(plan.service_kills)]
        if plan.postgres_kill:
            kinds.insert(rng.randint(1, max(1, len(kinds) - 1)), ("postgres", "postgres"))
        if plan.broker_kill:
            kinds.insert(rng.randint(1, max(1, len(kinds))), ("broker", "broker"))
        # Random moments while usage flows: thresholds of events acknowledged, kept
        # in order, between the first and the last twentieth of the run.
        thresholds = sorted(rng.randint(plan.events // 20, plan.events * 18 // 20) for _ in kinds)
        for (kind, target), threshold in zip(kinds, thresholds, strict=True):
            while self.sent < threshold:
                await asyncio.sleep(0.05)
            await asyncio.sleep(rng.uniform(0, 0.5))
            await self.kill(kind, target)
        self.faults_done.set()

    async def kill(self, kind: str, target: str) -> None:
        before = await asyncio.to_thread(processes, self.cwd)
        victim = before[target]
        record = FaultRecord(kind, target, self.sent)
        tokens_before = await self.posted_tokens()
        killed = time.monotonic()
        os.kill(victim["pid"], signal.SIGKILL)

        def back() -> dict[str, Any] | None:
            process = processes(self.cwd).get(target)
            if (process and process["restarts"] == victim["restarts"] + 1 and process["state"] == "running"
                    and process["pid"] != victim["pid"]):
                return process
            return None
        await asyncio.to_thread(wait_for, f"{target} to be restarted", back, RESTART_DEADLINE_S)
        record.restarted_s = round(time.monotonic() - killed, 2)
        document = json.loads((self.cwd / ".tokenhub" / "status.json").read_text())
        faults = [fault for fault in document["faults"] if fault["process"] == target]
        record.supervisor_outcome = faults[-1]["outcome"] if faults else ""
        deadline = time.monotonic() + PROGRESS_DEADLINE_S  # after the restart, which may be long (the republish)
        while time.monotonic() < deadline:
            tokens = await self.posted_tokens()
            if tokens is not None and tokens >= self.sent_tokens and self.holding_back:
                break  # everything sent is posted and no more comes until the faults are over
            if tokens is not None and tokens_before is not None and tokens > tokens_before:
                record.progress_s = round(time.monotonic() - killed, 2)
                break
            if tokens_before is None:
                tokens_before = tokens
            await asyncio.sleep(0.2)
        self.faults.append(record)
        print(f"chaos: {kind} {target} killed at {record.at_events_sent} events sent; restarted after "
              f"{record.restarted_s} s, ledger posting again after {record.progress_s} s ({record.supervisor_outcome})",
              flush=True)


def _pipeline_idle(cwd: Path) -> bool:
    services = status(cwd).get("services", [])
    return len(services) == len(SERVICES) and all(
        service["records_behind"] == 0 and service["outbox_events"] == 0 for service in services)


def _balances(cwd: Path) -> dict[str, dict[str, Any]]:
    result = tokenhub(cwd, "balance", "--json")
    assert result.returncode == 0, result.stderr
    return {row["bu"]: row for row in json.loads(result.stdout)}


def _matches(rows: dict[str, dict[str, Any]], tally: Tally) -> list[str]:
    """Every difference between the ledger's balances and the tally; empty when equal."""
    differences = []
    for payer, expected in sorted(tally.spend.items()):
        got = Decimal(rows.get(payer, {}).get("spend", "0"))
        if got != expected:
            differences.append(f"{payer} spend {got} != {expected}")
    for consumer, expected in sorted(tally.consumed.items()):
        got = rows.get(consumer, {}).get("tokens_consumed", 0)
        if int(got) != expected:
            differences.append(f"{consumer} Tokens consumed {got} != {expected}")
    provider = rows.get(PROVIDER, {})
    if Decimal(provider.get("revenue", "0")) != tally.revenue:
        differences.append(f"{PROVIDER} revenue {provider.get('revenue')} != {tally.revenue}")
    if int(provider.get("tokens_served", 0)) != tally.served:
        differences.append(f"{PROVIDER} Tokens served {provider.get('tokens_served')} != {tally.served}")
    return differences


async def run_chaos(tmp_path: Path, plan: Plan) -> dict[str, Any]:
    now = datetime.now(UTC)
    registry, book = _documents(now)
    (tmp_path / "registry.yaml").write_text(json.dumps(registry))
    (tmp_path / "book.yaml").write_text(json.dumps(book))
    events, tally = _usage(plan, now)
    up = await asyncio.to_thread(start_up, tmp_path)
    chaos = Chaos(tmp_path, plan, tally)
    try:
        chaos.endpoints = (await asyncio.to_thread(status, tmp_path))["endpoints"]
        for arguments in (("registry", "registry.yaml", "--reason", "chaos"),
                          ("pricebook", "publish", "book.yaml", "--retroactive", "--reason", "chaos")):
            result = await asyncio.to_thread(tokenhub, tmp_path, *arguments)
            assert result.returncode == 0, result.stderr
        created = await asyncio.to_thread(tokenhub, tmp_path, "keys", "create", "--source", "chaos/*", "--reason", "chaos")
        assert created.returncode == 0, created.stderr
        key = created.stdout.splitlines()[1].strip()

        def configured() -> bool:
            units = tokenhub(tmp_path, "bu", "list", "--json")
            return units.returncode == 0 and len(json.loads(units.stdout)) == len({*PAYERS, SPONSOR, PROVIDER})
        await asyncio.to_thread(wait_for, "metering to know the business units", configured, 120)

        started = time.monotonic()
        await asyncio.gather(chaos.send(events, key), chaos.inject())
        sent_s = time.monotonic() - started

        deadline = time.monotonic() + plan.settle_deadline_s
        last, last_change = None, time.monotonic()
        while (tokens := await chaos.posted_tokens()) != tally.served:  # the debits: Tokens consumed
            if tokens != last:
                last, last_change = tokens, time.monotonic()
            now_s = time.monotonic()
            if now_s > deadline or now_s - last_change > STALLED_S:
                raise AssertionError(
                    f"the ledger holds {tokens} of {tally.served} Tokens, unchanged for {now_s - last_change:.0f} s, "
                    f"{now_s - (deadline - plan.settle_deadline_s):.0f} s after the last event was acknowledged: "
                    f"{_matches(await asyncio.to_thread(_balances, tmp_path), tally)[:8]}; "
                    f"the services' own counters, for diagnosis only: {await chaos.counters()}")
            await asyncio.sleep(0.5)
        settled_s = time.monotonic() - started
        differences = _matches(await asyncio.to_thread(_balances, tmp_path), tally)
        assert differences == [], differences
        # verify also holds invoicing's totals to the journal: wait until every service
        # has handled its input and published its outbox (tokenhub status measures it).
        await asyncio.to_thread(wait_for, "every service to handle its input and publish its outbox",
                                lambda: _pipeline_idle(tmp_path), plan.settle_deadline_s)
        verified = await asyncio.to_thread(tokenhub, tmp_path, "verify", timeout=900)
        assert verified.returncode == 0, verified.stdout[-3000:] + verified.stderr[-2000:]
        replayed = await asyncio.to_thread(tokenhub, tmp_path, "replay", timeout=900)
        assert replayed.returncode == 0, replayed.stdout[-3000:] + replayed.stderr[-2000:]
        final = await asyncio.to_thread(status, tmp_path)
    finally:
        alive, _ = await asyncio.to_thread(stop_up, up)
    assert alive == [], f"processes left behind: {alive}"
    report = {
        "events": plan.events, "priced_events": tally.priced_events, "payers": len(tally.spend),
        "spend_total": str(tally.revenue), "tokens_total": tally.served,
        "seconds_to_send": round(sent_s, 1), "seconds_to_settle": round(settled_s, 1),
        "batches_sent_again": chaos.retried_batches,
        "faults": [asdict(fault) for fault in chaos.faults],
        "restarts": {process["name"]: process["restarts"] for process in final["processes"]},
        "verify": verified.stdout.strip().splitlines()[-1], "replay": replayed.stdout.strip().splitlines()[-1],
    }
    kills = [fault.kind for fault in chaos.faults]
    assert kills.count("service") == plan.service_kills
    assert kills.count("postgres") == int(plan.postgres_kill) and kills.count("broker") == int(plan.broker_kill)
    if os.environ.get("TOKENHUB_CHAOS_REPORT"):
        Path(os.environ["TOKENHUB_CHAOS_REPORT"]).write_text(json.dumps(report, indent=1))
    print("chaos report:", orjson.dumps(report, option=orjson.OPT_INDENT_2).decode(), flush=True)
    return report


async def test_short_chaos_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    await run_chaos(tmp_path, Plan(events=2_400, service_kills=3, postgres_kill=True, broker_kill=True,
                                   rate_per_s=60, seed=15, settle_deadline_s=240))


@pytest.mark.soak
async def test_long_chaos_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    await run_chaos(tmp_path, Plan(events=100_000, service_kills=20, postgres_kill=True, broker_kill=True,
                                   rate_per_s=400, seed=16, settle_deadline_s=900))
