"""Every service serves `/metrics` (Prometheus) and `/healthz` on its own port,
derived from the stack's settings: `metrics_port_base` plus the service's place
in the topology, plus a block of ports per instance, so the four services and
their extra instances never ask for one port twice on one machine. A process
registers only the metrics of the service it runs, so each figure is served by
the service that owns it."""

from __future__ import annotations

import asyncio
from typing import Final

import uvicorn
from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

from tokenhub.contracts.topics import SERVICES
from tokenhub.infra.settings import Settings
from tokenhub.services.common.runtime import Runtime

PORTS_PER_INSTANCE: Final = 10
"""A block of ports per instance index: room for the four services and a few
more before instance 1's block starts."""
START_TIMEOUT_S: Final = 10.0


def metrics_port(settings: Settings, service: str) -> int | None:
    """Where `service` serves its metrics, or None when metrics are off. An
    explicit `metrics_port` is this one process's; `metrics_port_base` is the
    stack's, from which each service and instance derives its own."""
    if settings.metrics_port is not None:
        return settings.metrics_port
    if settings.metrics_port_base is None:
        return None
    if len(SERVICES) > PORTS_PER_INSTANCE:  # pragma: no cover - a topology that outgrew its block
        raise ValueError(f"{len(SERVICES)} services do not fit {PORTS_PER_INSTANCE} ports per instance")
    return settings.metrics_port_base + settings.instance_index * PORTS_PER_INSTANCE + SERVICES.index(service)


def metrics_app(runtime: Runtime, registry: CollectorRegistry = REGISTRY) -> FastAPI:
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    async def health() -> JSONResponse:
        # Started: its pool and producer are up and its consumers were handed work.
        healthy = runtime.pool is not None and runtime.producer is not None
        return JSONResponse({"service": runtime.service, "instance": runtime.settings.instance_index,
                             "status": "ok" if healthy else "starting"}, status_code=200 if healthy else 503)

    return app


class MetricsServer:
    """`/metrics` and `/healthz` for one service process, beside its consumers."""

    def __init__(self, runtime: Runtime, registry: CollectorRegistry = REGISTRY) -> None:
        self.port = metrics_port(runtime.settings, runtime.service)
        self.runtime = runtime
        self.registry = registry
        self.server: uvicorn.Server | None = None
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.port is None:
            return
        config = uvicorn.Config(metrics_app(self.runtime, self.registry), host=self.runtime.settings.metrics_host,
                                port=self.port, log_level="warning", lifespan="off", access_log=False)
        self.server = uvicorn.Server(config)
        self.task = asyncio.create_task(self.server.serve(), name=f"{self.runtime.service}-metrics")
        deadline = asyncio.get_running_loop().time() + START_TIMEOUT_S
        while not self.server.started and not self.task.done():
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"{self.runtime.service} could not serve metrics on port {self.port} "
                                   f"within {START_TIMEOUT_S:.0f} s")
            await asyncio.sleep(0.01)
        if self.task.done():
            self.task.result()  # raises why it could not serve (for example, the port is taken)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
        if self.task is not None:
            await self.task
