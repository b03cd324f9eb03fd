"""Create Token Hub's topics from their specs in `contracts.topics`."""

from __future__ import annotations

from typing import Final

import structlog
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from tokenhub.contracts.topics import ALL_TOPICS, TopicSpec

ADMIN_TIMEOUT_MS: Final = 15_000
log = structlog.get_logger()


async def create_topics(bootstrap_servers: str, specs: tuple[TopicSpec, ...] = ALL_TOPICS) -> list[str]:
    """Create the topics that do not exist yet; return the names created."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=ADMIN_TIMEOUT_MS)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [spec for spec in specs if spec.name not in existing]
        if missing:
            new_topics = [
                NewTopic(
                    spec.name,
                    spec.partitions,
                    spec.replication_factor,
                    topic_configs={"retention.ms": str(spec.retention_ms)},
                )
                for spec in missing
            ]
            try:
                await admin.create_topics(new_topics)
            except TopicAlreadyExistsError:
                pass  # another instance created them first
        created = [spec.name for spec in missing]
        if created:
            log.info("topics_created", topics=created)
        return created
    finally:
        await admin.close()


async def broker_cluster_id(bootstrap_servers: str) -> str:
    """The broker's cluster id: stored offsets are only a hint for this cluster."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=ADMIN_TIMEOUT_MS)
    await admin.start()
    try:
        description = await admin.describe_cluster()
        return str(description["cluster_id"])
    finally:
        await admin.close()
