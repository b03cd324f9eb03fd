"""The Apache Kafka tier: the pipeline on a real three-node KRaft cluster
(Apache Kafka from Maven Central, infra/kafka), replication factor 3 and
min.insync.replicas 2, every client on SASL/SCRAM-SHA-512 over TLS with a
certificate authority made here, and two instances of every service.

It runs wherever Java and Maven are on PATH (the project's machines and CI)
and is skipped elsewhere with the reason. `pytest -m 'not kafka'` leaves it out.
One cluster for the tier: started once, stopped after its last test."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import pytest_asyncio

from tokenhub.infra.embedded import free_port
from tokenhub.infra.kafka.cluster import KafkaCluster
from tokenhub.infra.kafka.fetch import missing_tools
from tokenhub.infra.kafka.stack import KafkaStack
from tokenhub.infra.pipeline import LocalPipeline
from tokenhub.infra.processes import SERVICES, ServiceProcesses
from tokenhub.infra.settings import Settings, settings_for

INSTANCES = 2
"""Of every service: they share each topic's partitions (FastStream's consumer
groups; the ledger by instance index)."""
USERS = ("tokenhub", "billing")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    missing = missing_tools()
    for item in items:
        if "tests/kafka/" in item.nodeid:
            item.add_marker(pytest.mark.kafka)
            if missing:
                item.add_marker(pytest.mark.skip(
                    reason=f"Apache Kafka tier: no {' or '.join(missing)} on PATH (Java 17 and Maven run the broker)"))


@dataclass
class KafkaPipeline:
    stack: KafkaStack
    pipeline: LocalPipeline
    settings: Settings
    start_s: float

    @property
    def cluster(self) -> KafkaCluster:
        return self.stack.cluster

    @property
    def services(self) -> ServiceProcesses:
        assert self.pipeline.services is not None
        return self.pipeline.services


@pytest_asyncio.fixture(scope="package", loop_scope="session")
async def kafka() -> AsyncIterator[KafkaPipeline]:
    stack = KafkaStack(brokers=3, secure=True, users=USERS, quick_start=True)
    pipeline = LocalPipeline(stack=stack, services=())
    # This process is a client too (emitting, reading the log back, verify and
    # replay): it takes the cluster's settings as a terminal takes `stack.env`.
    with pytest.MonkeyPatch.context() as patch:
        for name, value in stack.client_environment().items():
            patch.setenv(name, value)
        started = time.monotonic()
        try:
            await pipeline.start()
            start_s = time.monotonic() - started
            services = pipeline.services
            assert services is not None
            for service in SERVICES:
                for index in range(INSTANCES):
                    extra = {"TOKENHUB_INSTANCE_INDEX": str(index), "TOKENHUB_INSTANCE_COUNT": str(INSTANCES)}
                    if service == "metering" and index:
                        extra["TOKENHUB_HTTP_PORT"] = str(free_port())  # each instance serves HTTP ingest
                    services.start(service, extra_env=extra, name=f"{service}-{index}")
            yield KafkaPipeline(stack, pipeline, settings_for(pipeline.env), start_s)
        finally:
            pipeline.stop()
