"""Metering: usage.reported and registry.changed in, tokens.consumed and
usage.rejected out; HTTP ingest and metrics served beside the consumers."""

from __future__ import annotations

import asyncio

import uvicorn
from faststream import FastStream

from tokenhub.contracts.topics import REGISTRY_CHANGED, USAGE_REPORTED
from tokenhub.infra.settings import Settings
from tokenhub.services.common.app import create_app, create_broker, subscribe
from tokenhub.services.common.runtime import Runtime
from tokenhub.services.metering import queries
from tokenhub.services.metering.adapters.store import SCHEMA
from tokenhub.services.metering.handlers import Metering
from tokenhub.services.metering.http import create_http_app

GROUP_ID = queries.METERING_GROUP


class HttpServer:
    def __init__(self, metering: Metering) -> None:
        self.runtime = metering.runtime
        settings = metering.runtime.settings
        config = uvicorn.Config(create_http_app(metering), host=settings.http_host, port=settings.http_port,
                                log_level="warning", lifespan="off", access_log=False)
        self.server = uvicorn.Server(config)
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        # Supervised: a server that fails ends the process loudly instead of leaving it without HTTP.
        self.task = self.runtime.spawn("metering-http", self.server.serve)
        while not self.server.started and not self.task.done():
            await asyncio.sleep(0.01)
        if self.task.done():
            self.task.result()  # raises why it could not serve (for example, the port is taken)

    async def stop(self) -> None:
        self.server.should_exit = True
        if self.task is not None:
            await self.task


def build(settings: Settings) -> FastStream:
    runtime = Runtime(settings, service="metering", schema=SCHEMA)
    metering = Metering(runtime)
    broker = create_broker(runtime)
    subscribe(broker, runtime, REGISTRY_CHANGED.name, f"{GROUP_ID}.registry",
              lambda _, records: metering.handle_registry_records(records))
    subscribe(broker, runtime, USAGE_REPORTED.name, GROUP_ID, lambda _, records: metering.handle_usage_records(records))
    app = create_app(runtime, broker)
    http = HttpServer(metering)
    app.after_startup(http.start)
    app.on_shutdown(http.stop)
    return app
