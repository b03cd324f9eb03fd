"""docker-compose.yml is a real deployment even where no Docker engine runs:
parse it and check it against the settings model and the CLI."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from tokenhub.infra.kafka.cluster import DEPLOYMENT_PROPERTIES, KafkaCluster
from tokenhub.infra.kafka.fetch import kafka_version
from tokenhub.infra.processes import SERVICES
from tokenhub.infra.settings import ENV_PREFIX, Settings, settings_for

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
TOKENHUB_SERVICES = ("init", *SERVICES)
KAFKA_NODES = ("kafka-1", "kafka-2", "kafka-3")
NODE_SCRIPT = ROOT / "infra" / "kafka" / "compose-node.sh"
JOBS = ("certificates", "init")
"""Containers that run once and exit; what depends on them waits for their success."""


def _environment(service: str) -> dict[str, str]:
    return {name: str(value) for name, value in (COMPOSE["services"][service].get("environment") or {}).items()}


def _settings(service: str) -> Settings:
    return settings_for({name: value for name, value in _environment(service).items() if name.startswith(ENV_PREFIX)})


def _node_properties(node: str) -> dict[str, str]:
    """The server.properties that compose-node.sh writes for `node`, its variables filled in."""
    environment = _environment(node) | {"host": node, "keystore_password": "from-the-certificates-job"}
    script = NODE_SCRIPT.read_text()
    body = script.split('cat > "${config}" <<PROPERTIES\n', 1)[1].split("\nPROPERTIES\n", 1)[0]
    unset = set(re.findall(r"\$\{(\w+)\}", body)) - set(environment)
    assert not unset, f"compose does not set {unset}, which the node's configuration uses"
    body = re.sub(r"\$\{(\w+)\}", lambda match: environment[match.group(1)], body)
    return dict(line.split("=", 1) for line in body.splitlines())


def test_the_deployment_has_three_kafka_nodes_postgres_init_and_the_services() -> None:
    assert set(COMPOSE["services"]) == {"certificates", *KAFKA_NODES, "postgres", *TOKENHUB_SERVICES, "api"}


def test_kafka_runs_in_kraft_mode_three_nodes_in_one_quorum_without_zookeeper() -> None:
    voters = {_node_properties(node)["controller.quorum.voters"] for node in KAFKA_NODES}
    assert voters == {"1@kafka-1:9093,2@kafka-2:9093,3@kafka-3:9093"}
    for node in KAFKA_NODES:
        properties = _node_properties(node)
        assert properties["process.roles"] == "broker,controller"
        assert f"kafka-{properties['node.id']}" == node
    assert "zookeeper" not in (ROOT / "docker-compose.yml").read_text().lower()


def test_the_nodes_run_the_kafka_version_the_project_fetches() -> None:
    for node in KAFKA_NODES:
        assert COMPOSE["services"][node]["image"] == f"apache/kafka:{kafka_version()}"


@pytest.mark.parametrize("node", KAFKA_NODES)
def test_a_node_is_configured_as_the_local_three_node_cluster_is(node: str, tmp_path: Path) -> None:
    """Replication, durability and the listeners' security: the same here as in the
    cluster the Apache Kafka test tier proves (tests/kafka)."""
    local = KafkaCluster(tmp_path, nodes=3, secure=True).properties(1)
    compose = _node_properties(node)
    assert {name: compose.get(name) for name in DEPLOYMENT_PROPERTIES} == {
        name: str(local[name]) for name in DEPLOYMENT_PROPERTIES}


@pytest.mark.parametrize("node", KAFKA_NODES)
def test_a_node_formats_its_storage_with_the_users_the_services_connect_as(node: str) -> None:
    script = NODE_SCRIPT.read_text()
    assert '--add-scram "SCRAM-SHA-512=[name=${CLIENT_USER},password=${CLIENT_PASSWORD}]"' in script
    node_environment = _environment(node)
    for service in (*TOKENHUB_SERVICES, "api"):
        settings = _settings(service)
        assert settings.kafka_sasl_username == node_environment["CLIENT_USER"]
        assert settings.kafka_sasl_password is not None
        assert settings.kafka_sasl_password.get_secret_value() == node_environment["CLIENT_PASSWORD"]


def test_passwords_come_from_the_environment_not_the_file() -> None:
    for service in (*TOKENHUB_SERVICES, "api"):
        assert _environment(service)["TOKENHUB_KAFKA_SASL_PASSWORD"].startswith("${TOKENHUB_KAFKA_PASSWORD:?")
    for node in KAFKA_NODES:
        assert _environment(node)["BROKER_PASSWORD"].startswith("${KAFKA_BROKER_PASSWORD:?")
    example = (ROOT / ".env.example").read_text()
    for name in ("KAFKA_CLUSTER_ID", "KAFKA_BROKER_PASSWORD", "TOKENHUB_KAFKA_PASSWORD"):
        assert f"\n{name}=\n" in example, f".env.example names {name} without a value"
    assert ".env" in (ROOT / ".gitignore").read_text().split()


@pytest.mark.parametrize("service", (*TOKENHUB_SERVICES, "api"))
def test_every_client_is_secured_and_replicated_as_the_brokers_require(service: str) -> None:
    settings = _settings(service)
    node = _node_properties("kafka-1")
    assert settings.kafka_security_protocol == node["listener.security.protocol.map"].split(",")[0].split(":")[1]
    assert settings.kafka_sasl_mechanism == node["sasl.enabled.mechanisms"]
    assert settings.topic_replication_factor == int(node["default.replication.factor"]) == 3
    assert settings.topic_min_insync_replicas == int(node["min.insync.replicas"]) == 2
    assert settings.producer_idempotence and settings.producer_acks == "all"
    # The certificate authority the brokers' keystores were made with, on the certs volume.
    assert settings.kafka_ssl_cafile == Path("/certs/ca.pem")
    volumes = COMPOSE["services"][service].get("volumes") or COMPOSE["x-tokenhub-service"]["volumes"]
    assert "certs:/certs:ro" in volumes


def test_every_container_that_keeps_running_has_a_health_check() -> None:
    for name, service in COMPOSE["services"].items():
        if name in JOBS:
            continue
        assert "healthcheck" in service, f"{name} has no health check"
        assert service["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL")


def test_the_certificates_job_names_every_broker_and_runs_before_them() -> None:
    certificates = COMPOSE["services"]["certificates"]
    command = " ".join(certificates["command"])
    assert "python -m tokenhub.infra.kafka.tls /certs " + " ".join(KAFKA_NODES) in command
    for node in KAFKA_NODES:
        assert COMPOSE["services"][node]["depends_on"] == {"certificates": {"condition": "service_completed_successfully"}}
        assert f"/certs/{node}.p12" in _node_properties(node)["ssl.keystore.location"]


@pytest.mark.parametrize("service", TOKENHUB_SERVICES)
def test_every_variable_is_a_setting_and_its_value_is_valid(service: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    environment = _environment(service)
    fields = {name[len(ENV_PREFIX):].lower(): value for name, value in environment.items() if name.startswith(ENV_PREFIX)}
    unknown = set(fields) - set(Settings.model_fields)
    assert not unknown, f"{service} sets variables the settings do not know: {unknown}"
    settings = settings_for({name: value for name, value in environment.items() if name.startswith(ENV_PREFIX)})
    assert settings.require_stack()


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_runs_itself_after_init(service: str) -> None:
    definition = COMPOSE["services"][service]
    assert definition["command"] == ["run", service]
    assert definition["depends_on"] == {"init": {"condition": "service_completed_successfully"}}
    assert definition["image"] == COMPOSE["services"]["init"]["image"]


def test_init_creates_topics_and_migrates_once_the_infrastructure_is_healthy() -> None:
    init = COMPOSE["services"]["init"]
    assert init["command"] == ["init"]
    assert init["depends_on"] == {name: {"condition": "service_healthy"} for name in (*KAFKA_NODES, "postgres")}
    dockerfile = ROOT / init["build"]["context"] / init["build"]["dockerfile"]
    assert 'ENTRYPOINT ["tokenhub"]' in dockerfile.read_text()


def test_services_reach_kafka_and_postgres_as_advertised() -> None:
    advertised = [_node_properties(node)["advertised.listeners"].removeprefix("BROKER://") for node in KAFKA_NODES]
    postgres = _environment("postgres")
    for service in TOKENHUB_SERVICES:
        environment = _environment(service)
        assert environment["TOKENHUB_BOOTSTRAP_SERVERS"].split(",") == advertised
        url = urlsplit(environment["TOKENHUB_DATABASE_URL"])
        assert (url.hostname, url.port) == ("postgres", 5432)
        assert (url.username, url.password, url.path.lstrip("/")) == (
            postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"], postgres["POSTGRES_DB"])


def test_metering_listens_for_http_ingest_on_its_published_port() -> None:
    metering = COMPOSE["services"]["metering"]
    environment = _environment("metering")
    assert environment["TOKENHUB_HTTP_HOST"] == "0.0.0.0"
    assert f"{environment['TOKENHUB_HTTP_PORT']}:{environment['TOKENHUB_HTTP_PORT']}" in metering["ports"]


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_publishes_its_metrics_port(service: str) -> None:
    from tokenhub.services.common.metrics import metrics_port

    fields = {name[len(ENV_PREFIX):].lower(): value for name, value in _environment(service).items()
              if name.startswith(ENV_PREFIX)}
    settings = settings_for({ENV_PREFIX + name.upper(): value for name, value in fields.items()})
    port = metrics_port(settings, service)
    assert settings.metrics_host == "0.0.0.0"
    assert f"{port}:{port}" in COMPOSE["services"][service]["ports"]
