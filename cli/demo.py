"""`tokenhub demo`: a realistic day of AI usage across the company, end to end.

Everything runs on an injected clock and a seeded generator, so two runs
print the same figures.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import signal
import time
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Final
from zoneinfo import ZoneInfo

import asyncpg
import yaml

from tokenhub.api import keys
from tokenhub.api.settings import api_port
from tokenhub.cli import render
from tokenhub.audit.replay import replay
from tokenhub.audit.verify import verify
from tokenhub.cli.audit_commands import replay_text, verify_text
from tokenhub.cli.commands import relay_invoicing
from tokenhub.cli.invoicing_commands import render_settlement
from tokenhub.client import UsageClient, usage_event
from tokenhub.contracts.canonical import canonical_json
from tokenhub.contracts.events import UsageReported
from tokenhub.contracts.money import line_amount
from tokenhub.contracts.periods import parse
from tokenhub.contracts.topics import PRICEBOOK_PUBLISHED, REGISTRY_CHANGED
from tokenhub.infra.embedded import wait_for_port
from tokenhub.infra.pipeline import LocalPipeline, counters, settled, wait_until
from tokenhub.infra.settings import Settings
from tokenhub.services.common.db import create_pool
from tokenhub.services.common.logging import configure_logging
from tokenhub.services.invoicing import queries as invoicing_queries
from tokenhub.services.ledger import queries as ledger_queries
from tokenhub.services.metering import queries as metering_queries

EVENTS_DEFAULT: Final = 4_000
SEED_DEFAULT: Final = 20260314
DEMO_DIR: Final = Path(__file__).resolve().parent.parent / "infra" / "demo"
ZONE: Final = ZoneInfo("Asia/Shanghai")
DAY: Final = datetime(2026, 3, 14, tzinfo=ZONE)
SETUP_TIME: Final = datetime(2026, 2, 27, 9, 0, tzinfo=ZONE)  # finance publishes March prices in February
NOW: Final = datetime(2026, 3, 15, 0, 5, tzinfo=ZONE)  # just after the demo day
SETTLE_TIMEOUT_S: Final = 150.0
RECOMPUTED_BU: Final = "cainiao"
API_START_TIMEOUT_S: Final = 60.0

# (consumer BU, weight, models it uses with weights, apps)
CONSUMERS: Final = (
    ("taobao-tmall", 26, {"qwen-plus": 5, "qwen-max": 2, "qwen-turbo": 3, "text-embedding-v3": 2, "wan2.2-t2i": 1}, ("search-assistant", "listing-writer")),
    ("local-services", 10, {"qwen-turbo": 4, "qwen-plus": 2, "amap-geocode": 2}, ("rider-dispatch",)),
    ("international-ecommerce", 12, {"qwen-plus": 3, "qwen-max": 1, "wan2.2-t2v": 1}, ("translation", "ad-video")),
    ("cainiao", 8, {"qwen-turbo": 3, "qwen3-coder-plus": 1, "amap-geocode": 1}, ("route-planner",)),
    ("dingtalk", 14, {"qwen-max": 2, "qwen-plus": 3, "agent-runtime": 1}, ("merchant-assistant", "meeting-notes")),
    ("qianwen-app", 16, {"qwen-max": 4, "qwen-plus": 2, "wan2.2-t2i": 1}, ("chat",)),
    ("quark", 9, {"qwen-plus": 3, "qwen-max": 1}, ("quark-ai-search", "scan")),
    ("ai-innovation", 5, {"qwen3-coder-plus": 2, "agent-runtime": 2, "wan2.2-t2v": 1}, ("lab",)),
)

# Traffic by hour of the day (Asia/Shanghai): a morning and an evening peak.
HOURLY_CURVE: Final = (2, 1, 1, 1, 1, 2, 3, 5, 8, 10, 11, 10, 8, 9, 10, 10, 9, 8, 8, 9, 11, 12, 8, 4)


def _heavy_tail(rng: random.Random, median: int, sigma: float, cap: int) -> int:
    return max(1, min(cap, int(rng.lognormvariate(math.log(median), sigma))))


def _usage(rng: random.Random, consumer: str, model: str, app: str) -> dict[str, Any]:
    data: dict[str, Any] = {"consumer_bu": consumer, "model": model, "app": app}
    if model in ("qwen-max", "qwen-plus", "qwen-turbo", "qwen3-coder-plus"):
        prompt = _heavy_tail(rng, 1_800, 1.3, 400_000 if model != "qwen-turbo" else 120_000)
        cached = rng.randint(0, prompt // 2) if rng.random() < 0.35 else 0
        data["input_tokens"] = prompt - cached
        if cached:
            data["cache_read_tokens"] = cached
        data["output_tokens"] = _heavy_tail(rng, 350, 1.0, 16_000)
        if model in ("qwen-max", "qwen-plus") and rng.random() < 0.25:
            data["reasoning_tokens"] = _heavy_tail(rng, 900, 0.9, 30_000)
    elif model == "text-embedding-v3":
        data["embedding_tokens"] = _heavy_tail(rng, 600, 0.8, 8_000)
    elif model == "wan2.2-t2i":
        data["input_tokens"] = rng.randint(20, 200)
        data["image_count"] = rng.choice((1, 1, 2, 4))
        data["image_size"] = rng.choice(("1024x1024", "1024x1024", "2048x2048"))
    elif model == "wan2.2-t2v":
        data["input_tokens"] = rng.randint(30, 300)
        data["video_seconds"] = str(rng.choice((5, 5, 10)))
        data["video_resolution"] = rng.choice(("720p", "1080p"))
    elif model == "agent-runtime":
        data["agent_steps"] = rng.randint(1, 12)
        data["tool_calls"] = rng.randint(0, 20)
    elif model == "amap-geocode":
        data["api_calls"] = rng.randint(1, 50)
    return data


def generate_usage(count: int, *, seed: int = SEED_DEFAULT, day_end: datetime | None = None) -> list[UsageReported]:
    """`count` usage events over the day before `day_end`, seeded."""
    rng = random.Random(seed)
    end = (day_end or NOW).astimezone(ZONE)
    start = datetime(end.year, end.month, end.day, tzinfo=ZONE) - timedelta(days=1) if day_end is None else end - timedelta(days=1)
    hours = rng.choices(range(24), weights=HOURLY_CURVE, k=count)
    events = []
    for index, hour in enumerate(hours):
        consumer, _, models, apps = rng.choices(CONSUMERS, weights=[c[1] for c in CONSUMERS])[0]
        model = rng.choices(list(models), weights=list(models.values()))[0]
        moment = start + timedelta(hours=hour, seconds=rng.randrange(3600), microseconds=rng.randrange(1000) * 1000)
        events.append(usage_event(f"gateway/{consumer}", f"req-{seed}-{index:07d}", moment,
                                  _usage(rng, consumer, model, rng.choice(apps))))
    return events


BAD_EVENTS: Final = (
    b"this is not json",
    b'{"specversion": "1.0", "id": "bad-1", "source": "gateway/quark", "type": "com.tokenhub.usage.v1", '
    b'"time": "2026-03-14T10:00:00+08:00", "data": {"consumer_bu": "unknown-bu", "model": "qwen-max", "input_tokens": 10}}',
    b'{"specversion": "1.0", "id": "bad-2", "source": "gateway/quark", "type": "com.tokenhub.usage.v1", '
    b'"time": "2026-03-14T10:00:00", "data": {"consumer_bu": "quark", "model": "qwen-max", "input_tokens": 10}}',
    b'{"specversion": "1.0", "id": "bad-3", "source": "gateway/quark", "type": "com.tokenhub.usage.v1", '
    b'"time": "2026-03-14T10:00:00+08:00", "data": {"consumer_bu": "quark", "model": "qwen-max", "input_tokens": -5}}',
)


def recompute_spend(events: list[UsageReported], bu: str) -> Decimal:
    """`bu`'s spend straight from the price book and conversion table files: its own
    arithmetic, none of metering's or pricing's code. Valid for a BU that pays only
    for itself (no funding agreement names it)."""
    book = yaml.safe_load((DEMO_DIR / "pricebook.yaml").read_text())
    registry = yaml.safe_load((DEMO_DIR / "registry.yaml").read_text())
    conversion = {rule["unit"]: Decimal(rule["tokens_per_unit"]) for rule in registry["conversion_tables"][0]["rules"]}
    prices = {entry["model"]: entry for entry in book["models"]}
    total = Decimal(0)
    for event in events:
        data = event.data
        if data.consumer_bu != bu:
            continue
        tokens = {
            "input": (data.input_tokens or 0) + (data.embedding_tokens or 0),
            "cache_read": data.cache_read_tokens or 0,
            "cache_write": data.cache_write_tokens or 0,
            "output": data.output_tokens or 0,
            "reasoning": data.reasoning_tokens or 0,
            "api_call": math.ceil((data.api_calls or 0) * conversion["api_call"]),
            "tool_call": math.ceil((data.tool_calls or 0) * conversion["tool_call"]),
            "agent_step": math.ceil((data.agent_steps or 0) * conversion["agent_step"]),
        }
        entry = prices[data.model]
        unit_prices = {name: Decimal(value) for name, value in entry["unit_prices_per_million"].items()}
        whole_input = tokens["input"] + tokens["cache_read"] + tokens["cache_write"]
        for tier in entry.get("context_tiers", []):
            if whole_input > tier["above_input_tokens"]:
                unit_prices.update({name: Decimal(value) for name, value in tier["unit_prices_per_million"].items()})
        total += sum((line_amount(quantity, unit_prices[name]) for name, quantity in tokens.items() if quantity), Decimal(0))
    return total


async def _publish_setup(pipeline: LocalPipeline) -> None:
    from tokenhub.cli.commands import build_book, publish_events, registry_events

    settings = Settings(**{"bootstrap_servers": pipeline.env["TOKENHUB_BOOTSTRAP_SERVERS"],
                           "database_url": pipeline.env["TOKENHUB_DATABASE_URL"], "now": SETUP_TIME})
    registry = yaml.safe_load((DEMO_DIR / "registry.yaml").read_text())
    await publish_events(settings, REGISTRY_CHANGED.name,
                         registry_events(registry, "finance-ops", "company registry for the demo", SETUP_TIME))
    book = build_book(yaml.safe_load((DEMO_DIR / "pricebook.yaml").read_text()), settings, "finance-ops",
                      "March internal transfer prices", retroactive=False)
    await publish_events(settings, PRICEBOOK_PUBLISHED.name, [(book.book_id.encode(), canonical_json(book))])


async def _wait_registry(database_url: str, business_units: int, models: int) -> None:
    connection = await asyncpg.connect(database_url)
    try:
        async def ready() -> bool:
            units = await connection.fetchval("select count(*) from metering.business_units")
            known = await connection.fetchval("select count(*) from metering.models")
            books = await connection.fetchval("select count(*) from pricing.price_books")
            return units >= business_units and known >= models and books >= 1
        await wait_until(ready, 60, "the registry and price book to arrive")
    finally:
        await connection.close()


def _section(title: str) -> None:
    print(f"\n== {title} " + "=" * max(0, 70 - len(title)), flush=True)


async def run(arguments: argparse.Namespace) -> int:
    started = time.monotonic()
    configure_logging(Settings(log_level="WARNING"))  # the demo speaks in tables; services log to files
    pipeline = LocalPipeline(env={"TOKENHUB_NOW": NOW.isoformat(), "TOKENHUB_LOG_LEVEL": "WARNING"})
    try:
        print("starting the embedded broker, PostgreSQL and the four services ...", flush=True)
        endpoints = await pipeline.start()
        registry = yaml.safe_load((DEMO_DIR / "registry.yaml").read_text())
        await _publish_setup(pipeline)
        await _wait_registry(endpoints.database_url, len(registry["business_units"]), len(registry["models"]))
        events = generate_usage(arguments.events, seed=arguments.seed)
        values = [(event.data.consumer_bu.encode(), canonical_json(event)) for event in events]
        values += [(b"quark", bad) for bad in BAD_EVENTS]
        print(f"feeding {len(events)} usage events of {DAY:%Y-%m-%d} from {len(CONSUMERS)} business units "
              f"(and {len(BAD_EVENTS)} malformed ones) ...", flush=True)
        async with UsageClient(endpoints.bootstrap_servers) as client:
            await client.send_raw(render.progress(values, "usage sent"))
        connection = await asyncpg.connect(endpoints.database_url)
        try:
            async def done() -> bool:
                return settled(await counters(connection), len(values))
            await wait_until(done, SETTLE_TIMEOUT_S, "the pipeline to settle")
            figures = await counters(connection)
        finally:
            await connection.close()
        await _report(pipeline, events, figures)
        replay_ok = await _close_and_replay(pipeline)
        if arguments.keep:
            print(f"\ndemo finished in {time.monotonic() - started:.0f} s.")
            await _serve_dashboard(pipeline)
            return 0 if replay_ok else 1
    finally:
        pipeline.stop()
    print(f"\ndemo finished in {time.monotonic() - started:.0f} s; everything stopped.\n"
          "To see the demo's data in the dashboard: tokenhub demo --keep (the same run, then its stack stays up,\n"
          "serves the dashboard and prints a finance API key to sign in with; Ctrl-C stops everything).")
    return 0 if replay_ok else 1


async def _serve_dashboard(pipeline: LocalPipeline) -> None:
    """Serve the API and its dashboard on the demo's stack until SIGINT or SIGTERM."""
    assert pipeline.services is not None and pipeline.endpoints is not None
    port = api_port()
    pipeline.services.start("api", extra_env={"TOKENHUB_API_PORT": str(port)})
    await asyncio.to_thread(wait_for_port, "127.0.0.1", port, API_START_TIMEOUT_S, pipeline.state_dir / "logs" / "api.log")
    connection = await asyncpg.connect(pipeline.endpoints.database_url)
    try:
        key_id, key = await keys.create(connection, "finance", None, "finance-ops", "the demo's dashboard",
                                        datetime.now().astimezone(), None)
    finally:
        await connection.close()
    print(f"\ndashboard on the demo's data: http://127.0.0.1:{port}/dashboard/\n"
          f"  sign in with this finance key ({key_id}): {key}\n"
          f"  api http://127.0.0.1:{port}/docs; the data lives in {pipeline.state_dir} until you stop\n"
          "Ctrl-C stops everything.", flush=True)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signal_number, stopping.set)
    await stopping.wait()
    print("stopping the demo's stack ...", flush=True)


async def _report(pipeline: LocalPipeline, events: list[UsageReported], figures: dict[str, int]) -> None:
    _section("pipeline")
    print(f"metered {figures.get('metering.accepted', 0)} events into {figures.get('metering.consumed', 0)} "
          f"TokenConsumed (funding splits), rejected {figures.get('metering.rejected', 0)} with reasons, "
          f"priced {figures.get('pricing.priced', 0)}, posted {figures.get('ledger.posted', 0)}")
    pool = await create_pool(pipeline.env["TOKENHUB_DATABASE_URL"], size_max=2)
    try:
        by_class = await metering_queries.tokens_by_class(pool)
        shared = await metering_queries.funding_shares(pool)
        _section("Tokens by class: text, image, video and agent usage")
        print(render.table(["class", "models", "Tokens"], [[row.token_class, row.models, f"{row.tokens:,}"]
                                                        for row in by_class], right={2}))
        _section("shared costs: funding agreements applied")
        print(render.table(["agreement", "consumer", "payer", "share %", "events", "Tokens"],
                           [[row.agreement, row.consumer_bu, row.payer_bu, row.share_percent, str(row.events),
                             f"{row.tokens:,}"] for row in shared], right={3, 4, 5}))
        rows = await ledger_queries.balances(pool, names=await metering_queries.display_names(pool))
        _section("balances per business unit (CNY, Tokens)")
        print(render.balances_table(rows, "CNY"))
        ledger_spend = next(row.spend for row in rows if row.bu == RECOMPUTED_BU)
        independent = recompute_spend(events, RECOMPUTED_BU)
        _section(f"independent recomputation of {RECOMPUTED_BU}'s spend")
        print(f"from the price book and the events: {independent:f} CNY\n"
              f"ledger:                             {ledger_spend:f} CNY\n"
              f"{'MATCH' if independent == ledger_spend else 'MISMATCH'}")
    finally:
        await pool.close()


async def _close_and_replay(pipeline: LocalPipeline) -> bool:
    from tokenhub.services.invoicing.handlers import close_period

    settings = Settings(**{"bootstrap_servers": pipeline.env["TOKENHUB_BOOTSTRAP_SERVERS"],
                           "database_url": pipeline.env["TOKENHUB_DATABASE_URL"], "now": NOW})
    pool = await create_pool(settings.database_url or "", size_max=2)
    try:
        # The demo's month ends after its day: closed early, on purpose.
        issued = await close_period(pool, settings, f"{DAY:%Y-%m}", actor="finance-ops", now=NOW, early=True)
        await relay_invoicing(settings, pool)  # invoices.issued and settlements.netted, as the command does
        _section(f"month end: {len(issued)} invoices issued for {DAY:%Y-%m}")
        print(render.invoice_list(await invoicing_queries.invoices(pool, settings, bu=None, period=f"{DAY:%Y-%m}")))
        print()
        print(render.invoice_text(next(invoice for invoice in issued if invoice.payer_bu == "dingtalk")))
        settlement, final = await invoicing_queries.settlement(pool, settings, parse(f"{DAY:%Y-%m}", settings.timezone))
        _section(f"settlement between business units for {DAY:%Y-%m}")
        print(render_settlement(settlement, final))
        _section("replay from tokens.priced")
        report = await replay(pool, settings.bootstrap_servers, source="topic", idle_timeout_s=3.0)
        print(replay_text(report))
        _section("audit: tokenhub verify")
        verified = await verify(pool, settings.bootstrap_servers, minor_units=settings.currency_minor_units,
                                zone=settings.timezone, idle_timeout_s=3.0)
        print(verify_text(verified))
        return report.ok and verified.ok
    finally:
        await pool.close()



def register(subparsers: argparse._SubParsersAction) -> None:
    demo = subparsers.add_parser("demo", help="run the whole pipeline on a realistic day and print the results")
    demo.add_argument("--events", type=int, default=EVENTS_DEFAULT)
    demo.add_argument("--seed", type=int, default=SEED_DEFAULT)
    demo.add_argument("--keep", action="store_true",
                      help="after the run, keep the demo's stack up and serve the API and dashboard on its data until Ctrl-C")
    demo.set_defaults(handler=run)
