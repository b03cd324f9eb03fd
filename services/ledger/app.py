"""Ledger: tokens.priced in, ledger.posted out (from the outbox)."""

from __future__ import annotations

from faststream import FastStream

from tokenhub.infra.settings import Settings
from tokenhub.services.common.app import create_app, create_broker
from tokenhub.services.common.runtime import Runtime
from tokenhub.services.ledger import handlers
from tokenhub.services.ledger.consumer import LedgerConsumer


def build(settings: Settings) -> FastStream:
    runtime = Runtime(settings, service="ledger", schema=handlers.SCHEMA)
    consumer = LedgerConsumer(runtime)
    app = create_app(runtime, create_broker(runtime))
    app.after_startup(consumer.start)
    app.on_shutdown(consumer.stop)
    return app
