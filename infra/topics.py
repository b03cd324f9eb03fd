"""Create Token Hub's topics from their specs in `contracts.topics`, with the
partitions, replication and `min.insync.replicas` of this deployment's settings."""

from __future__ import annotations

from typing import Final

import structlog
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from tokenhub.contracts.topics import ALL_TOPICS, TopicSpec
from tokenhub.infra.settings import Settings, load_settings
from tokenhub.services.common.kafka import client_options

ADMIN_TIMEOUT_MS: Final = 15_000
log = structlog.get_logger()


def new_topic(spec: TopicSpec, settings: Settings) -> NewTopic:
    """The spec's retention and cleanup policy; partitions and replicas from the settings."""
    return NewTopic(
        spec.name,
        settings.partitions_of(spec.name, spec.partitions),
        settings.topic_replication_factor,
        topic_configs={
            "retention.ms": str(spec.retention_ms),
            "cleanup.policy": spec.cleanup_policy,
            "min.insync.replicas": str(settings.topic_min_insync_replicas),
        },
    )


def admin_client(bootstrap_servers: str, settings: Settings | None = None) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=ADMIN_TIMEOUT_MS,
                               **client_options(settings))


async def create_topics(bootstrap_servers: str, specs: tuple[TopicSpec, ...] = ALL_TOPICS,
                        settings: Settings | None = None) -> list[str]:
    """Create the topics that do not exist yet; return the names created."""
    settings = settings or load_settings()
    admin = admin_client(bootstrap_servers, settings)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [spec for spec in specs if spec.name not in existing]
        if missing:
            try:
                await admin.create_topics([new_topic(spec, settings) for spec in missing])
            except TopicAlreadyExistsError:
                pass  # another instance created them first
        created = [spec.name for spec in missing]
        if created:
            log.info("topics_created", topics=created, replication_factor=settings.topic_replication_factor,
                     min_insync_replicas=settings.topic_min_insync_replicas)
        return created
    finally:
        await admin.close()


async def topic_partitions(bootstrap_servers: str, topics: list[str], settings: Settings | None = None) -> dict[str, set[int]]:
    """The partitions of each of `topics` that exists, asked of the cluster. A consumer
    that assigns partitions itself cannot ask its own metadata: on Apache Kafka an
    unsubscribed consumer's metadata may hold no topic at all."""
    admin = admin_client(bootstrap_servers, settings)
    await admin.start()
    try:
        described = await admin.describe_topics(topics)
    finally:
        await admin.close()
    return {topic["topic"]: {partition["partition"] for partition in topic["partitions"]}
            for topic in described if topic["error_code"] == 0 and topic["partitions"]}


async def broker_cluster_id(bootstrap_servers: str, settings: Settings | None = None) -> str:
    """The broker's cluster id: stored offsets are only a hint for this cluster."""
    admin = admin_client(bootstrap_servers, settings)
    await admin.start()
    try:
        description = await admin.describe_cluster()
        return str(description["cluster_id"])
    finally:
        await admin.close()
