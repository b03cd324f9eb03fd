"""Shared fixtures. Hypothesis tries 200 examples per property, with no
per-example deadline: two cores shared with a broker and a database make single
examples' timings noise. One pipeline per test session on a real broker and a real PostgreSQL: the
embedded stack always, and testcontainers Kafka and Postgres where a Docker
engine answers (one suite, two backends). Nothing is mocked."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tokenhub.infra.embedded import StackEndpoints
from tokenhub.infra.pipeline import LocalPipeline, with_http_port
from tokenhub.infra.processes import ServiceProcesses
from tokenhub.infra.settings import Settings


settings.register_profile("default", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("default")


def _docker_available() -> bool:
    try:
        import docker

        docker.from_env().ping()
        return True
    except Exception:  # noqa: BLE001 - any failure means no engine here
        return False


BACKENDS = ["embedded", pytest.param("docker", marks=pytest.mark.docker)]


class Backend:
    """Endpoints plus the four services running as processes against them."""

    def __init__(self, name: str, endpoints: StackEndpoints, services: ServiceProcesses, pipeline: LocalPipeline | None):
        self.name = name
        self.endpoints = endpoints
        self.services = services
        self.pipeline = pipeline
        self.settings = Settings(bootstrap_servers=endpoints.bootstrap_servers, database_url=endpoints.database_url)
        self.http_port = int(services.env["TOKENHUB_HTTP_PORT"])


@contextlib.contextmanager
def _docker_backend() -> Iterator[tuple[StackEndpoints, ServiceProcesses]]:
    from testcontainers.kafka import KafkaContainer
    from testcontainers.postgres import PostgresContainer

    with KafkaContainer().with_kraft() as kafka, PostgresContainer("postgres:16", driver=None) as postgres:
        url = postgres.get_connection_url()
        endpoints = StackEndpoints(kafka.get_bootstrap_server(), url, "docker")
        environment = with_http_port({"TOKENHUB_BOOTSTRAP_SERVERS": endpoints.bootstrap_servers, "TOKENHUB_DATABASE_URL": url})
        yield endpoints, ServiceProcesses(environment, Path(tempfile.mkdtemp()) / "logs")


@pytest.fixture(scope="session", params=BACKENDS)
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    if request.param == "embedded":
        pipeline = LocalPipeline()
        try:
            endpoints = await pipeline.start()
            assert pipeline.services is not None
            yield Backend("embedded", endpoints, pipeline.services, pipeline)
        finally:
            pipeline.stop()
        return
    if not _docker_available():
        pytest.skip("no Docker engine: the testcontainers backend runs where one is present")
    from tokenhub.infra.boot import prepare

    with _docker_backend() as (endpoints, services):
        await prepare(endpoints.bootstrap_servers, endpoints.database_url)
        services.start()
        try:
            yield Backend("docker", endpoints, services, None)
        finally:
            services.stop()
