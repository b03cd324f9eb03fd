"""What the ledger produced, read back from its own tables for the republish
into a broker that lost its topics (`infra.boot`, docs/architecture.md,
durability): every LedgerPosted, rebuilt from its journal row (the Priced it
posts, unpacked; its chain place, its posting time) byte for byte as it was published
and held to its stored hash, chain by chain in sequence order, so a consumer
that recognises duplicates by each chain's sequence sees no gap; then every
budget and conflicting-duplicate alert raised, in the order raised (a conflict
alert raised before migration 0020 kept only its detail and is not sent
again); then each payer's latest quota state (its topic is compacted: the
latest per payer is all it keeps); and the budgets the ledger keeps, as the BudgetSet events they
arrived as."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Final

import asyncpg
import orjson

from tokenhub.contracts.stored import unpack
from tokenhub.contracts.topics import BUDGET_ALERTS, BUDGETS_CONFIGURED, LEDGER_POSTED, QUOTA_STATE
from tokenhub.services.common.outbox import ProducedRecord
from tokenhub.services.ledger.domain import GENESIS_HASH, rebuild_entry

ROWS_PREFETCH: Final = 5_000
"""Rows a cursor holds at a time: bounds memory whatever the journal's size."""

SELECT_BUDGETS: Final = "select payer_bu, payload from ledger.budgets order by set_at, budget_id"
# Each chain in sequence order, through the journal's (chain, sequence) index.
SELECT_JOURNAL_IN_CHAIN_ORDER: Final = """
select chain, sequence, posted_at, entry_hash, priced, overage from ledger.journal order by chain, sequence
"""
SELECT_ALERTS_RAISED: Final = """
select payload, raised_at, alert_id from ledger.budget_alerts
union all
select payload, raised_at, alert_id from ledger.alerts where payload is not null
order by raised_at, alert_id
"""
SELECT_QUOTA_STATES: Final = "select payer_bu, payload from ledger.quota_published order by payer_bu"


class JournalDamaged(RuntimeError):
    """A journal row does not rebuild into the entry its hash was taken of."""


async def configuration_records(connection: asyncpg.Connection) -> AsyncIterator[ProducedRecord]:
    """Every budget set, as published (its stored bytes are the event), in the order they were set."""
    async with connection.transaction():
        async for row in connection.cursor(SELECT_BUDGETS, prefetch=ROWS_PREFETCH):
            yield BUDGETS_CONFIGURED.name, row["payer_bu"].encode(), bytes(row["payload"]), ()


async def produced_records(connection: asyncpg.Connection) -> AsyncIterator[ProducedRecord]:
    """Every LedgerPosted, keyed by its chain (the payer), then every alert,
    keyed by its payer, then each payer's latest quota state. The entries are rebuilt by the function that posted
    them; one that does not hash to what is stored stops the republish
    (`JournalDamaged`): sending it would publish what was never posted."""
    async with contextlib.AsyncExitStack() as stack:
        if not connection.is_in_transaction():
            await stack.enter_async_context(connection.transaction(isolation="repeatable_read", readonly=True))
        chain, head = "", GENESIS_HASH
        async for row in connection.cursor(SELECT_JOURNAL_IN_CHAIN_ORDER, prefetch=ROWS_PREFETCH):
            if row["chain"] != chain:
                chain, head = row["chain"], GENESIS_HASH
            posted, payload = rebuild_entry(unpack(row["priced"]), chain, row["sequence"], head, row["posted_at"], row["overage"])
            if bytes.fromhex(posted.entry_hash) != row["entry_hash"]:
                raise JournalDamaged(f"chain {chain} sequence {row['sequence']} does not rebuild into the entry "
                                     "its hash was taken of: run tokenhub verify")
            head = posted.entry_hash
            yield LEDGER_POSTED.name, chain.encode(), payload, ()
        async for row in connection.cursor(SELECT_ALERTS_RAISED, prefetch=ROWS_PREFETCH):
            payload = bytes(row["payload"])
            yield BUDGET_ALERTS.name, orjson.loads(payload)["payer_bu"].encode(), payload, ()
        async for row in connection.cursor(SELECT_QUOTA_STATES, prefetch=ROWS_PREFETCH):
            yield QUOTA_STATE.name, row["payer_bu"].encode(), bytes(row["payload"]), ()
