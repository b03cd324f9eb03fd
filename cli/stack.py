"""`tokenhub up`, `run` and `init`: the local stack and the services."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import signal
from pathlib import Path
from typing import Final

import asyncpg
import structlog
from aiokafka import AIOKafkaProducer

from tokenhub.contracts.topics import (
    BUDGETS_CONFIGURED,
    LEDGER_POSTED,
    PRICEBOOK_PUBLISHED,
    REGISTRY_CHANGED,
    TOKENS_CONSUMED,
    TOKENS_PRICED,
)
from tokenhub.infra.migrate import migrate
from tokenhub.infra.pipeline import with_http_port
from tokenhub.infra.processes import SERVICES, ServiceProcesses
from tokenhub.infra.settings import STACK_ENV_FILE, Settings, load_settings, settings_for
from tokenhub.infra.topics import create_topics
from tokenhub.services.common.kafka import create_producer

__all__ = ["SERVICES", "init", "up", "run_service", "prepare", "register"]

log = structlog.get_logger()

# The archived streams, in the order a new broker needs them (docs/architecture.md decision 11):
# configuration first, then each stage's output. (topic, query of key and value)
ARCHIVED_STREAMS: Final = (
    (REGISTRY_CHANGED.name, "select entity_id as key, payload::text::bytea as value from metering.registry_changes order by changed_at"),
    (PRICEBOOK_PUBLISHED.name, "select book_id as key, payload as value from pricing.price_books order by effective_from, version"),
    (BUDGETS_CONFIGURED.name, "select payer_bu as key, payload as value from ledger.budgets order by set_at, budget_id"),
    (TOKENS_CONSUMED.name, "select payer_bu as key, payload as value from pricing.consumed_archive order by event_time"),
    (TOKENS_PRICED.name, "select convert_from(payload, 'UTF8')::jsonb ->> 'payer_bu' as key, payload as value from ledger.priced_archive order by received_at"),
    (LEDGER_POSTED.name, "select chain as key, payload as value from ledger.entries order by chain, sequence"),
)
REPUBLISH_BATCH: Final = 5_000


async def prepare(bootstrap_servers: str, database_url: str, settings: Settings | None = None) -> int:
    """Migrations and topics; on a new, empty broker, republish the archives.
    `settings`: the broker's client settings, where they are not this process's."""
    await migrate(database_url)
    created = await create_topics(bootstrap_servers, settings=settings)
    if not created:
        return 0
    return await republish(bootstrap_servers, database_url, settings)


async def republish(bootstrap_servers: str, database_url: str, settings: Settings | None = None) -> int:
    connection = await asyncpg.connect(database_url)
    producer: AIOKafkaProducer = create_producer(bootstrap_servers, client_id="tokenhub-republish", settings=settings)
    await producer.start()
    published = 0
    try:
        for topic, query in ARCHIVED_STREAMS:
            async with connection.transaction():
                cursor = connection.cursor(query, prefetch=REPUBLISH_BATCH)
                async for row in cursor:
                    await producer.send(topic, row["value"], key=(row["key"] or "").encode())
                    published += 1
            await producer.flush()
    finally:
        await producer.stop()
        await connection.close()
    if published:
        log.info("archives_republished", events=published)
    return published


async def init(arguments: argparse.Namespace) -> int:
    settings = load_settings()
    bootstrap_servers, database_url = settings.require_stack()
    republished = await prepare(bootstrap_servers, database_url)
    print(f"topics and migrations ready (republished {republished} archived events)")
    return 0


async def run_service(arguments: argparse.Namespace) -> int:
    settings = load_settings()
    settings.require_stack()
    module = importlib.import_module(f"tokenhub.services.{arguments.service}.app")
    await module.build(settings).run()
    return 0


async def up(arguments: argparse.Namespace) -> int:
    from tokenhub.infra.kafka.stack import open_stack, stack_environment

    settings = load_settings()
    state_dir = Path(settings.state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    stack = open_stack(arguments.broker, state_dir=state_dir, durable=True, brokers=arguments.brokers)
    endpoints = stack.start()
    environment = with_http_port(stack_environment(stack) | _service_env(endpoints.bootstrap_servers, endpoints.database_url))
    services = ServiceProcesses(environment, state_dir / "logs")
    try:
        await prepare(endpoints.bootstrap_servers, endpoints.database_url, settings_for(environment))
        stack.write_env_file(state_dir / STACK_ENV_FILE)
        services.start()
        print(
            "Token Hub is up.\n"
            f"  broker    {endpoints.bootstrap_servers}\n"
            f"  database  {endpoints.database_url}\n"
            f"  services  {', '.join(SERVICES)} (logs in {state_dir / 'logs'})\n"
            f"  ingest    http://127.0.0.1:{environment['TOKENHUB_HTTP_PORT']}/v1/events (API keys: tokenhub keys create)\n"
            "In another terminal in this folder: tokenhub emit --generate 1000, tokenhub balance\n"
            "Ctrl-C stops everything.",
            flush=True,
        )
        await _wait_for_signal(services)
    finally:
        services.stop()
        (state_dir / STACK_ENV_FILE).unlink(missing_ok=True)
        stack.stop()
    return 0


def _service_env(bootstrap_servers: str, database_url: str) -> dict[str, str]:
    return {"TOKENHUB_BOOTSTRAP_SERVERS": bootstrap_servers, "TOKENHUB_DATABASE_URL": database_url}


async def _wait_for_signal(services: ServiceProcesses) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signal_number, stopping.set)
    while not stopping.is_set():
        exited = services.exited()
        if exited:
            log.error("service_exited", services=exited)
            for name in exited:
                service = name
                services.processes.pop(name)
                services.start(service)  # a crashed service is restarted; its effects are idempotent
        try:
            await asyncio.wait_for(stopping.wait(), timeout=1.0)
        except TimeoutError:
            continue


def register(subparsers: argparse._SubParsersAction) -> None:
    up_parser = subparsers.add_parser("up", help="start the embedded stack and all four services in the foreground")
    up_parser.add_argument("--broker", choices=("tansu", "kafka"), default="tansu",
                           help="tansu: the embedded broker (default); kafka: Apache Kafka (KRaft) from Maven Central, "
                                "secured with SASL/SCRAM and TLS, under the state folder's kafka/")
    up_parser.add_argument("--brokers", type=int, default=3, help="Apache Kafka nodes (--broker kafka)")
    up_parser.set_defaults(handler=up)
    run = subparsers.add_parser("run", help="run one service")
    run.add_argument("service", choices=SERVICES)
    run.set_defaults(handler=run_service)
    subparsers.add_parser("init", help="create topics and apply migrations").set_defaults(handler=init)
