"""Pricing: tokens.consumed and pricebook.published in, tokens.priced out."""

from __future__ import annotations

from faststream import FastStream

from tokenhub.contracts.topics import PRICEBOOK_PUBLISHED, TOKENS_CONSUMED
from tokenhub.infra.settings import Settings
from tokenhub.services.common.app import create_app, create_broker, subscribe
from tokenhub.services.common.runtime import Runtime
from tokenhub.services.pricing.adapters.store import SCHEMA
from tokenhub.services.pricing.handlers import Pricing

GROUP_ID = "pricing"


def build(settings: Settings) -> FastStream:
    runtime = Runtime(settings, service="pricing", schema=SCHEMA)
    pricing = Pricing(runtime)
    broker = create_broker(runtime)
    subscribe(broker, runtime, PRICEBOOK_PUBLISHED.name, f"{GROUP_ID}.books",
              lambda _, records: pricing.handle_pricebook_records(records))
    subscribe(broker, runtime, TOKENS_CONSUMED.name, GROUP_ID, lambda _, records: pricing.handle_consumed_records(records))
    return create_app(runtime, broker)
