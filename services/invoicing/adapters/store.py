"""Invoicing's tables: asyncpg here and only here."""

from __future__ import annotations

from typing import Any, Final

import asyncpg

from tokenhub.services.common.db import insert_new

POSTING_COLUMNS: Final = ("posting_id", "payer_bu", "period", "period_end", "event_time", "chain", "sequence", "entry_hash",
                          "invoice_id", "payload")
INSERT_POSTINGS: Final = """
insert into invoicing.postings (posting_id, payer_bu, period, period_end, event_time, chain, sequence, entry_hash,
    invoice_id, payload)
select * from unnest($1::uuid[], $2::text[], $3::text[], $4::timestamptz[], $5::timestamptz[], $6::text[],
    $7::bigint[], $8::text[], $9::uuid[], $10::jsonb[])
on conflict (posting_id) do nothing
returning posting_id
"""


async def insert_postings(connection: asyncpg.Connection, records: list[tuple[Any, ...]]) -> set[Any]:
    """Store postings (POSTING_COLUMNS); the ids not stored before."""
    return await insert_new(connection, schema="invoicing", table="postings", columns=POSTING_COLUMNS, records=records,
                            key_columns=1, fallback_sql=INSERT_POSTINGS)


SELECT_CYCLES: Final = "select payer_bu, kind from invoicing.billing_cycles"
UPSERT_CYCLE: Final = """
insert into invoicing.billing_cycles (payer_bu, kind, actor, reason, changed_at) values ($1, $2, $3, $4, $5)
on conflict (payer_bu) do update set kind = excluded.kind, actor = excluded.actor, reason = excluded.reason,
    changed_at = excluded.changed_at
"""
SELECT_OPEN_POSTINGS: Final = """
select period, payload from invoicing.postings
where payer_bu = $1 and invoice_id is null and period_end <= $2
order by chain, sequence
"""
SELECT_OPEN_PAYER_PERIODS: Final = """
select payer_bu, period, max(period_end) as period_end from invoicing.postings
where invoice_id is null and period_end <= $1
group by payer_bu, period order by payer_bu, period_end
"""
SELECT_DRAFT_PERIODS: Final = """
select distinct payer_bu, period from invoicing.postings where invoice_id is null order by 1, 2
"""
LOCK_INVOICES: Final = "lock table invoicing.invoices in share row exclusive mode"
SELECT_PAYER_OPEN_POSTINGS: Final = """
select period, period_end, payload from invoicing.postings
where payer_bu = $1 and invoice_id is null
order by chain, sequence
"""
SELECT_INVOICED_PERIODS: Final = "select period from invoicing.invoices where payer_bu = $1"
SELECT_NEXT_NUMBER: Final = "select coalesce(max(number), 0) + 1 from invoicing.invoices where payer_bu = $1"
INSERT_INVOICE: Final = """
insert into invoicing.invoices (invoice_id, payer_bu, period, number, status, currency, subtotal, rounding, total,
    payload, issued_at)
values ($1, $2, $3, $4, 'issued', $5, $6, $7, $8, $9, $10)
on conflict (payer_bu, period) do nothing
returning invoice_id
"""
ASSIGN_POSTINGS: Final = """
update invoicing.postings set invoice_id = $1
where payer_bu = $2 and invoice_id is null and period_end <= $3
"""
INSERT_CLOSED_PERIOD: Final = """
insert into invoicing.closed_periods (period, closed_at, actor) values ($1, $2, $3) on conflict (period) do nothing
"""
SELECT_WATERMARK: Final = "select max(event_time) from invoicing.postings"
SELECT_DUE_PERIODS: Final = """
select distinct period, period_end from invoicing.postings
where invoice_id is null and period_end <= $1 order by period_end
"""
SELECT_PERIOD_INVOICED_POSTINGS: Final = """
select p.payload from invoicing.postings p join invoicing.invoices i using (invoice_id)
where (i.payload ->> 'period_end')::timestamptz > $1 and (i.payload ->> 'period_end')::timestamptz <= $2
"""
# The period tier lines of the same invoices: (payer_bu, line as jsonb).
SELECT_PERIOD_TIER_LINES: Final = """
select i.payer_bu, line from invoicing.invoices i, jsonb_array_elements(i.payload -> 'lines') line
where line ->> 'kind' = 'period_tier'
  and (i.payload ->> 'period_end')::timestamptz > $1 and (i.payload ->> 'period_end')::timestamptz <= $2
"""
INSERT_SETTLEMENT: Final = """
insert into invoicing.settlements (period, payload, settled_at) values ($1, $2, $3)
on conflict (period) do nothing returning period
"""
SELECT_SETTLEMENT: Final = "select payload from invoicing.settlements where period = $1"
INSERT_BOOK: Final = """
insert into invoicing.price_books (book_id, version, effective_from, payload) values ($1, $2, $3, $4)
on conflict (book_id, version) do nothing
"""
SELECT_BOOKS: Final = "select payload from invoicing.price_books"
SELECT_INVOICE: Final = "select payload, status from invoicing.invoices where invoice_id = $1"
MARK_CREDITED: Final = """
update invoicing.invoices set status = 'credited'
where status = 'issued' and invoice_id <> $2 and invoice_id in (
    select invoice_id from invoicing.postings where posting_id = any($1::uuid[]))
"""
