"""Invoicing's tables: asyncpg here and only here."""

from __future__ import annotations

from typing import Final

INSERT_POSTINGS: Final = """
insert into invoicing.postings (posting_id, payer_bu, period, event_time, chain, sequence, entry_hash, payload)
select * from unnest($1::uuid[], $2::text[], $3::text[], $4::timestamptz[], $5::text[], $6::bigint[], $7::text[], $8::jsonb[])
on conflict (posting_id) do nothing
returning posting_id
"""
SELECT_OPEN_POSTINGS: Final = """
select period, payload from invoicing.postings
where payer_bu = $1 and invoice_id is null and period <= $2
order by chain, sequence
"""
SELECT_PAYERS_WITH_OPEN_POSTINGS: Final = """
select distinct payer_bu from invoicing.postings where invoice_id is null and period <= $1 order by payer_bu
"""
LOCK_INVOICES: Final = "lock table invoicing.invoices in share row exclusive mode"
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
where payer_bu = $2 and invoice_id is null and period <= $3
"""
INSERT_CLOSED_PERIOD: Final = """
insert into invoicing.closed_periods (period, closed_at, actor) values ($1, $2, $3) on conflict (period) do nothing
"""
SELECT_CLOSED_PERIODS: Final = "select period from invoicing.closed_periods"
SELECT_WATERMARK: Final = "select max(event_time) from invoicing.postings"
SELECT_OPEN_PERIODS: Final = "select distinct period from invoicing.postings where invoice_id is null order by period"
SELECT_PERIOD_INVOICED_POSTINGS: Final = """
select p.payload from invoicing.postings p join invoicing.invoices i using (invoice_id)
where i.period = $1
"""
INSERT_SETTLEMENT: Final = """
insert into invoicing.settlements (period, payload, settled_at) values ($1, $2, $3)
on conflict (period) do nothing returning period
"""
SELECT_SETTLEMENT: Final = "select payload from invoicing.settlements where period = $1"
