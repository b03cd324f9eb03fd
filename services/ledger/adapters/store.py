"""The ledger's tables: asyncpg here and only here."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from decimal import Decimal
from typing import Final

import asyncpg

from tokenhub.contracts.budgets import WHOLE_PAYER, BudgetAlert, BudgetSet, ConflictingDuplicate, QuotaStateChanged
from tokenhub.contracts.canonical import canonical_json
from tokenhub.contracts.events import decode
from tokenhub.contracts.periods import parse
from tokenhub.contracts.stored import pack, unpack
from tokenhub.contracts.topics import TOKENS_PRICED
from tokenhub.services.common.outbox import OutboxRow, bump_counters, stage
from tokenhub.services.ledger import budgets
from tokenhub.services.ledger.domain import ChainHead, PostedEntry

SCHEMA: Final = "ledger"

SELECT_POSTED_PRICED: Final = """
select priced_id, priced from ledger.journal where priced_id = any($1::uuid[])
"""
LOCK_CHAINS: Final = """
select chain, sequence, head_hash from ledger.chains where chain = any($1::text[]) order by chain for update
"""
UPSERT_CHAINS: Final = """
insert into ledger.chains (chain, sequence, head_hash)
select * from unnest($1::text[], $2::bigint[], $3::text[])
on conflict (chain) do update set sequence = excluded.sequence, head_hash = excluded.head_hash
"""
# One row per entry, written with COPY: the ids are new (read under the chain
# locks first), and COPY costs PostgreSQL about a third less than
# `insert ... select * from unnest(...)` for a batch of a thousand rows. The
# Priced is stored packed (contracts.stored); its app has a column of its own
# for the one query that asks for it (SELECT_FUNDED, migration 0037).
JOURNAL_COLUMNS: Final = ("priced_id", "sequence", "event_time", "posted_at", "tokens", "chain", "money_debit",
                          "money_credit", "amount", "tokens_debit", "tokens_credit", "entry_hash", "priced", "overage",
                          "app")
UPSERT_BALANCES: Final = """
insert into ledger.balances (ledger, account, debit_total, credit_total)
select * from unnest($1::text[], $2::text[], $3::numeric[], $4::numeric[])
on conflict (ledger, account) do update set
    debit_total = balances.debit_total + excluded.debit_total,
    credit_total = balances.credit_total + excluded.credit_total
"""
INSERT_ALERT: Final = """
insert into ledger.alerts (alert_id, kind, detail, payload) values ($1, $2, $3, $4) on conflict (alert_id) do nothing
returning alert_id
"""
SELECT_OFFSETS: Final = """
select kafka_partition, next_offset from ledger.offsets where cluster_id = $1 and topic = $2
"""
UPSERT_OFFSETS: Final = """
insert into ledger.offsets (cluster_id, topic, kafka_partition, next_offset)
select $1, $2, * from unnest($3::int[], $4::bigint[])
on conflict (cluster_id, topic, kafka_partition) do update set next_offset = greatest(offsets.next_offset, excluded.next_offset)
"""


# --- budgets -----------------------------------------------------------------------

# One transaction at a time decides a payer's budget alerts: posting and budget
# changes take these locks in payer order, so two instances never both raise one.
LOCK_PAYERS: Final = """
select pg_advisory_xact_lock(hashtextextended('ledger.budget' || chr(31) || payer, 0))
from (select distinct unnest($1::text[]) as payer order by 1) as payers
"""
INSERT_BUDGET: Final = """
insert into ledger.budgets (budget_id, payer_bu, scope, period_from, amount, thresholds_percent, hard_limit, currency,
    actor, reason, set_at, payload)
values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
on conflict (budget_id) do nothing
"""
SELECT_BUDGETS_OF: Final = "select payload from ledger.budgets where payer_bu = any($1::text[])"
SELECT_ALL_BUDGETS: Final = "select payload from ledger.budgets order by set_at, budget_id"
UPSERT_PERIOD_SPEND: Final = """
insert into ledger.period_spend (payer_bu, period, consumer_bu, amount)
select * from unnest($1::text[], $2::text[], $3::text[], $4::numeric[])
on conflict (payer_bu, period, consumer_bu) do update set amount = period_spend.amount + excluded.amount
"""
SELECT_PERIOD_SPEND: Final = """
select payer_bu, period, consumer_bu, amount from ledger.period_spend
where payer_bu = any($1::text[]) and period = any($2::text[])
"""
SELECT_LATEST_SPEND_MONTHS: Final = """
select payer_bu, max(period) as period from ledger.period_spend where payer_bu = any($1::text[]) group by payer_bu
"""
SELECT_QUOTA_STATES: Final = """
select payer_bu, scope, period, exhausted, transitions, closed from ledger.quota_states
where payer_bu = any($1::text[]) and period = any($2::text[])
"""
SELECT_OPEN_STATES_BEFORE: Final = """
select payer_bu, scope, period, exhausted, transitions, closed from ledger.quota_states
where payer_bu = any($1::text[]) and period < $2 and not closed
"""
SELECT_EXHAUSTED_PAYERS_BEFORE: Final = """
select distinct payer_bu from ledger.quota_states where exhausted and not closed and period < $1
"""
UPSERT_QUOTA_STATES: Final = """
insert into ledger.quota_states (payer_bu, scope, period, exhausted, transitions, closed)
select * from unnest($1::text[], $2::text[], $3::text[], $4::boolean[], $5::int[], $6::boolean[])
on conflict (payer_bu, scope, period) do update set
    exhausted = excluded.exhausted, transitions = excluded.transitions, closed = excluded.closed
"""
INSERT_BUDGET_ALERTS: Final = """
insert into ledger.budget_alerts (alert_id, kind, payer_bu, scope, period, threshold_percent, budget_id, payload)
select * from unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::numeric[], $7::uuid[], $8::bytea[])
on conflict do nothing
returning alert_id
"""
SELECT_QUOTA_PUBLISHED: Final = "select payer_bu, payload from ledger.quota_published where payer_bu = any($1::text[])"
UPSERT_QUOTA_PUBLISHED: Final = """
insert into ledger.quota_published (payer_bu, sequence, period, state, published_at, payload)
select * from unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::timestamptz[], $6::bytea[])
on conflict (payer_bu) do update set sequence = excluded.sequence, period = excluded.period, state = excluded.state,
    published_at = excluded.published_at, payload = excluded.payload
"""
SELECT_BUDGET_IDS: Final = "select budget_id from ledger.budgets where budget_id = any($1::uuid[])"
SELECT_PAYERS_MONTHS_FROM: Final = """
select payer_bu, period from ledger.period_spend where payer_bu = any($1::text[]) and period >= $2
union select payer_bu, period from ledger.quota_states where payer_bu = any($1::text[]) and period >= $2
"""
# Read when a quota runs out, for the consumers and apps it stops: the payer's
# entries of one month, found by the block-range index on event time. The app
# is the row's column; rows written before it (migration 0037) have none and
# hold their Priced as raw JSON (first byte `{`), which the database can read.
SELECT_FUNDED: Final = """
select array_agg(distinct consumer_bu order by consumer_bu) as consumers,
       array_remove(array_agg(distinct app order by app), null) as apps
from (select split_part(case when tokens_debit like '%:consumed' then tokens_debit else tokens_credit end, ':', 2)
             as consumer_bu,
             coalesce(app, case when get_byte(priced, 0) = 123 then convert_from(priced, 'UTF8')::jsonb ->> 'app' end)
             as app
      from ledger.journal
      where chain = $1 and event_time >= $2 and event_time < $3) as entries
where $4::text = '*' or consumer_bu = $4
"""


# --- the unit of work: typed loads and writes inside one transaction ------------------

class LedgerUnit:
    """The ledger's tables inside one transaction, as domain types. Handlers
    load through it, decide in the core and write through it; asyncpg stays here."""

    def __init__(self, connection: asyncpg.Connection) -> None:
        self._connection = connection

    # posting

    async def lock_chain_heads(self, chains: Iterable[str]) -> dict[str, ChainHead]:
        """The heads of these chains, locked until the transaction ends: one
        posting transaction at a time extends a chain."""
        rows = await self._connection.fetch(LOCK_CHAINS, sorted(set(chains)))
        return {row["chain"]: ChainHead(row["chain"], row["sequence"], row["head_hash"]) for row in rows}

    async def posted_priced(self, priced_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, bytes]:
        """The Priced bytes posted already, of these ids (canonical, as they were received)."""
        rows = await self._connection.fetch(SELECT_POSTED_PRICED, list(set(priced_ids)))
        return {row["priced_id"]: unpack(row["priced"]) for row in rows}

    async def write_entries(self, entries: Sequence[PostedEntry]) -> None:
        """One journal row per entry; the caller read that their ids are new under its chain locks."""
        if not entries:
            return
        await self._connection.copy_records_to_table("journal", schema_name=SCHEMA, columns=JOURNAL_COLUMNS, records=[
            (posted.priced_id, posted.sequence, posted.event_time, posted.posted_at, entry.transfer.tokens, posted.chain,
             entry.transfer.money_debit, entry.transfer.money_credit, entry.transfer.amount, entry.transfer.tokens_debit,
             entry.transfer.tokens_credit, bytes.fromhex(posted.entry_hash), pack(TOKENS_PRICED.name, entry.priced),
             posted.overage is True, posted.app)
            for entry in entries for posted in (entry.posted,)
        ])

    async def add_to_balances(self, deltas: dict[tuple[str, str], tuple[Decimal, Decimal]]) -> None:
        if not deltas:
            return
        keys = sorted(deltas)  # a fixed order: concurrent batches lock rows the same way round
        await self._connection.execute(UPSERT_BALANCES, [ledger for ledger, _ in keys], [account for _, account in keys],
                                       [deltas[key][0] for key in keys], [deltas[key][1] for key in keys])

    async def save_chain_heads(self, heads: Iterable[ChainHead]) -> None:
        heads = list(heads)
        if heads:
            await self._connection.execute(UPSERT_CHAINS, [head.chain for head in heads],
                                           [head.sequence for head in heads], [head.head_hash for head in heads])

    async def raise_conflicts(self, conflicts: Sequence[ConflictingDuplicate]) -> set[uuid.UUID]:
        """Store each conflict alert under its unique id; the ids stored now.
        One statement each: conflicts are rare, and each is a forged or broken event."""
        raised: set[uuid.UUID] = set()
        for alert in conflicts:
            stored = await self._connection.fetchval(INSERT_ALERT, alert.id, "conflicting_duplicate", {
                "priced_id": str(alert.priced_id), "stored_sha256": alert.stored_sha256,
                "received_sha256": alert.received_sha256}, canonical_json(alert))
            if stored is not None:
                raised.add(stored)
        return raised

    # budgets

    async def lock_payers(self, payers: Iterable[str]) -> None:
        """One transaction at a time decides a payer's budget alerts."""
        await self._connection.execute(LOCK_PAYERS, sorted(set(payers)))

    async def add_period_spend(self, spend: dict[tuple[str, str, str], Decimal]) -> None:
        """(payer, month, consumer) -> amount added to the month-to-date spend."""
        if not spend:
            return
        keys = sorted(spend)
        await self._connection.execute(UPSERT_PERIOD_SPEND, [key[0] for key in keys], [key[1] for key in keys],
                                       [key[2] for key in keys], [spend[key] for key in keys])

    async def budgets_of(self, payers: Iterable[str]) -> tuple[BudgetSet, ...]:
        rows = await self._connection.fetch(SELECT_BUDGETS_OF, sorted(set(payers)))
        return tuple(decode(BudgetSet, row["payload"]) for row in rows)

    async def period_spend(self, pairs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], dict[str, Decimal]]:
        """(payer, month) -> consumer -> month-to-date spend, for these pairs."""
        pairs = set(pairs)
        if not pairs:
            return {}
        spend: dict[tuple[str, str], dict[str, Decimal]] = {}
        rows = await self._connection.fetch(SELECT_PERIOD_SPEND, sorted({payer for payer, _ in pairs}),
                                            sorted({month for _, month in pairs}))
        for row in rows:
            if (row["payer_bu"], row["period"]) in pairs:
                spend.setdefault((row["payer_bu"], row["period"]), {})[row["consumer_bu"]] = row["amount"]
        return spend

    async def quota_published(self, payers: Iterable[str]) -> dict[str, QuotaStateChanged]:
        """The last quota.state record published of each of these payers."""
        rows = await self._connection.fetch(SELECT_QUOTA_PUBLISHED, sorted(set(payers)))
        return {row["payer_bu"]: decode(QuotaStateChanged, row["payload"]) for row in rows}

    async def save_quota_published(self, records: Sequence[tuple[QuotaStateChanged, bytes]]) -> None:
        if records:
            await self._connection.execute(
                UPSERT_QUOTA_PUBLISHED, [record.payer_bu for record, _ in records],
                [record.sequence for record, _ in records], [record.period for record, _ in records],
                [record.state for record, _ in records], [record.as_of for record, _ in records],
                [payload for _, payload in records])

    async def known_budget_ids(self, budget_ids: Iterable[uuid.UUID]) -> set[uuid.UUID]:
        return {row["budget_id"] for row in await self._connection.fetch(SELECT_BUDGET_IDS, list(set(budget_ids)))}

    async def months_with_spend_or_quota(self, payers: Iterable[str], month_from: str) -> set[tuple[str, str]]:
        """(payer, month) from `month_from` on where the payer spent or has a quota state."""
        rows = await self._connection.fetch(SELECT_PAYERS_MONTHS_FROM, sorted(set(payers)), month_from)
        return {(row["payer_bu"], row["period"]) for row in rows}

    async def payers_exhausted_before(self, month: str) -> list[str]:
        return sorted(row["payer_bu"] for row in await self._connection.fetch(SELECT_EXHAUSTED_PAYERS_BEFORE, month))

    async def budget_view(self, known: tuple[BudgetSet, ...], payers: list[str], pairs: set[tuple[str, str]],
                          clock_month: str, zone: str) -> budgets.BudgetView:
        """What `budgets.decide` reads for these payers and (payer, month) pairs.
        The caller holds the payers' locks."""
        connection = self._connection
        latest = {row["payer_bu"]: row["period"] for row in await connection.fetch(SELECT_LATEST_SPEND_MONTHS, payers)}
        current = budgets.current_months(payers, latest, clock_month)
        open_states = {
            (row["payer_bu"], row["scope"], row["period"]): budgets.QuotaState(row["exhausted"], row["transitions"], row["closed"])
            for row in await connection.fetch(SELECT_OPEN_STATES_BEFORE, payers, max(current.values()))
            if row["period"] < current[row["payer_bu"]]
        }
        months = budgets.months_to_read(pairs, open_states, current)
        spend: dict[tuple[str, str], dict[str, Decimal]] = {}
        for row in await connection.fetch(SELECT_PERIOD_SPEND, payers, months):
            spend.setdefault((row["payer_bu"], row["period"]), {})[row["consumer_bu"]] = row["amount"]
        states = {(row["payer_bu"], row["scope"], row["period"]): budgets.QuotaState(row["exhausted"], row["transitions"], row["closed"])
                  for row in await connection.fetch(SELECT_QUOTA_STATES, payers, months)}
        funded: dict[budgets.QuotaKey, budgets.Funded] = {}
        for key in budgets.funding_wanted(known, pairs, current, spend, states):
            payer, scope, month = key
            period = parse(month, zone)
            row = await connection.fetchrow(SELECT_FUNDED, payer, period.start, period.end, scope)
            funded[key] = (tuple(row["consumers"] or ()), tuple(row["apps"] or ()))
        return budgets.BudgetView(known, current, open_states, spend, states, funded)

    async def save_budgets(self, stored: Sequence[BudgetSet]) -> None:
        if stored:
            await self._connection.executemany(INSERT_BUDGET, [
                (budget.id, budget.payer_bu, budget.scope, budget.period_from, budget.amount,
                 list(budget.thresholds_percent), budget.hard_limit, budget.currency, budget.actor, budget.reason,
                 budget.set_at, canonical_json(budget)) for budget in stored])

    async def save_quota_states(self, states: dict[budgets.QuotaKey, budgets.QuotaState]) -> None:
        if not states:
            return
        keys = sorted(states)
        await self._connection.execute(UPSERT_QUOTA_STATES, [key[0] for key in keys], [key[1] for key in keys],
                                       [key[2] for key in keys], [states[key].exhausted for key in keys],
                                       [states[key].transitions for key in keys], [states[key].closed for key in keys])

    async def raise_budget_alerts(self, alerts: Sequence[tuple[BudgetAlert, bytes]]) -> set[uuid.UUID]:
        """Store each alert under its unique keys; the ids stored now (the others were raised before)."""
        if not alerts:
            return set()
        rows = await self._connection.fetch(
            INSERT_BUDGET_ALERTS,
            [alert.id for alert, _ in alerts],
            [budgets.alert_kind(alert) for alert, _ in alerts],
            [alert.payer_bu for alert, _ in alerts],
            [alert.consumer_bu or WHOLE_PAYER for alert, _ in alerts],
            [alert.period for alert, _ in alerts],
            [getattr(alert, "threshold_percent", None) for alert, _ in alerts],
            [alert.budget_id for alert, _ in alerts],
            [payload for _, payload in alerts],
        )
        return {row["alert_id"] for row in rows}

    # outbox and counters

    async def stage(self, rows: list[OutboxRow]) -> None:
        await stage(self._connection, SCHEMA, rows)

    async def count(self, counts: dict[str, int]) -> None:
        await bump_counters(self._connection, SCHEMA, counts)


@contextlib.asynccontextmanager
async def unit(pool: asyncpg.Pool) -> AsyncIterator[LedgerUnit]:
    """One transaction on a connection of the pool."""
    async with pool.acquire() as connection, connection.transaction():
        yield LedgerUnit(connection)


# --- offsets (the consumer's hint of where to resume) ---------------------------------

async def stored_offsets(pool: asyncpg.Pool, cluster_id: str, topics: Iterable[str]) -> dict[tuple[str, int], int]:
    stored: dict[tuple[str, int], int] = {}
    async with pool.acquire() as connection:
        for topic in topics:
            rows = await connection.fetch(SELECT_OFFSETS, cluster_id, topic)
            stored.update({(topic, row["kafka_partition"]): row["next_offset"] for row in rows})
    return stored


async def save_offsets(pool: asyncpg.Pool, cluster_id: str, topic: str, next_offsets: dict[int, int]) -> None:
    async with pool.acquire() as connection:
        await connection.execute(UPSERT_OFFSETS, cluster_id, topic, list(next_offsets), list(next_offsets.values()))

