"""The ledger's tables: asyncpg here and only here."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Final

import asyncpg

from tokenhub.contracts.events import LedgerPosted
from tokenhub.services.common.db import insert_new
from tokenhub.services.ledger.domain import ChainHead, entry_id_for

INSERT_ARCHIVE: Final = """
insert into ledger.priced_archive (priced_id, payload_sha256, payload)
select * from unnest($1::uuid[], $2::text[], $3::bytea[])
on conflict (priced_id) do nothing
returning priced_id
"""
ARCHIVE_COLUMNS: Final = ("priced_id", "payload_sha256", "payload")


async def archive_priced(connection: asyncpg.Connection, records: list[tuple[uuid.UUID, str, bytes]]) -> set[uuid.UUID]:
    """Archive Priced rows (ARCHIVE_COLUMNS); the ids not archived before."""
    return await insert_new(connection, schema="ledger", table="priced_archive", columns=ARCHIVE_COLUMNS,
                            records=records, key_columns=1, fallback_sql=INSERT_ARCHIVE)


SELECT_ARCHIVE_HASHES: Final = """
select priced_id, payload_sha256 from ledger.priced_archive where priced_id = any($1::uuid[])
"""
LOCK_CHAINS: Final = """
select chain, sequence, head_hash from ledger.chains where chain = any($1::text[]) order by chain for update
"""
UPSERT_CHAINS: Final = """
insert into ledger.chains (chain, sequence, head_hash)
select * from unnest($1::text[], $2::bigint[], $3::text[])
on conflict (chain) do update set sequence = excluded.sequence, head_hash = excluded.head_hash
"""
# Entries and legs are written with COPY: they never conflict (an entry's Priced
# was claimed in the archive first) and COPY costs PostgreSQL about a third less
# than `insert ... select * from unnest(...)` for a batch of a thousand entries
# and their four thousand legs. The statement-level checks (legs balance and
# belong to an entry, entries to an archived Priced) run for COPY as for INSERT.
ENTRY_COLUMNS: Final = ("entry_id", "priced_id", "kind", "corrects_id", "chain", "sequence", "payer_bu", "consumer_bu",
                        "provider_bu", "app", "model", "amount", "tokens", "event_time", "posted_at", "entry_hash",
                        "previous_hash", "payload")
POSTING_COLUMNS: Final = ("entry_id", "leg", "ledger", "account", "debit", "credit")
UPSERT_BALANCES: Final = """
insert into ledger.balances (ledger, account, debit_total, credit_total)
select * from unnest($1::text[], $2::text[], $3::numeric[], $4::numeric[])
on conflict (ledger, account) do update set
    debit_total = balances.debit_total + excluded.debit_total,
    credit_total = balances.credit_total + excluded.credit_total
"""
INSERT_ALERT: Final = """
insert into ledger.alerts (alert_id, kind, detail) values ($1, $2, $3) on conflict (alert_id) do nothing
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


async def lock_chain_heads(connection: asyncpg.Connection, chains: list[str]) -> dict[str, ChainHead]:
    rows = await connection.fetch(LOCK_CHAINS, sorted(set(chains)))
    return {row["chain"]: ChainHead(row["chain"], row["sequence"], row["head_hash"]) for row in rows}


async def write_entries(connection: asyncpg.Connection, posted: list[LedgerPosted], payloads: list[bytes]) -> None:
    ids = [entry_id(entry) for entry in posted]  # a uuid5 each: derived once, used by the entry and its legs
    await connection.copy_records_to_table("entries", schema_name="ledger", columns=ENTRY_COLUMNS, records=[
        (identifier, entry.priced_id, entry.kind, entry.corrects_id, entry.chain, entry.sequence, entry.payer_bu,
         entry.consumer_bu, entry.provider_bu, entry.app, entry.model, entry.amount, entry.tokens, entry.event_time,
         entry.posted_at, entry.entry_hash, entry.previous_hash, payload)
        for identifier, entry, payload in zip(ids, posted, payloads, strict=True)
    ])
    await connection.copy_records_to_table("postings", schema_name="ledger", columns=POSTING_COLUMNS, records=[
        (identifier, index, posting.ledger, posting.account, posting.debit, posting.credit)
        for identifier, entry in zip(ids, posted, strict=True) for index, posting in enumerate(entry.postings)
    ])


def entry_id(entry: LedgerPosted) -> uuid.UUID:
    return entry_id_for(entry.priced_id)


async def update_balances(connection: asyncpg.Connection, deltas: dict[tuple[str, str], tuple[Decimal, Decimal]]) -> None:
    keys = sorted(deltas)  # a fixed order: concurrent batches lock rows the same way round
    await connection.execute(
        UPSERT_BALANCES,
        [ledger for ledger, _ in keys],
        [account for _, account in keys],
        [deltas[key][0] for key in keys],
        [deltas[key][1] for key in keys],
    )


async def save_chain_heads(connection: asyncpg.Connection, heads: list[ChainHead]) -> None:
    await connection.execute(
        UPSERT_CHAINS, [head.chain for head in heads], [head.sequence for head in heads], [head.head_hash for head in heads]
    )


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
returning budget_id
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
SELECT_SPEND_MONTHS: Final = """
select distinct period from ledger.period_spend where payer_bu = $1 and period >= $2
union select distinct period from ledger.quota_states where payer_bu = $1 and period >= $2
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
SELECT_FUNDED: Final = """
select array_agg(distinct consumer_bu order by consumer_bu) as consumers,
       array_remove(array_agg(distinct app order by app), null) as apps
from ledger.entries
where payer_bu = $1 and event_time >= $2 and event_time < $3 and ($4::text = '*' or consumer_bu = $4)
"""
