"""The cluster as a deployment's: every topic replicated three times and
refusing acks=all writes with fewer than two in-sync replicas, partitions from
the settings, and only clients that prove who they are over TLS let in."""

from __future__ import annotations

import importlib.util
import ssl
import sys
from pathlib import Path

import pytest
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.conn import create_conn
from aiokafka.errors import KafkaConnectionError, SaslAuthenticationFailed

from tokenhub.client import KafkaSecurity
from tokenhub.contracts.topics import ALL_TOPICS
from tokenhub.infra.kafka.tls import Authority
from tokenhub.infra.topics import admin_client

pytestmark = pytest.mark.asyncio(loop_scope="session")
ROOT = Path(__file__).resolve().parents[2]


async def test_every_topic_has_three_replicas_all_in_sync_and_needs_two(kafka) -> None:  # noqa: ANN001
    admin = admin_client(kafka.settings.bootstrap_servers, kafka.settings)
    await admin.start()
    try:
        names = [spec.name for spec in ALL_TOPICS]
        described = {topic["topic"]: topic for topic in await admin.describe_topics(names)}
        responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name) for name in names])
    finally:
        await admin.close()
    assert kafka.settings.topic_replication_factor == 3 and kafka.settings.topic_min_insync_replicas == 2
    for spec in ALL_TOPICS:
        partitions = described[spec.name]["partitions"]
        assert len(partitions) == kafka.settings.partitions_of(spec.name, spec.partitions), spec.name
        for partition in partitions:
            assert sorted(partition["replicas"]) == [1, 2, 3], (spec.name, partition)
            assert sorted(partition["isr"]) == [1, 2, 3], (spec.name, partition)
    min_insync = {resource[3]: {entry[0]: entry[1] for entry in resource[4]}["min.insync.replicas"]
                  for response in responses for resource in response.resources}
    assert min_insync == {name: "2" for name in names}


async def test_a_client_with_the_right_password_over_tls_is_let_in(kafka) -> None:  # noqa: ANN001
    """A second user, as a downstream billing system would have: the example consumer connects and reads."""
    path = ROOT / "examples" / "billing_consumer.py"
    spec = importlib.util.spec_from_file_location("billing_consumer", path)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = example  # its dataclasses look their module up
    spec.loader.exec_module(example)
    received = await example.consume(kafka.settings.bootstrap_servers, idle_timeout_s=2.0, group_id="kafka-tier-billing",
                                     security=kafka.cluster.security("billing"))
    assert received.invalid == []


@pytest.mark.parametrize("user, password", [("tokenhub", "not-the-password"), ("billing", ""), ("nobody", "secret")])
async def test_wrong_credentials_are_refused(kafka, user: str, password: str) -> None:  # noqa: ANN001
    node = kafka.cluster.nodes[1]
    security = KafkaSecurity(protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512", username=user,
                             password=password or "x" * 32, cafile=kafka.cluster.ca_file)
    with pytest.raises(SaslAuthenticationFailed):
        connection = await create_conn("127.0.0.1", node.ports.broker_port, **security.aiokafka_options())
        connection.close()


async def test_a_client_without_tls_is_refused(kafka) -> None:  # noqa: ANN001
    node = kafka.cluster.nodes[2]
    with pytest.raises(KafkaConnectionError):
        connection = await create_conn("127.0.0.1", node.ports.broker_port, **KafkaSecurity().aiokafka_options())
        try:
            from aiokafka.protocol.metadata import MetadataRequest

            await connection.send(MetadataRequest[0]([]))
        finally:
            connection.close()


async def test_a_broker_certificate_from_another_authority_is_not_trusted(kafka, tmp_path: Path) -> None:  # noqa: ANN001
    stranger = Authority.create(tmp_path)
    node = kafka.cluster.nodes[3]
    security = KafkaSecurity(protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512", username="tokenhub",
                             password=kafka.cluster.layout.users["tokenhub"], cafile=stranger.ca_file)
    with pytest.raises(ssl.SSLCertVerificationError, match="CERTIFICATE_VERIFY_FAILED"):
        connection = await create_conn("127.0.0.1", node.ports.broker_port, **security.aiokafka_options())
        connection.close()
