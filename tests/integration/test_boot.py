"""Boot and recovery on a broker that lost its topics (issue 15, defects 2 and
4): after the embedded broker restarts empty, `infra.boot.prepare` re-creates
the topics and republishes, from each service's own record, the configuration
as the full events people published (registry changes were dead-lettered when
their stored entity was sent instead) and what each service produced.

The broker is restarted here, so this runs on a stack of its own."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from tokenhub.contracts.budgets import BudgetSet, QuotaStateChanged
from tokenhub.contracts.events import PriceBookPublished, decode
from tokenhub.contracts.registry import RegistryChanged
from tokenhub.contracts.topics import ALL_TOPICS, BUDGETS_CONFIGURED, PRICEBOOK_PUBLISHED, QUOTA_STATE, REGISTRY_CHANGED
from tokenhub.infra.boot import prepare
from tokenhub.infra.embedded import EmbeddedStack
from tokenhub.infra.pipeline import service_env, wait_until, with_http_port
from tokenhub.infra.processes import ServiceProcesses
from tokenhub.infra.topics import admin_client

pytestmark = pytest.mark.asyncio(loop_scope="session")

ROOT = Path(__file__).resolve().parents[2]
WAIT_S = 90.0
IDLE_POLLS = 4


@pytest.fixture(scope="module")
async def stack() -> AsyncIterator[EmbeddedStack]:
    own = EmbeddedStack()
    try:
        endpoints = await asyncio.to_thread(own.start)
        await prepare(endpoints.bootstrap_servers, endpoints.database_url)
        yield own
    finally:
        own.stop()


def _tokenhub(stack: EmbeddedStack, *arguments: str) -> str:
    environment = {**{key: value for key, value in os.environ.items() if not key.startswith("TOKENHUB_")},
                   **service_env(stack.endpoints)}
    result = subprocess.run([sys.executable, "-m", "tokenhub.cli.main", *arguments], env=environment, cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"tokenhub {' '.join(arguments)}: {result.stderr}"
    return result.stdout


async def _read_all(bootstrap_servers: str, topic: str) -> list[bytes]:
    """Every value on `topic`, from the start, until it has been idle for two seconds."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap_servers, group_id=None,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    values: list[bytes] = []
    try:
        idle = 0
        while idle < IDLE_POLLS:
            batches = await consumer.getmany(timeout_ms=500)
            records = [record for batch in batches.values() for record in batch]
            idle = 0 if records else idle + 1
            values += [record.value for record in records]
    finally:
        await consumer.stop()
    return values


async def _topic_config(bootstrap_servers: str, topic: str, name: str) -> str | None:
    """A topic's setting as the broker describes it."""
    admin = admin_client(bootstrap_servers)
    await admin.start()
    try:
        (response,) = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    finally:
        await admin.close()
    for resource in response.resources:
        for entry in resource[4]:
            if entry[0] == name:
                return entry[1]
    return None


async def test_configuration_is_republished_as_the_full_events_people_published(stack: EmbeddedStack,
                                                                                 tmp_path: Path) -> None:
    services = ServiceProcesses(with_http_port(service_env(stack.endpoints)), tmp_path / "logs",
                                ("metering", "pricing", "ledger"))
    services.start()
    try:
        _tokenhub(stack, "registry", str(ROOT / "infra/demo/registry.yaml"), "--reason", "boot test")
        _tokenhub(stack, "pricebook", "publish", str(ROOT / "infra/demo/pricebook.yaml"), "--retroactive",
                  "--reason", "boot test")
        _tokenhub(stack, "budget", "set", "--bu", "taobao-tmall", "--amount", "1000", "--from", "2026-03", "--reason", "boot test")
        published = {topic: await _read_all(stack.endpoints.bootstrap_servers, topic)
                     for topic in (REGISTRY_CHANGED.name, PRICEBOOK_PUBLISHED.name, BUDGETS_CONFIGURED.name)}
        assert [len(published[topic]) for topic in published] == [21, 1, 1]
        # The budget gives the payer a quota state (allowed: no hard limit), which the ledger publishes.
        quota_states: list[bytes] = []

        async def quota_published() -> bool:
            quota_states[:] = await _read_all(stack.endpoints.bootstrap_servers, QUOTA_STATE.name)
            return len(quota_states) == 1
        await wait_until(quota_published, WAIT_S, "the ledger to publish the payer's quota state")
        connection = await asyncpg.connect(stack.endpoints.database_url)
        try:
            async def stored() -> bool:
                return (await connection.fetchval("select count(*) from metering.registry_changes") == 21
                        and await connection.fetchval("select count(*) from pricing.price_books") == 1
                        and await connection.fetchval("select count(*) from ledger.budgets") == 1)
            await wait_until(stored, WAIT_S, "the services to store the configuration")
        finally:
            await connection.close()
    finally:
        services.stop()

    await asyncio.to_thread(stack.broker.restart)  # memory storage: every topic is gone
    report = await prepare(stack.endpoints.bootstrap_servers, stack.endpoints.database_url)
    assert sorted(report.topics_created) == sorted(spec.name for spec in ALL_TOPICS)
    assert report.republished[REGISTRY_CHANGED.name] == 21
    assert report.republished[PRICEBOOK_PUBLISHED.name] == 1
    assert report.republished[BUDGETS_CONFIGURED.name] == 1
    assert report.republished[QUOTA_STATE.name] == 1
    assert await _read_all(stack.endpoints.bootstrap_servers, QUOTA_STATE.name) == quota_states, "the latest per payer, as published"
    state = decode(QuotaStateChanged, quota_states[0])
    assert (state.payer_bu, state.state, state.limit, state.remaining, state.sequence) == ("taobao-tmall", "allowed", None, None, 1)
    assert await _topic_config(stack.endpoints.bootstrap_servers, QUOTA_STATE.name, "cleanup.policy") == "compact"
    assert await _topic_config(stack.endpoints.bootstrap_servers, BUDGETS_CONFIGURED.name, "cleanup.policy") == "delete"

    again = {topic: await _read_all(stack.endpoints.bootstrap_servers, topic) for topic in published}
    # Byte for byte what people published, so every consumer decodes and dedups them as the originals.
    for topic in published:
        assert Counter(again[topic]) == Counter(published[topic]), topic
    assert len({decode(RegistryChanged, value).id for value in again[REGISTRY_CHANGED.name]}) == 21
    assert decode(PriceBookPublished, again[PRICEBOOK_PUBLISHED.name][0]).book_id
    assert decode(BudgetSet, again[BUDGETS_CONFIGURED.name][0]).payer_bu == "taobao-tmall"
    # Nothing else republished twice: a second boot on the same broker creates nothing and sends nothing.
    second = await prepare(stack.endpoints.bootstrap_servers, stack.endpoints.database_url)
    assert second.topics_created == [] and second.republished == {}


@pytest.fixture
async def fresh_stack() -> AsyncIterator[EmbeddedStack]:
    own = EmbeddedStack()
    try:
        endpoints = await asyncio.to_thread(own.start)
        await prepare(endpoints.bootstrap_servers, endpoints.database_url)
        yield own
    finally:
        own.stop()


async def test_what_pricing_produced_reaches_a_ledger_that_had_not_read_it_when_the_broker_was_lost(
        fresh_stack: EmbeddedStack, tmp_path: Path) -> None:
    """Defect 2: the republish sent the receivers' archives (what the ledger had
    already received), not what each service produced, so Priced the ledger had
    not read yet when the broker went were gone for good."""
    stack = fresh_stack
    services = ServiceProcesses(with_http_port(service_env(stack.endpoints)), tmp_path / "logs", ("metering", "pricing"))
    services.start()
    connection = await asyncpg.connect(stack.endpoints.database_url)
    try:
        _tokenhub(stack, "registry", str(ROOT / "infra/demo/registry.yaml"), "--reason", "boot test")

        async def registered() -> bool:
            return await connection.fetchval("select count(*) from metering.registry_changes") == 21
        await wait_until(registered, WAIT_S, "metering to store the registry")
        _tokenhub(stack, "pricebook", "publish", str(ROOT / "infra/demo/pricebook.yaml"), "--retroactive",
                  "--reason", "boot test")

        async def booked() -> bool:
            return await connection.fetchval("select count(*) from pricing.price_books") == 1
        await wait_until(booked, WAIT_S, "pricing to store the book")
        _tokenhub(stack, "emit", "--generate", "300", "--seed", "7")

        async def priced() -> bool:
            counts = {row["name"]: row["value"] for row in await connection.fetch(
                "select 'metering.' || name as name, value from metering.counters union all "
                "select 'pricing.' || name, value from pricing.counters")}
            metered = counts.get("metering.accepted", 0) + counts.get("metering.rejected", 0)
            return (metered == 300 and counts.get("metering.consumed", 0) > 0
                    and counts.get("pricing.received", 0) == counts["metering.consumed"])
        await wait_until(priced, WAIT_S, "metering and pricing to handle the 300 usage events")
        produced = await connection.fetchval("select count(*) from pricing.priced")
        assert produced > 0
        assert await connection.fetchval("select count(*) from ledger.journal") == 0  # no ledger ran yet
    finally:
        services.stop()

    await asyncio.to_thread(stack.broker.restart)
    report = await prepare(stack.endpoints.bootstrap_servers, stack.endpoints.database_url)
    assert report.republished["tokens.priced"] == produced
    services = ServiceProcesses(with_http_port(service_env(stack.endpoints)), tmp_path / "logs", ("ledger",))
    services.start()
    try:
        async def posted() -> bool:
            return await connection.fetchval("select count(*) from ledger.journal") >= produced
        await wait_until(posted, WAIT_S, f"the ledger to post the {produced} Priced pricing produced")
        entries, distinct, matching = await connection.fetchrow(
            "select count(*), count(distinct e.priced_id), count(p.priced_id) from ledger.journal e "
            "left join pricing.priced p using (priced_id)")
        assert entries == distinct == matching == produced
    finally:
        services.stop()
        await connection.close()
