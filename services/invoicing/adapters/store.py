"""Invoicing's tables: asyncpg here and only here. The handlers open a unit
(one transaction, or one connection for reads) and call its typed methods,
which take and return domain types."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, Final

import asyncpg

from tokenhub.contracts.events import InvoiceIssued, InvoiceLine, LedgerPosted, PriceBookPublished, decode
from tokenhub.contracts.periods import Period, PeriodKind
from tokenhub.contracts.pricebook import BookIndex
from tokenhub.contracts.settlement import SettlementNetted
from tokenhub.services.common.db import insert_new
from tokenhub.services.common.outbox import OutboxRow, bump_counters, stage

SCHEMA: Final = "invoicing"

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


class Unit:
    """Invoicing's state on one connection; within `unit()`, one transaction."""

    def __init__(self, connection: asyncpg.Connection) -> None:
        self._connection = connection

    # --- postings in -------------------------------------------------------------------

    async def cycles(self) -> dict[str, PeriodKind]:
        """Billing cycles set per payer; the others are billed monthly."""
        return {row["payer_bu"]: row["kind"] for row in await self._connection.fetch(SELECT_CYCLES)}

    async def save_postings(self, postings: Sequence[tuple[LedgerPosted, Period, bytes]]) -> int:
        """Store postings with their billing periods and received bytes; how many
        were new. A period tier adjustment belongs to the invoice that computed it."""
        records: list[tuple[Any, ...]] = [
            (event.id, event.payer_bu, period.name, period.end, event.event_time, event.chain, event.sequence,
             event.entry_hash, event.invoice_id, payload)
            for event, period, payload in postings]
        inserted = await insert_new(self._connection, schema=SCHEMA, table="postings", columns=POSTING_COLUMNS,
                                    records=records, key_columns=1, fallback_sql=INSERT_POSTINGS)
        return len(inserted)

    async def save_books(self, books: Sequence[tuple[PriceBookPublished, bytes]]) -> None:
        for book, payload in books:
            await self._connection.execute(INSERT_BOOK, book.book_id, book.version, book.effective_from, payload)

    async def books(self) -> BookIndex:
        return BookIndex.of(decode(PriceBookPublished, row["payload"]) for row in await self._connection.fetch(SELECT_BOOKS))

    async def event_time_watermark(self) -> datetime | None:
        """The latest event time of any posting received."""
        return await self._connection.fetchval(SELECT_WATERMARK)

    async def due_periods(self, horizon: datetime) -> list[str]:
        """Periods with open postings that ended by `horizon`, in order of their end."""
        return [row["period"] for row in await self._connection.fetch(SELECT_DUE_PERIODS, horizon)]

    # --- closing -----------------------------------------------------------------------

    async def lock_invoices(self) -> None:
        """Closes take turns: numbers are per payer without gaps."""
        await self._connection.execute(LOCK_INVOICES)

    async def open_payer_periods(self, end: datetime) -> list[tuple[str, str]]:
        """(payer, period) with open postings whose period ended by `end`, by payer and end."""
        return [(row["payer_bu"], row["period"]) for row in await self._connection.fetch(SELECT_OPEN_PAYER_PERIODS, end)]

    async def open_postings(self, payer_bu: str, end: datetime) -> list[tuple[str, LedgerPosted]]:
        """The payer's open postings of periods that ended by `end`, as (period, posting)."""
        rows = await self._connection.fetch(SELECT_OPEN_POSTINGS, payer_bu, end)
        return [(row["period"], decode(LedgerPosted, row["payload"])) for row in rows]

    async def next_number(self, payer_bu: str) -> int:
        return await self._connection.fetchval(SELECT_NEXT_NUMBER, payer_bu)

    async def save_invoice(self, invoice: InvoiceIssued, payload: bytes, now: datetime) -> bool:
        """Store an issued invoice; False when the payer's period had one already."""
        created = await self._connection.fetchval(
            INSERT_INVOICE, invoice.invoice_id, invoice.payer_bu, invoice.period, invoice.number, invoice.currency,
            invoice.subtotal, invoice.rounding, invoice.total, payload, now)
        return created is not None

    async def assign_postings(self, invoice: InvoiceIssued) -> None:
        """The payer's open postings of periods that ended by the invoice's end are its."""
        await self._connection.execute(ASSIGN_POSTINGS, invoice.invoice_id, invoice.payer_bu, invoice.period_end)

    async def mark_credited(self, reversed_postings: Sequence[uuid.UUID], crediting: uuid.UUID) -> None:
        """Invoices that carried the reversed postings are credited by `crediting`;
        their issued content never changes."""
        if reversed_postings:
            await self._connection.execute(MARK_CREDITED, list(reversed_postings), crediting)

    async def record_closed(self, period: str, now: datetime, actor: str) -> None:
        await self._connection.execute(INSERT_CLOSED_PERIOD, period, now, actor)

    async def save_settlement(self, settlement: SettlementNetted, payload: bytes, now: datetime) -> bool:
        """Store the month's settlement; False when it was settled before."""
        return await self._connection.fetchval(INSERT_SETTLEMENT, settlement.period, payload, now) is not None

    async def stage(self, rows: list[OutboxRow]) -> None:
        await stage(self._connection, SCHEMA, rows)

    async def count(self, counts: dict[str, int]) -> None:
        await bump_counters(self._connection, SCHEMA, counts)

    # --- drafts and settlements (read) -------------------------------------------------

    async def payer_open_postings(self, payer_bu: str) -> list[tuple[str, datetime, LedgerPosted]]:
        """Every open posting of the payer, as (period, period end, posting)."""
        rows = await self._connection.fetch(SELECT_PAYER_OPEN_POSTINGS, payer_bu)
        return [(row["period"], row["period_end"], decode(LedgerPosted, row["payload"])) for row in rows]

    async def invoiced_periods(self, payer_bu: str) -> set[str]:
        return {row["period"] for row in await self._connection.fetch(SELECT_INVOICED_PERIODS, payer_bu)}

    async def month_postings(self, month: Period) -> list[LedgerPosted]:
        """Postings on the month's invoices (its days, weeks and itself), adjustments included."""
        rows = await self._connection.fetch(SELECT_PERIOD_INVOICED_POSTINGS, month.start, month.end)
        return [decode(LedgerPosted, row["payload"]) for row in rows]

    async def month_period_tiers(self, month: Period) -> list[tuple[str, InvoiceLine]]:
        """The period tier lines of the month's invoices, as (payer, line)."""
        rows = await self._connection.fetch(SELECT_PERIOD_TIER_LINES, month.start, month.end)
        return [(row["payer_bu"], InvoiceLine.model_validate(row["line"])) for row in rows]

    async def set_cycle(self, payer_bu: str, kind: PeriodKind, actor: str, reason: str, now: datetime) -> None:
        await self._connection.execute(UPSERT_CYCLE, payer_bu, kind, actor, reason, now)


@asynccontextmanager
async def unit(pool: asyncpg.Pool) -> AsyncIterator[Unit]:
    """One transaction."""
    async with pool.acquire() as connection, connection.transaction():
        yield Unit(connection)


@asynccontextmanager
async def reading(pool: asyncpg.Pool) -> AsyncIterator[Unit]:
    """One connection, each statement its own snapshot."""
    async with pool.acquire() as connection:
        yield Unit(connection)
