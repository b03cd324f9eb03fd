"""What invoicing produced, read back from its own tables for the republish
into a broker that lost its topics (`infra.boot`, docs/architecture.md,
durability): every invoice as issued, in the order issued (its content never
changes; a credited invoice's status lives beside it, not in it), each followed
by the period tier lines it posted to the ledger as Priced adjustments (rebuilt
from the invoice by the same pure function, so with the same ids and bytes),
then every monthly settlement. Invoices and settlements are stored as the
canonical bytes that were published (migration 0024), so those go out as stored."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Final

import asyncpg

from tokenhub.contracts.canonical import canonical_json
from tokenhub.contracts.events import InvoiceIssued, decode
from tokenhub.contracts.topics import INVOICES_ISSUED, SETTLEMENTS_NETTED, TOKENS_PRICED
from tokenhub.services.common.outbox import ProducedRecord
from tokenhub.services.invoicing.domain import tier_adjustments

ROWS_PREFETCH: Final = 1_000
"""Rows a cursor holds at a time: an invoice carries up to a few thousand lines."""

# Both read whole tables in the order produced; no index serves them (once per republish).
SELECT_INVOICES: Final = "select payer_bu, payload from invoicing.invoices order by issued_at, payer_bu, number"
SELECT_SETTLEMENTS: Final = "select period, payload from invoicing.settlements order by settled_at, period"


async def configuration_records(connection: asyncpg.Connection) -> AsyncIterator[ProducedRecord]:
    """Invoicing keeps no configuration that travels on a topic (billing cycles are set in its tables)."""
    return
    yield  # an async generator that yields nothing


async def produced_records(connection: asyncpg.Connection) -> AsyncIterator[ProducedRecord]:
    async with connection.transaction():
        async for row in connection.cursor(SELECT_INVOICES, prefetch=ROWS_PREFETCH):
            payer, payload = row["payer_bu"].encode(), bytes(row["payload"])
            yield INVOICES_ISSUED.name, payer, payload, ()
            invoice = decode(InvoiceIssued, payload)
            for adjustment in tier_adjustments(invoice, invoice.currency):
                yield TOKENS_PRICED.name, payer, canonical_json(adjustment), ()
        async for row in connection.cursor(SELECT_SETTLEMENTS, prefetch=ROWS_PREFETCH):
            yield SETTLEMENTS_NETTED.name, row["period"].encode(), bytes(row["payload"]), ()
