"""docker-compose.yml is a real deployment even where no Docker engine runs:
parse it and check it against the settings model and the CLI."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from tokenhub.infra.processes import SERVICES
from tokenhub.infra.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
TOKENHUB_SERVICES = ("init", *SERVICES)


def _environment(service: str) -> dict[str, str]:
    return {name: str(value) for name, value in (COMPOSE["services"][service].get("environment") or {}).items()}


def test_the_deployment_has_kafka_postgres_init_and_the_four_services() -> None:
    assert set(COMPOSE["services"]) == {"kafka", "postgres", *TOKENHUB_SERVICES, "api"}


def test_kafka_runs_in_kraft_mode_without_zookeeper() -> None:
    environment = _environment("kafka")
    assert "controller" in environment["KAFKA_PROCESS_ROLES"]
    assert environment["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(environment["KAFKA_NODE_ID"] + "@")
    assert "zookeeper" not in (ROOT / "docker-compose.yml").read_text().lower()


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
    settings = Settings(**fields)
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
    assert init["depends_on"] == {"kafka": {"condition": "service_healthy"}, "postgres": {"condition": "service_healthy"}}
    dockerfile = ROOT / init["build"]["context"] / init["build"]["dockerfile"]
    assert 'ENTRYPOINT ["tokenhub"]' in dockerfile.read_text()


def test_services_reach_kafka_and_postgres_as_advertised() -> None:
    kafka = _environment("kafka")
    postgres = _environment("postgres")
    for service in TOKENHUB_SERVICES:
        environment = _environment(service)
        assert "PLAINTEXT://" + environment["TOKENHUB_BOOTSTRAP_SERVERS"] == kafka["KAFKA_ADVERTISED_LISTENERS"]
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
    settings = Settings(**fields)
    port = metrics_port(settings, service)
    assert settings.metrics_host == "0.0.0.0"
    assert f"{port}:{port}" in COMPOSE["services"][service]["ports"]
