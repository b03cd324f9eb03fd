"""Invoicing's tables: asyncpg here and only here. The handlers open a unit
(one transaction, or one connection for reads) and call its typed methods,
which take and return domain types.

Invoicing keeps running totals, not a copy of every posting (migration 0024,
docs/architecture.md): totals per invoice-line key and per chain, open until
an invoice takes them; each chain's applied-through sequence, which is its
dedup; the postings that arrived ahead of a gap, until it closes; and, for
credit notes, the few postings that must stay identifiable one by one (late
charges and reversals)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Final

import asyncpg
import orjson

from tokenhub.contracts.events import InvoiceIssued, InvoiceLine, PriceBookPublished, decode
from tokenhub.contracts.periods import Period, PeriodKind
from tokenhub.contracts.pricebook import BookIndex
from tokenhub.contracts.settlement import SettlementNetted
from tokenhub.services.common.outbox import OutboxRow, bump_counters, stage
from tokenhub.services.invoicing.codec import decode_posted
from tokenhub.services.invoicing.domain import (
    ChainTotal,
    LineKey,
    LineTotal,
    Closing,
    Flow,
    PeriodTotals,
    Plan,
    Received,
    TierState,
    WaitingPosting,
    charged_tiers,
)

SCHEMA: Final = "invoicing"

# --- postings in: once per batch ---------------------------------------------------------

# Closes take SHARE ROW EXCLUSIVE on invoices (LOCK_INVOICES); a batch takes SHARE, which
# only a close conflicts with: a close never sees half a batch, and a batch knows which
# periods are invoiced (late charges) as of a close that has either happened or not.
LOCK_AGAINST_CLOSES: Final = "lock table invoicing.invoices in share mode"
SELECT_CYCLES: Final = "select payer_bu, kind from invoicing.billing_cycles"
# Each chain of the batch, created at 0 when new, locked: two instances never apply one
# chain at once (during a rebalance both may hold its partition for a moment).
LOCK_CHAINS: Final = """
with created as (
    insert into invoicing.chains (chain, sequence, waiting)
    select unnest($1::text[]), 0, 0 on conflict (chain) do nothing
)
select chain, sequence, waiting from invoicing.chains where chain = any($1::text[]) order by chain for update
"""
SELECT_WAITING: Final = "select payload from invoicing.waiting where chain = any($1::text[]) order by chain, sequence"
SELECT_INVOICED: Final = """
select i.payer_bu, i.period from invoicing.invoices i
join unnest($1::text[], $2::text[]) as batch(payer_bu, period) using (payer_bu, period)
"""
ADD_LINE_TOTALS: Final = """
insert into invoicing.line_totals (payer_bu, period, period_end, kind, consumer_bu, provider_bu, app, model, token_class,
    unit_price_per_million, book_id, book_version, tokens, amount)
select * from unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::text[], $6::text[], $7::text[],
    $8::text[], $9::text[], $10::numeric[], $11::text[], $12::int[], $13::bigint[], $14::numeric[])
on conflict (payer_bu, period, kind, consumer_bu, provider_bu, app, model, token_class, unit_price_per_million, book_id,
    book_version) where invoice_id is null
do update set tokens = line_totals.tokens + excluded.tokens, amount = line_totals.amount + excluded.amount
"""
INSERT_TIER_TOTALS: Final = """
insert into invoicing.line_totals (payer_bu, period, period_end, kind, consumer_bu, provider_bu, app, model, token_class,
    unit_price_per_million, book_id, book_version, tokens, amount, invoice_id)
select * from unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::text[], $6::text[], $7::text[],
    $8::text[], $9::text[], $10::numeric[], $11::text[], $12::int[], $13::bigint[], $14::numeric[], $15::uuid[])
"""
ADD_CHAIN_TOTALS: Final = """
insert into invoicing.chain_totals (payer_bu, period, period_end, chain, postings, head_sequence, head_hash)
select * from unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::bigint[], $6::bigint[], $7::text[])
on conflict (payer_bu, period, chain) where invoice_id is null
do update set postings = chain_totals.postings + excluded.postings,
    head_sequence = greatest(chain_totals.head_sequence, excluded.head_sequence),
    head_hash = case when excluded.head_sequence > chain_totals.head_sequence then excluded.head_hash
                     else chain_totals.head_hash end
"""
UPDATE_CHAINS: Final = """
update invoicing.chains c
set sequence = batch.sequence, waiting = batch.waiting,
    latest_event_time = greatest(c.latest_event_time, batch.latest_event_time)
from unnest($1::text[], $2::bigint[], $3::int[], $4::timestamptz[]) as batch(chain, sequence, waiting, latest_event_time)
where c.chain = batch.chain
"""
INSERT_WAITING: Final = """
insert into invoicing.waiting (chain, sequence, payload, received_at)
select chain, sequence, payload, $4 from unnest($1::text[], $2::bigint[], $3::bytea[]) as batch(chain, sequence, payload)
on conflict (chain, sequence) do nothing
"""
DELETE_WAITING: Final = """
delete from invoicing.waiting w using unnest($1::text[], $2::bigint[]) as done(chain, sequence)
where w.chain = done.chain and w.sequence = done.sequence
"""
INSERT_LATE: Final = """
insert into invoicing.late_charges (priced_id, payer_bu, period, period_end)
select * from unnest($1::uuid[], $2::text[], $3::text[], $4::timestamptz[]) on conflict (priced_id) do nothing
"""
INSERT_REVERSALS: Final = """
insert into invoicing.reversals (priced_id, corrects_id, payer_bu, period, period_end)
select * from unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::timestamptz[]) on conflict (priced_id) do nothing
"""
UPSERT_CYCLE: Final = """
insert into invoicing.billing_cycles (payer_bu, kind, actor, reason, changed_at) values ($1, $2, $3, $4, $5)
on conflict (payer_bu) do update set kind = excluded.kind, actor = excluded.actor, reason = excluded.reason,
    changed_at = excluded.changed_at
"""
INSERT_BOOK: Final = """
insert into invoicing.price_books (book_id, version, effective_from, payload) values ($1, $2, $3, $4)
on conflict (book_id, version) do nothing
"""
SELECT_BOOKS: Final = "select payload from invoicing.price_books"

# --- after every batch: is a period due? -------------------------------------------------

SELECT_WATERMARK: Final = "select max(latest_event_time) from invoicing.chains"

# --- closing -------------------------------------------------------------------------------

LOCK_INVOICES: Final = "lock table invoicing.invoices in share row exclusive mode"
SELECT_OPEN_PAYER_PERIODS: Final = """
select payer_bu, period, max(period_end) as period_end from invoicing.chain_totals
where invoice_id is null and period_end <= $1
group by payer_bu, period order by payer_bu, period_end
"""
LINE_COLUMNS: Final = """payer_bu, period, period_end, kind, consumer_bu, provider_bu, app, model, token_class,
    unit_price_per_million, book_id, book_version, tokens, amount"""
CHAIN_COLUMNS: Final = "payer_bu, period, period_end, chain, postings, head_sequence, head_hash"
SELECT_OPEN_LINES: Final = f"""
select {LINE_COLUMNS} from invoicing.line_totals
where payer_bu = any($1::text[]) and invoice_id is null and period_end <= $2
"""
SELECT_OPEN_CHAINS: Final = f"""
select {CHAIN_COLUMNS} from invoicing.chain_totals
where payer_bu = any($1::text[]) and invoice_id is null and period_end <= $2
"""
SELECT_NEXT_NUMBER: Final = "select coalesce(max(number), 0) + 1 from invoicing.invoices where payer_bu = $1"
SELECT_NEXT_NUMBERS: Final = """
select payer_bu, max(number) + 1 as next from invoicing.invoices where payer_bu = any($1::text[]) group by payer_bu
"""
INSERT_INVOICES: Final = """
insert into invoicing.invoices (invoice_id, payer_bu, period, period_end, number, status, currency, subtotal, rounding,
    total, payload, issued_at)
select invoice_id, payer_bu, period, period_end, number, 'issued', currency, subtotal, rounding, total, payload, $11
from unnest($1::uuid[], $2::text[], $3::text[], $4::timestamptz[], $5::int[], $6::text[], $7::numeric[],
    $8::numeric[], $9::numeric[], $10::bytea[])
    as issued(invoice_id, payer_bu, period, period_end, number, currency, subtotal, rounding, total, payload)
on conflict (payer_bu, period) do nothing
returning invoice_id
"""
# Each invoice of a close takes its payer's open totals with a period end in its range;
# the ranges of one payer's invoices do not overlap, so each row goes to one invoice.
_ASSIGN: Final = """
update invoicing.{table} t set invoice_id = taken.invoice_id
from unnest($1::uuid[], $2::text[], $3::timestamptz[], $4::timestamptz[]) as taken(invoice_id, payer_bu, after, upto)
where t.payer_bu = taken.payer_bu and t.invoice_id is null and t.period_end <= taken.upto
  and (taken.after is null or t.period_end > taken.after)
"""
ASSIGN_LINES: Final = _ASSIGN.format(table="line_totals")
ASSIGN_CHAINS: Final = _ASSIGN.format(table="chain_totals")
ASSIGN_LATE: Final = _ASSIGN.format(table="late_charges")
ASSIGN_REVERSALS: Final = _ASSIGN.format(table="reversals") + "returning t.invoice_id, t.payer_bu, t.corrects_id, t.period"
# The invoice that carried a reversed charge: the late charge's, when it came after its
# period's invoice; otherwise its period's own invoice. The crediting invoice is never it.
MARK_CREDITED: Final = """
update invoicing.invoices i set status = 'credited'
from (select reversed.crediting, coalesce(late.invoice_id, own.invoice_id) as carrier
      from unnest($1::uuid[], $2::text[], $3::uuid[], $4::text[]) as reversed(crediting, payer_bu, corrects_id, period)
      left join invoicing.late_charges late on late.priced_id = reversed.corrects_id
      left join invoicing.invoices own on own.payer_bu = reversed.payer_bu and own.period = reversed.period) credited
where i.invoice_id = credited.carrier and i.invoice_id <> credited.crediting and i.status = 'issued'
"""
INSERT_CLOSED_PERIOD: Final = """
insert into invoicing.closed_periods (period, closed_at, actor) values ($1, $2, $3) on conflict (period) do nothing
"""
INSERT_SETTLEMENT: Final = """
insert into invoicing.settlements (period, revision, payload, settled_at) values ($1, $2, $3, $4)
on conflict (period, revision) do nothing returning period
"""
SELECT_SETTLED_MONTHS: Final = """
select distinct on (period) period, revision, settled_at from invoicing.settlements order by period, revision desc
"""
SELECT_MONTH_INVOICE_IDS: Final = "select invoice_id from invoicing.invoices where period_end > $1 and period_end <= $2"
# Re-evaluating an earlier period's tier: its Tokens over all its totals, and the
# payer's invoices (their tier lines say what was charged).
SELECT_PERIOD_TOKENS: Final = """
select period, model, provider_bu, sum(tokens)::bigint as tokens from invoicing.line_totals
where payer_bu = $1 and period = any($2::text[]) and kind <> 'period_tier'
group by period, model, provider_bu
"""
SELECT_PAYER_INVOICES: Final = "select payload from invoicing.invoices where payer_bu = $1"
SELECT_PAYERS_INVOICED: Final = "select payer_bu, period from invoicing.invoices where payer_bu = any($1::text[])"
PLAN_COLUMNS: Final = "plan_id, payer_bu, book_id, model, provider_bu, first_month, last_month, actor, reason, assigned_at"
SELECT_PLANS: Final = f"select {PLAN_COLUMNS}, ended_by, end_reason, ended_at from invoicing.plans order by payer_bu, model, first_month"
INSERT_PLAN: Final = f"insert into invoicing.plans ({PLAN_COLUMNS}) values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
END_PLAN: Final = """
update invoicing.plans set last_month = $2, ended_by = $3, end_reason = $4, ended_at = $5 where plan_id = $1
"""

# --- read side: drafts, spend, settlements, republishing ---------------------------------

SELECT_PAYER_OPEN_LINES: Final = f"select {LINE_COLUMNS} from invoicing.line_totals where payer_bu = $1 and invoice_id is null"
SELECT_PAYER_OPEN_CHAINS: Final = f"select {CHAIN_COLUMNS} from invoicing.chain_totals where payer_bu = $1 and invoice_id is null"
SELECT_INVOICED_PERIODS: Final = "select period from invoicing.invoices where payer_bu = $1"
SELECT_DRAFT_PERIODS: Final = """
select distinct payer_bu, period from invoicing.chain_totals where invoice_id is null order by 1, 2
"""
SELECT_ISSUED: Final = "select payload, status from invoicing.invoices order by payer_bu, number"
# What a month's invoices carry, payer by provider (their tier lines come from the
# invoices: the ledger posts those back only after the close).
SELECT_MONTH_FLOWS: Final = """
select t.payer_bu, t.provider_bu, sum(t.amount) as amount
from invoicing.line_totals t join invoicing.invoices i using (invoice_id)
where i.period_end > $1 and i.period_end <= $2 and t.kind <> 'period_tier'
group by t.payer_bu, t.provider_bu order by t.payer_bu, t.provider_bu
"""
SELECT_MONTH_INVOICES: Final = "select payload from invoicing.invoices where period_end > $1 and period_end <= $2"
SELECT_LATEST_SETTLEMENT: Final = """
select payload from invoicing.settlements where period = $1 order by revision desc limit 1
"""
# sum(bigint) is numeric in Postgres: cast back, so --json prints Tokens as integers.
SELECT_SPEND: Final = """
select consumer_bu, coalesce(app, '-') as app, model, token_class,
       sum(tokens)::bigint as tokens, sum(amount) as amount,
       coalesce(sum(amount) filter (where kind = 'overage'), 0) as overage
from invoicing.line_totals
where payer_bu = $1 and period_end > $2 and period_end <= $3
group by 1, 2, 3, 4 order by 1, 2, 3, 4
"""
SELECT_GAPS: Final = """
select c.chain, c.sequence + 1 as missing_sequence, min(w.sequence) as waiting_from, count(*) as waiting,
       min(w.received_at) as waiting_since
from invoicing.chains c join invoicing.waiting w using (chain)
group by c.chain, c.sequence order by c.chain
"""


@dataclass(frozen=True)
class ChainState:
    """What a batch needs of its chains: the applied-through sequences and the
    postings waiting ahead of a gap."""

    watermarks: dict[str, int]
    waiting: list[WaitingPosting]


@dataclass(frozen=True)
class WaitingChain:
    chain: str
    missing_sequence: int
    waiting_from: int
    waiting: int
    waiting_since: datetime


def _plan(row: asyncpg.Record) -> Plan:
    return Plan(row["plan_id"], row["payer_bu"], row["book_id"], row["model"], row["provider_bu"], row["first_month"],
                row["last_month"], row["actor"], row["reason"], row["assigned_at"])


def _line_total(row: asyncpg.Record) -> LineTotal:
    key = LineKey(row["payer_bu"], row["period"], row["kind"], row["consumer_bu"], row["provider_bu"], row["app"],
                  row["model"], row["token_class"], row["unit_price_per_million"], row["book_id"], row["book_version"])
    return LineTotal(key, row["period_end"], row["tokens"], row["amount"])


def _chain_total(row: asyncpg.Record) -> ChainTotal:
    return ChainTotal(row["payer_bu"], row["period"], row["period_end"], row["chain"], row["postings"],
                      row["head_sequence"], row["head_hash"])


def _line_arrays(totals: Sequence[LineTotal]) -> list[list]:
    columns: list[list] = [[] for _ in range(14)]
    for total in totals:
        key = total.key
        for column, value in zip(columns, (key.payer_bu, key.period, total.period_end, key.kind, key.consumer_bu,
                                           key.provider_bu, key.app, key.model, key.token_class,
                                           key.unit_price_per_million, key.book_id, key.book_version, total.tokens,
                                           total.amount), strict=True):
            column.append(value)
    return columns


class Unit:
    """Invoicing's state on one connection; within `unit()`, one transaction."""

    def __init__(self, connection: asyncpg.Connection) -> None:
        self._connection = connection

    @property
    def connection(self) -> asyncpg.Connection:
        """For read functions that take a connection (queries.py)."""
        return self._connection

    # --- postings in -------------------------------------------------------------------

    async def lock_against_closes(self) -> None:
        await self._connection.execute(LOCK_AGAINST_CLOSES)

    async def cycles(self) -> dict[str, PeriodKind]:
        """Billing cycles set per payer; the others are billed monthly."""
        return {row["payer_bu"]: row["kind"] for row in await self._connection.fetch(SELECT_CYCLES)}

    async def lock_chains(self, chains: Sequence[str]) -> ChainState:
        """The chains' applied-through sequences (0 for a chain not seen before),
        locked until the batch commits, and their waiting postings."""
        rows = await self._connection.fetch(LOCK_CHAINS, sorted(set(chains)))
        watermarks = {row["chain"]: row["sequence"] for row in rows}
        with_waiting = [row["chain"] for row in rows if row["waiting"]]
        waiting = []
        if with_waiting:
            waiting = [WaitingPosting(decode_posted(row["payload"]), row["payload"])
                       for row in await self._connection.fetch(SELECT_WAITING, with_waiting)]
        return ChainState(watermarks, waiting)

    async def invoiced(self, pairs: set[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which of these (payer, period) pairs have an invoice already."""
        if not pairs:
            return set()
        payers, periods = zip(*sorted(pairs), strict=True)
        rows = await self._connection.fetch(SELECT_INVOICED, list(payers), list(periods))
        return {(row["payer_bu"], row["period"]) for row in rows}

    async def save_received(self, received: Received, state: ChainState, now: datetime) -> None:
        """Add a batch to the totals and move its chains on, in the caller's transaction."""
        connection = self._connection
        if received.open_lines:
            await connection.execute(ADD_LINE_TOTALS, *_line_arrays(received.open_lines))
        if received.tier_lines:
            columns = _line_arrays([total for _, total in received.tier_lines])
            await connection.execute(INSERT_TIER_TOTALS, *columns, [invoice_id for invoice_id, _ in received.tier_lines])
        if received.chains:
            chains = received.chains
            await connection.execute(
                ADD_CHAIN_TOTALS, [c.payer_bu for c in chains], [c.period for c in chains],
                [c.period_end for c in chains], [c.chain for c in chains], [c.postings for c in chains],
                [c.head_sequence for c in chains], [c.head_hash for c in chains])
        if received.to_wait:
            await connection.execute(
                INSERT_WAITING, [w.posted.chain for w in received.to_wait], [w.posted.sequence for w in received.to_wait],
                [w.payload for w in received.to_wait], now)
        if received.released:
            await connection.execute(DELETE_WAITING, [chain for chain, _ in received.released],
                                     [sequence for _, sequence in received.released])
        if received.late:
            late = received.late
            await connection.execute(INSERT_LATE, [c.priced_id for c in late], [c.payer_bu for c in late],
                                     [c.period for c in late], [c.period_end for c in late])
        if received.reversals:
            refs = received.reversals
            await connection.execute(INSERT_REVERSALS, [r.priced_id for r in refs], [r.corrects_id for r in refs],
                                     [r.payer_bu for r in refs], [r.period for r in refs], [r.period_end for r in refs])
        # The event-time watermark is the latest over the chains (SELECT_WATERMARK): the
        # batch's latest is enough for each chain it moved.
        waiting_now = {gap.chain: gap.waiting for gap in received.gaps}
        moved = sorted(set(received.watermarks) | set(waiting_now) | {chain for chain, _ in received.released})
        if moved:
            await connection.execute(
                UPDATE_CHAINS, moved, [received.watermarks.get(chain, state.watermarks.get(chain, 0)) for chain in moved],
                [waiting_now.get(chain, 0) for chain in moved],
                [received.latest_event_time for _ in moved])

    async def save_books(self, books: Sequence[tuple[PriceBookPublished, bytes]]) -> None:
        for book, payload in books:
            await self._connection.execute(INSERT_BOOK, book.book_id, book.version, book.effective_from, payload)

    async def books(self) -> BookIndex:
        return BookIndex.of(decode(PriceBookPublished, row["payload"]) for row in await self._connection.fetch(SELECT_BOOKS))

    async def event_time_watermark(self) -> datetime | None:
        """The latest event time of any posting applied."""
        return await self._connection.fetchval(SELECT_WATERMARK)

    # --- closing -----------------------------------------------------------------------

    async def lock_invoices(self) -> None:
        """Closes take turns (numbers are per payer without gaps), and batches wait for them."""
        await self._connection.execute(LOCK_INVOICES)

    async def open_payer_periods(self, end: datetime) -> list[tuple[str, str]]:
        """(payer, period) with open totals whose period ended by `end`, by payer and end."""
        return [(row["payer_bu"], row["period"]) for row in await self._connection.fetch(SELECT_OPEN_PAYER_PERIODS, end)]

    async def open_totals_of(self, payers: Sequence[str], end: datetime) -> dict[str, PeriodTotals]:
        """Each payer's open totals of periods that ended by `end`."""
        lines = await self._connection.fetch(SELECT_OPEN_LINES, list(payers), end)
        chains = await self._connection.fetch(SELECT_OPEN_CHAINS, list(payers), end)
        by_payer: dict[str, tuple[list[LineTotal], list[ChainTotal]]] = {}
        for row in lines:
            by_payer.setdefault(row["payer_bu"], ([], []))[0].append(_line_total(row))
        for row in chains:
            by_payer.setdefault(row["payer_bu"], ([], []))[1].append(_chain_total(row))
        return {payer: PeriodTotals(tuple(held[0]), tuple(held[1])) for payer, held in by_payer.items()}

    async def next_numbers(self, payers: Sequence[str]) -> dict[str, int]:
        """Each payer's next invoice number (1 for a payer without invoices)."""
        rows = await self._connection.fetch(SELECT_NEXT_NUMBERS, list(payers))
        return {row["payer_bu"]: row["next"] for row in rows}

    async def next_number(self, payer_bu: str) -> int:
        return await self._connection.fetchval(SELECT_NEXT_NUMBER, payer_bu)

    async def save_invoices(self, invoices: Sequence[InvoiceIssued], payloads: Sequence[bytes], now: datetime) -> None:
        """Store issued invoices (the close holds the invoices lock and issued none twice)."""
        if not invoices:
            return
        columns = [[invoice.invoice_id for invoice in invoices], [invoice.payer_bu for invoice in invoices],
                   [invoice.period for invoice in invoices], [invoice.period_end for invoice in invoices],
                   [invoice.number for invoice in invoices], [invoice.currency for invoice in invoices],
                   [invoice.subtotal for invoice in invoices], [invoice.rounding for invoice in invoices],
                   [invoice.total for invoice in invoices], list(payloads)]
        stored = await self._connection.fetch(INSERT_INVOICES, *columns, now)
        if len(stored) != len(invoices):
            raise RuntimeError(f"{len(invoices) - len(stored)} invoices were issued before: a close without the lock?")

    async def assign_all(self, closings: Sequence[Closing]) -> None:
        """Each invoice takes its payer's open totals with a period end in its range
        (`Closing.after`, its period end]. Reversals on it are credit notes: the invoices
        that carried the charges they reverse are marked credited; their issued content
        never changes."""
        if not closings:
            return
        arguments = ([closing.invoice.invoice_id for closing in closings], [closing.invoice.payer_bu for closing in closings],
                     [closing.after for closing in closings], [closing.invoice.period_end for closing in closings])
        for statement in (ASSIGN_LINES, ASSIGN_CHAINS, ASSIGN_LATE):
            await self._connection.execute(statement, *arguments)
        reversed_charges = await self._connection.fetch(ASSIGN_REVERSALS, *arguments)
        if reversed_charges:
            await self._connection.execute(MARK_CREDITED, *(
                [row[column] for row in reversed_charges] for column in ("invoice_id", "payer_bu", "corrects_id", "period")))

    async def record_closed(self, period: str, now: datetime, actor: str) -> None:
        await self._connection.execute(INSERT_CLOSED_PERIOD, period, now, actor)

    async def save_settlement(self, settlement: SettlementNetted, payload: bytes, now: datetime) -> bool:
        """Store a settlement revision; False when that revision was stored before."""
        return await self._connection.fetchval(INSERT_SETTLEMENT, settlement.period, settlement.revision, payload,
                                               now) is not None

    async def settled_months(self) -> list[dict]:
        return [dict(row) for row in await self._connection.fetch(SELECT_SETTLED_MONTHS)]

    async def month_invoice_ids(self, month: Period) -> list[uuid.UUID]:
        """The invoices issued for the month: its days, weeks and itself."""
        return [row["invoice_id"] for row in await self._connection.fetch(SELECT_MONTH_INVOICE_IDS, month.start, month.end)]

    async def tier_states(self, payer_bu: str, periods: dict[str, Period]) -> dict[str, TierState]:
        """For the payer's earlier periods with late usage: each one's Tokens over all
        its totals and the tier charges its invoices carry."""
        if not periods:
            return {}
        tokens: dict[str, dict[tuple[str, str], int]] = {name: {} for name in periods}
        for row in await self._connection.fetch(SELECT_PERIOD_TOKENS, payer_bu, sorted(periods)):
            tokens[row["period"]][(row["model"], row["provider_bu"])] = row["tokens"]
        invoices = [decode(InvoiceIssued, row["payload"])
                    for row in await self._connection.fetch(SELECT_PAYER_INVOICES, payer_bu)]
        charged = charged_tiers(invoices, set(periods))
        return {name: TierState(tokens[name], dict(charged.get(name, {}))) for name in periods}

    async def invoiced_of(self, payers: Sequence[str]) -> set[tuple[str, str]]:
        """(payer, period) of every invoice of these payers."""
        if not payers:
            return set()
        rows = await self._connection.fetch(SELECT_PAYERS_INVOICED, sorted(set(payers)))
        return {(row["payer_bu"], row["period"]) for row in rows}

    async def plans(self) -> list[Plan]:
        """Every plan; an ended one keeps the month it ended with."""
        return [_plan(row) for row in await self._connection.fetch(SELECT_PLANS)]

    async def plan_rows(self) -> list[dict]:
        """Plans as stored, with who ended them, for listing."""
        return [dict(row) for row in await self._connection.fetch(SELECT_PLANS)]

    async def save_plan(self, plan: Plan) -> None:
        await self._connection.execute(INSERT_PLAN, plan.plan_id, plan.payer_bu, plan.book_id, plan.model,
                                       plan.provider_bu, plan.first_month, plan.last_month, plan.actor, plan.reason,
                                       plan.assigned_at)

    async def save_plan_end(self, plan: Plan, actor: str, reason: str, now: datetime) -> None:
        await self._connection.execute(END_PLAN, plan.plan_id, plan.last_month, actor, reason, now)

    async def stage(self, rows: list[OutboxRow]) -> None:
        await stage(self._connection, SCHEMA, rows)

    async def count(self, counts: dict[str, int]) -> None:
        await bump_counters(self._connection, SCHEMA, counts)

    # --- drafts and settlements (read) -------------------------------------------------

    async def payer_open_totals(self, payer_bu: str) -> PeriodTotals:
        """Every open total of the payer."""
        lines = await self._connection.fetch(SELECT_PAYER_OPEN_LINES, payer_bu)
        chains = await self._connection.fetch(SELECT_PAYER_OPEN_CHAINS, payer_bu)
        return PeriodTotals(tuple(map(_line_total, lines)), tuple(map(_chain_total, chains)))

    async def invoiced_periods(self, payer_bu: str) -> set[str]:
        return {row["period"] for row in await self._connection.fetch(SELECT_INVOICED_PERIODS, payer_bu)}

    async def draft_periods(self) -> list[tuple[str, str]]:
        """(payer, period) of every period with open totals."""
        return [(row["payer_bu"], row["period"]) for row in await self._connection.fetch(SELECT_DRAFT_PERIODS)]

    async def issued_invoices(self) -> list[InvoiceIssued]:
        """Issued invoices by payer and number. The status moves to credited when a later
        credit note reverses their charges; the content never changes."""
        return [decode(InvoiceIssued, row["payload"]).model_copy(update={"status": row["status"]})
                for row in await self._connection.fetch(SELECT_ISSUED)]

    async def month_flows(self, month: Period) -> list[Flow]:
        """Payer -> provider amounts on the month's invoices (its days, weeks and
        itself), period tier lines left out (`month_period_tiers`)."""
        rows = await self._connection.fetch(SELECT_MONTH_FLOWS, month.start, month.end)
        return [Flow(row["payer_bu"], row["provider_bu"], row["amount"]) for row in rows]

    async def month_period_tiers(self, month: Period) -> list[tuple[str, InvoiceLine]]:
        """The period tier lines of the month's invoices, as (payer, line). Only those
        lines are read into models: an invoice carries up to thousands of others."""
        tiers = []
        for row in await self._connection.fetch(SELECT_MONTH_INVOICES, month.start, month.end):
            invoice = orjson.loads(row["payload"])
            tiers += [(invoice["payer_bu"], InvoiceLine.model_validate(line)) for line in invoice["lines"]
                      if line["kind"] == "period_tier"]
        return tiers

    async def settlement(self, month: Period) -> SettlementNetted | None:
        """The month's latest settlement revision, the one that stands."""
        payload = await self._connection.fetchval(SELECT_LATEST_SETTLEMENT, month.name)
        return None if payload is None else decode(SettlementNetted, payload)

    async def spend(self, payer_bu: str, month: Period) -> list[dict]:
        """Month to date: the payer's Tokens and amounts by consumer, app, model and class."""
        return [dict(row) for row in await self._connection.fetch(SELECT_SPEND, payer_bu, month.start, month.end)]

    async def waiting_chains(self) -> list[WaitingChain]:
        """Chains whose next sequence is missing while later ones wait for it."""
        return [WaitingChain(row["chain"], row["missing_sequence"], row["waiting_from"], row["waiting"],
                             row["waiting_since"]) for row in await self._connection.fetch(SELECT_GAPS)]

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

