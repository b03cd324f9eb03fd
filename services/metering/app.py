"""Metering: usage.reported and registry.changed in, tokens.consumed and usage.rejected out."""

from __future__ import annotations

from faststream import FastStream

from tokenhub.contracts.topics import REGISTRY_CHANGED, USAGE_REPORTED
from tokenhub.infra.settings import Settings
from tokenhub.services.common.app import create_app, create_broker, subscribe
from tokenhub.services.common.runtime import Runtime
from tokenhub.services.metering import handlers

GROUP_ID = "metering"


def build(settings: Settings) -> FastStream:
    runtime = Runtime(settings, service="metering", schema=handlers.SCHEMA)
    broker = create_broker(runtime)
    subscribe(broker, runtime, REGISTRY_CHANGED.name, f"{GROUP_ID}.registry", handlers.handle_registry_records)
    subscribe(broker, runtime, USAGE_REPORTED.name, GROUP_ID, handlers.handle_usage_records)
    return create_app(runtime, broker)
