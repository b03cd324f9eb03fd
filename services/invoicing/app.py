"""Invoicing: ledger.posted in, invoices.issued out."""

from __future__ import annotations

from faststream import FastStream

from tokenhub.contracts.topics import LEDGER_POSTED, PRICEBOOK_PUBLISHED
from tokenhub.infra.settings import Settings
from tokenhub.services.common.app import create_app, create_broker, subscribe
from tokenhub.services.common.runtime import Runtime
from tokenhub.services.invoicing import handlers

GROUP_ID = "invoicing"


def build(settings: Settings) -> FastStream:
    runtime = Runtime(settings, service="invoicing", schema=handlers.SCHEMA)
    broker = create_broker(runtime)
    subscribe(broker, runtime, PRICEBOOK_PUBLISHED.name, f"{GROUP_ID}.books", handlers.handle_pricebook_records)
    subscribe(broker, runtime, LEDGER_POSTED.name, GROUP_ID, handlers.handle_posted_records)
    return create_app(runtime, broker)
