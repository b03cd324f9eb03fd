"""What the ledger produced, read back from its own tables for the republish
into a broker that lost its topics (`infra.boot`, docs/architecture.md,
durability).

First version, against today's tables: every LedgerPosted from the journal (an
entry keeps the bytes it was published as), chain by chain in sequence order,
so a consumer that recognises duplicates by each chain's sequence sees no gap;
every budget alert raised; and the budgets the ledger keeps, as the full
BudgetSet events they arrived as. A conflicting-duplicate alert is kept as a
record of what was refused (`ledger.alerts`), not as its event, and is not
republished."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Final

import asyncpg

from tokenhub.contracts.topics import BUDGET_ALERTS, BUDGETS_CONFIGURED, LEDGER_POSTED
from tokenhub.services.common.outbox import ProducedRecord

ROWS_PREFETCH: Final = 5_000
"""Rows a cursor holds at a time: bounds memory whatever the journal's size."""

SELECT_BUDGETS: Final = "select payer_bu, payload from ledger.budgets order by set_at, budget_id"
SELECT_POSTED: Final = "select chain, payload from ledger.entries order by chain, sequence"
SELECT_ALERTS: Final = "select payer_bu, payload from ledger.budget_alerts order by raised_at, alert_id"


async def configuration_records(connection: asyncpg.Connection) -> AsyncIterator[ProducedRecord]:
    """Every budget set, as published (its stored bytes are the event), in the order they were set."""
    async with connection.transaction():
        async for row in connection.cursor(SELECT_BUDGETS, prefetch=ROWS_PREFETCH):
            yield BUDGETS_CONFIGURED.name, row["payer_bu"].encode(), bytes(row["payload"]), ()


async def produced_records(connection: asyncpg.Connection) -> AsyncIterator[ProducedRecord]:
    """Every LedgerPosted, keyed by its chain (the payer), then every budget alert."""
    async with connection.transaction():
        async for row in connection.cursor(SELECT_POSTED, prefetch=ROWS_PREFETCH):
            yield LEDGER_POSTED.name, row["chain"].encode(), bytes(row["payload"]), ()
        async for row in connection.cursor(SELECT_ALERTS, prefetch=ROWS_PREFETCH):
            yield BUDGET_ALERTS.name, row["payer_bu"].encode(), bytes(row["payload"]), ()
