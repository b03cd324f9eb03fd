"""The whole pipeline on the embedded stack, for the demo, tests and benchmarks:
broker, database, topics, migrations and the four services as processes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final

import asyncpg

from tokenhub.infra.boot import prepare
from tokenhub.infra.embedded import EmbeddedStack, StackEndpoints, free_port, free_ports
from tokenhub.infra.kafka.stack import stack_environment
from tokenhub.infra.processes import SERVICES, ServiceProcesses
from tokenhub.infra.settings import settings_for

COUNTER_SCHEMAS: Final = ("metering", "pricing", "ledger", "invoicing")
POLL_INTERVAL_S: Final = 0.2


class Timeout(RuntimeError):
    pass


def service_env(endpoints: StackEndpoints, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {
        "TOKENHUB_BOOTSTRAP_SERVERS": endpoints.bootstrap_servers,
        "TOKENHUB_DATABASE_URL": endpoints.database_url,
        **(extra or {}),
    }


def with_http_port(env: dict[str, str]) -> dict[str, str]:
    """A free port for metering's HTTP ingest and a free block for every
    service's metrics (`services.common.metrics`), unless they are set."""
    return {"TOKENHUB_HTTP_PORT": str(free_port()), "TOKENHUB_METRICS_PORT_BASE": str(free_port_block()), **env}


METRICS_PORTS_RESERVED: Final = 20
"""The block checked free for the metrics ports: two instances of each service."""


def free_port_block(size: int = METRICS_PORTS_RESERVED) -> int:
    """The first of `size` consecutive ports that are free now on loopback, below
    the ephemeral range (`infra.embedded.free_ports`)."""
    return free_ports(size)


class LocalPipeline:
    """Start with `start()`, stop with `stop()`; nothing is left running."""

    def __init__(self, state_dir: Path | None = None, env: dict[str, str] | None = None,
                 services: tuple[str, ...] = SERVICES, statement_stats: bool = False,
                 stack: EmbeddedStack | None = None) -> None:
        """`stack`: another broker in place of the embedded one (infra.kafka.stack)."""
        self.stack = stack or EmbeddedStack(state_dir=state_dir, statement_stats=statement_stats)
        self.state_dir = self.stack.state_dir
        self.extra_env = with_http_port(stack_environment(self.stack) | (env or {}))
        self.endpoints: StackEndpoints | None = None
        self.services: ServiceProcesses | None = None
        self.service_names = services

    async def start(self) -> StackEndpoints:
        self.endpoints = await asyncio.to_thread(self.stack.start)
        await prepare(self.endpoints.bootstrap_servers, self.endpoints.database_url, settings_for(self.env))
        self.services = ServiceProcesses(service_env(self.endpoints, self.extra_env), self.state_dir / "logs", self.service_names)
        self.services.start()
        return self.endpoints

    def stop(self) -> None:
        if self.services is not None:
            self.services.stop()
        self.stack.stop()

    @property
    def env(self) -> dict[str, str]:
        assert self.endpoints is not None
        return service_env(self.endpoints, self.extra_env)


async def counters(connection: asyncpg.Connection) -> dict[str, int]:
    """Every service's durable counters as `schema.name`."""
    query = " union all ".join(f"select '{schema}.' || name, value from {schema}.counters" for schema in COUNTER_SCHEMAS)
    return {row[0]: row[1] for row in await connection.fetch(query)}


async def wait_until(check: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> None:
    """Poll until `check` holds or the deadline passes: never a bare sleep."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise Timeout(f"timed out after {timeout_s:.0f} s waiting for {what}")
        await asyncio.sleep(POLL_INTERVAL_S)


def settled(values: dict[str, int], usage_sent: int) -> bool:
    """Every usage event metered, every consumption priced or parked, every
    Priced posted and every posting received by invoicing."""
    get = values.get
    metered = get("metering.accepted", 0) + get("metering.duplicates", 0) + get("metering.rejected", 0)
    return (
        metered >= usage_sent
        and get("pricing.received", 0) == get("metering.consumed", 0)
        and get("pricing.priced", 0) - get("pricing.unparked", 0) + get("pricing.parked", 0) >= get("pricing.received", 0)
        # Period tier lines come back to the ledger as adjustments from invoicing.
        and get("ledger.posted", 0) == get("pricing.priced", 0) + get("pricing.reversed", 0) * 2 + get("invoicing.adjustments", 0)
        and get("invoicing.postings", 0) == get("ledger.posted", 0)
    )
