"""What invoicing produced, read back from its own tables for the republish
into a broker that lost its topics (`infra.boot`, docs/architecture.md,
durability).

First version, against today's tables: every invoice as issued (its content
never changes; a credited invoice's status lives beside it, not in it), each
followed by the period-tier lines it posted back to the ledger as Priced
adjustments (rebuilt from the invoice by the same pure function, so with the
same ids and bytes), then every monthly settlement."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Final

import asyncpg
import orjson

from tokenhub.contracts.canonical import canonical_json
from tokenhub.contracts.events import InvoiceIssued
from tokenhub.contracts.topics import INVOICES_ISSUED, SETTLEMENTS_NETTED, TOKENS_PRICED
from tokenhub.services.common.outbox import ProducedRecord
from tokenhub.services.invoicing.domain import tier_adjustments

ROWS_PREFETCH: Final = 1_000
"""Rows a cursor holds at a time: an invoice carries up to a few thousand lines."""

SELECT_INVOICES: Final = "select payer_bu, payload from invoicing.invoices order by issued_at, payer_bu, number"
SELECT_SETTLEMENTS: Final = "select period, payload from invoicing.settlements order by settled_at, period"


def _json(value: Any) -> Any:
    """A jsonb column as the service's pool decodes it, or as text from a plain connection."""
    return orjson.loads(value) if isinstance(value, str | bytes) else value


async def configuration_records(connection: asyncpg.Connection) -> AsyncIterator[ProducedRecord]:
    """Invoicing keeps no configuration that travels on a topic (billing cycles are set in its tables)."""
    return
    yield  # an async generator that yields nothing


async def produced_records(connection: asyncpg.Connection) -> AsyncIterator[ProducedRecord]:
    async with connection.transaction():
        async for row in connection.cursor(SELECT_INVOICES, prefetch=ROWS_PREFETCH):
            payer = row["payer_bu"].encode()
            content = _json(row["payload"])
            yield INVOICES_ISSUED.name, payer, canonical_json(content), ()
            invoice = InvoiceIssued.model_validate(content)
            for adjustment in tier_adjustments(invoice, invoice.currency):
                yield TOKENS_PRICED.name, payer, canonical_json(adjustment), ()
        async for row in connection.cursor(SELECT_SETTLEMENTS, prefetch=ROWS_PREFETCH):
            yield SETTLEMENTS_NETTED.name, row["period"].encode(), canonical_json(_json(row["payload"])), ()
