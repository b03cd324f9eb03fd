"""What `tokenhub status` shows: the supervisor's view of every process (from
the state folder's status file) and each service's lag, measured from the
broker and the database.

A service's lag is the records on its input topics it has not handled yet
(the end of each partition minus its committed position: the consumer group's
offsets, or the ledger's own offsets table), and its outbox backlog the events
it has stored and not yet published. The embedded broker under-reports the end
of a partition (tansu 0.6 returns the last batch's first offset + 1), so the
last batch of each partition is read to find its true end."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition

from tokenhub.contracts.topics import SERVICES, stage
from tokenhub.infra.settings import Settings, StackNotFound
from tokenhub.infra.supervisor import lock_holder, read_status
from tokenhub.infra.topics import admin_client, broker_cluster_id
from tokenhub.services.common.kafka import client_options
from tokenhub.services.common.supervision import is_infrastructure

LEDGER_OFFSETS: Final = "select topic, kafka_partition, next_offset from ledger.offsets where cluster_id = $1"
OUTBOX_EVENTS: Final = "select coalesce(sum(cardinality(topics)), 0) from {schema}.outbox"
STATUS_TIMEOUT_MS: Final = 5_000
END_READS_MAX: Final = 5
END_READ_WAIT_MS: Final = 300
"""Fetches of the partitions' last batches: one usually reads them all."""


@dataclass
class ServiceLag:
    service: str
    records_behind: int | None = None
    by_topic: dict[str, int] = field(default_factory=dict)
    outbox_events: int | None = None


@dataclass
class StackStatus:
    state_dir: Path
    running: bool
    supervisor: dict[str, Any] | None
    processes: list[dict[str, Any]]
    faults: list[dict[str, Any]]
    endpoints: dict[str, Any]
    lags: list[ServiceLag]
    problems: list[str] = field(default_factory=list)
    """What could not be measured, and why (the broker or database unreachable)."""

    def as_json(self) -> dict[str, Any]:
        return {
            "state_dir": str(self.state_dir),
            "running": self.running,
            "supervisor": self.supervisor,
            "processes": self.processes,
            "services": [{"service": lag.service, "records_behind": lag.records_behind, "by_topic": lag.by_topic,
                          "outbox_events": lag.outbox_events} for lag in self.lags],
            "faults": self.faults,
            "endpoints": self.endpoints,
            "problems": self.problems,
        }


async def stack_status(state_dir: Path, settings: Settings) -> StackStatus:
    holder = lock_holder(state_dir)
    status = read_status(state_dir) or {}
    running = holder is not None
    result = StackStatus(state_dir, running, status.get("supervisor") if running else None,
                         status.get("processes", []) if running else [], status.get("faults", []),
                         status.get("endpoints", {}), [])
    if running:
        try:
            result.lags, result.problems = await service_lags(settings)
        except StackNotFound:
            result.problems.append("the stack is starting: its endpoints are not written yet")
    return result


async def service_lags(settings: Settings) -> tuple[list[ServiceLag], list[str]]:
    bootstrap_servers, database_url = settings.require_stack()
    lags = {service: ServiceLag(service) for service in SERVICES}
    problems: list[str] = []
    committed: dict[str, dict[TopicPartition, int]] = {service: {} for service in SERVICES}
    ends: dict[TopicPartition, int] = {}
    cluster_id = ""
    try:
        cluster_id = await broker_cluster_id(bootstrap_servers, settings)
        committed.update(await _group_offsets(bootstrap_servers, settings))
        ends = await _end_offsets(bootstrap_servers, settings)
    except Exception as error:
        if not is_infrastructure(error):
            raise
        problems.append(f"broker unreachable: {error!r}")
    try:
        connection = await asyncpg.connect(database_url, timeout=STATUS_TIMEOUT_MS / 1000)
    except Exception as error:
        if not is_infrastructure(error):
            raise
        problems.append(f"database unreachable: {error!r}")
        connection = None
    if connection is not None:
        try:
            for service in SERVICES:
                with contextlib.suppress(asyncpg.UndefinedTableError):
                    lags[service].outbox_events = await connection.fetchval(OUTBOX_EVENTS.format(schema=service))
            if cluster_id:
                with contextlib.suppress(asyncpg.UndefinedTableError):
                    committed["ledger"] = {TopicPartition(row["topic"], row["kafka_partition"]): row["next_offset"]
                                           for row in await connection.fetch(LEDGER_OFFSETS, cluster_id)}
        finally:
            await connection.close()
    if ends:
        for service in SERVICES:
            lag = lags[service]
            for spec in stage(service).consumes:
                partitions = [partition for partition in ends if partition.topic == spec.name]
                behind = sum(max(0, ends[partition] - committed[service].get(partition, 0)) for partition in partitions)
                lag.by_topic[spec.name] = behind
            lag.records_behind = sum(lag.by_topic.values())
    return [lags[service] for service in SERVICES], problems


async def _group_offsets(bootstrap_servers: str, settings: Settings) -> dict[str, dict[TopicPartition, int]]:
    """Committed offsets of each service's consumer groups (named after the
    service: `pricing`, `pricing.books`), by service, on the topics it consumes.
    Read with a consumer of each group that joins nothing (the embedded broker
    does not answer the admin client's offset fetch)."""
    admin = admin_client(bootstrap_servers, settings)
    await admin.start()
    try:
        groups = sorted(group[0] if isinstance(group, tuple) else group for group in await admin.list_consumer_groups())
    finally:
        await admin.close()
    found: dict[str, dict[TopicPartition, int]] = {}
    for group in groups:
        service = group.split(".")[0]
        if service not in SERVICES:
            continue
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, group_id=group, enable_auto_commit=False,
                                    request_timeout_ms=STATUS_TIMEOUT_MS, **client_options(settings))
        await consumer.start()
        try:
            await consumer.topics()
            for spec in stage(service).consumes:
                for partition in sorted(consumer.partitions_for_topic(spec.name) or ()):
                    position = TopicPartition(spec.name, partition)
                    offset = await consumer.committed(position)
                    if offset is not None and offset >= 0:
                        found.setdefault(service, {})[position] = offset
        finally:
            await consumer.stop()
    return found


async def _end_offsets(bootstrap_servers: str, settings: Settings) -> dict[TopicPartition, int]:
    """The next offset of every partition the services consume. The broker's
    answer is only trusted as a start: the embedded broker reports the first
    offset of the last record batch + 1, so the last batch is read (it is
    bounded by the fetch size) and its last offset taken."""
    topics = sorted({spec.name for service in SERVICES for spec in stage(service).consumes})
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, group_id=None, enable_auto_commit=False,
                                request_timeout_ms=STATUS_TIMEOUT_MS, **client_options(settings))
    await consumer.start()
    try:
        await consumer.topics()  # fetches the metadata partitions_for_topic reads
        partitions = [TopicPartition(topic, partition) for topic in topics
                      for partition in sorted(consumer.partitions_for_topic(topic) or ())]
        if not partitions:
            return {}
        ends = dict(await consumer.end_offsets(partitions))
        consumer.assign(partitions)
        for partition in partitions:
            consumer.seek(partition, max(ends[partition] - 1, 0))
        for _ in range(END_READS_MAX):
            batches = await consumer.getmany(timeout_ms=END_READ_WAIT_MS)
            if not any(batches.values()):
                break
            for partition, records in batches.items():
                if records:
                    ends[partition] = max(ends[partition], records[-1].offset + 1)
        return ends
    finally:
        await consumer.stop()
