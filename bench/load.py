"""The load the demo and the benchmark feed: a realistic day of a company's AI
usage (text, embeddings, images, video, agent steps, geocoding calls) from
eight business units, seeded so that two runs send the same events; the
registry and price book it is priced with (`infra/demo/`); a few malformed
events; and its spend recomputed from the files alone, with none of the
services' code, for the demo to compare with the ledger."""

from __future__ import annotations

import math
import random
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Final
from zoneinfo import ZoneInfo

import asyncpg
import yaml

import tokenhub.infra
from tokenhub.client import usage_event
from tokenhub.contracts.canonical import canonical_json
from tokenhub.contracts.events import UsageReported
from tokenhub.contracts.money import line_amount
from tokenhub.contracts.pricebook import book_from_document
from tokenhub.contracts.registry import registry_changes
from tokenhub.contracts.topics import PRICEBOOK_PUBLISHED, REGISTRY_CHANGED
from tokenhub.infra.pipeline import wait_until
from tokenhub.infra.settings import Settings
from tokenhub.services.common.kafka import send_events

DEMO_DIR: Final = Path(tokenhub.infra.__file__).resolve().parent / "demo"
"""The company's registry and March price book, as files a person loads with
`tokenhub registry` and `tokenhub pricebook publish`."""
SEED_DEFAULT: Final = 20260314
ZONE: Final = ZoneInfo("Asia/Shanghai")
DAY_END_DEFAULT: Final = datetime(2026, 3, 15, 0, 5, tzinfo=ZONE)
"""Usage is generated over the day before this, unless told otherwise: 2026-03-14."""
REGISTRY_WAIT_S: Final = 60.0
"""Metering and pricing store a registry and a book within seconds; a minute means they are not running."""


def registry_document() -> dict[str, Any]:
    return yaml.safe_load((DEMO_DIR / "registry.yaml").read_text())


def pricebook_document() -> dict[str, Any]:
    return yaml.safe_load((DEMO_DIR / "pricebook.yaml").read_text())


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
    end = (day_end or DAY_END_DEFAULT).astimezone(ZONE)
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


def usage_messages(count: int, *, seed: int = SEED_DEFAULT, day_end: datetime | None = None) -> list[tuple[bytes, bytes]]:
    """`generate_usage` as messages for usage.reported: keyed by consumer BU, canonical bytes."""
    return [(event.data.consumer_bu.encode(), canonical_json(event))
            for event in generate_usage(count, seed=seed, day_end=day_end)]


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
    book = pricebook_document()
    registry = registry_document()
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


async def seed_company(settings: Settings, *, actor: str, registry_reason: str, book_reason: str, at: datetime,
                       published_at: datetime, retroactive: bool) -> None:
    """Publish the company's registry (changed `at`) and price book (published
    `published_at`) on the stack `settings` name, and return once metering and
    pricing have stored them."""
    bootstrap_servers, database_url = settings.require_stack()
    registry = registry_document()
    await send_events(bootstrap_servers, REGISTRY_CHANGED.name, [
        (change.entity_id.encode(), canonical_json(change)) for change in registry_changes(registry, actor, registry_reason, at)],
        settings=settings)
    book = book_from_document(pricebook_document(), actor=actor, reason=book_reason, retroactive=retroactive,
                              published_at=published_at)
    await send_events(bootstrap_servers, PRICEBOOK_PUBLISHED.name, [(book.book_id.encode(), canonical_json(book))],
                      settings=settings)
    await wait_registered(database_url, len(registry["business_units"]), len(registry["models"]))


async def wait_registered(database_url: str, business_units: int, models: int) -> None:
    connection = await asyncpg.connect(database_url)
    try:
        async def ready() -> bool:
            units = await connection.fetchval("select count(*) from metering.business_units")
            known = await connection.fetchval("select count(*) from metering.models")
            books = await connection.fetchval("select count(*) from pricing.price_books")
            return units >= business_units and known >= models and books >= 1
        await wait_until(ready, REGISTRY_WAIT_S, "the registry and price book to arrive")
    finally:
        await connection.close()
