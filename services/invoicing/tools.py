"""Invoicing's operations for tools (the CLI, the HTTP API, tests): close a
period on demand and publish what it issued at once, as the service publishes
what it closes."""

from __future__ import annotations

from datetime import datetime

from tokenhub.contracts.events import InvoiceIssued
from tokenhub.infra.settings import Settings
from tokenhub.services.common.db import create_pool
from tokenhub.services.common.outbox import relay_now
from tokenhub.services.invoicing.handlers import SCHEMA, close_period


async def close(settings: Settings, period: str, *, actor: str, now: datetime, early: bool) -> tuple[list[InvoiceIssued], int]:
    """Issue the invoices of a period (`early`: before it has ended; raises
    `domain.PeriodNotEnded` otherwise) and publish them now: left in the outbox,
    they would wait for the service's next batch of postings. Returns what was
    issued and how many events were published."""
    bootstrap_servers, database_url = settings.require_stack()
    pool = await create_pool(database_url, size_max=2)
    try:
        issued = await close_period(pool, settings, period, actor=actor, now=now, early=early)
        published = await relay_now(pool, bootstrap_servers, SCHEMA, client_id="tokenhub-invoice-close", settings=settings)
    finally:
        await pool.close()
    return issued, published
