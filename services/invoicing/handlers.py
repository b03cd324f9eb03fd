"""Invoicing's shell: store postings by billing period; close periods into
invoices (with period tier lines) and months into settlements."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from decimal import Decimal

import asyncpg
import structlog
from aiokafka.structs import ConsumerRecord

from tokenhub.contracts.canonical import canonical_json
from tokenhub.contracts.events import InvoiceIssued, InvoiceLine, LedgerPosted, Priced, PriceBookPublished, PricedLine, decode
from tokenhub.contracts.ids import derive_id, posted_id
from tokenhub.contracts.periods import Period, billing_period, parse
from tokenhub.contracts.settlement import SettlementNetted
from tokenhub.contracts.topics import INVOICES_ISSUED, SETTLEMENTS_NETTED, TOKENS_PRICED
from tokenhub.infra.settings import Settings
from tokenhub.services.common.outbox import OutboxRow, bump_counters, stage
from tokenhub.services.common.runtime import Runtime
from tokenhub.services.invoicing import domain, netting
from tokenhub.services.invoicing.adapters import store
from tokenhub.services.pricing.domain import BookIndex, period_tier_charge

SCHEMA = "invoicing"
ROUNDING_MODE = "half_even"  # settlement's; an invoice rounds as its price books say (domain.rounding_mode_for)
log = structlog.get_logger()


async def handle_posted_records(runtime: Runtime, records: Sequence[ConsumerRecord]) -> None:
    events = [decode(LedgerPosted, record.value) for record in records]
    zone = runtime.settings.timezone
    async with runtime.db().acquire() as connection, connection.transaction():
        cycles = {row["payer_bu"]: row["kind"] for row in await connection.fetch(store.SELECT_CYCLES)}
        periods = [billing_period(event.event_time, cycles.get(event.payer_bu, "month"), zone) for event in events]
        inserted = await store.insert_postings(connection, [
            (event.id, event.payer_bu, period.name, period.end, event.event_time, event.chain, event.sequence,
             event.entry_hash, event.invoice_id,  # a period tier adjustment belongs to the invoice that computed it
             record.value)  # decoded above, so valid JSON
            for event, period, record in zip(events, periods, records, strict=True)])
        await bump_counters(connection, SCHEMA, {"postings": len(inserted), "duplicates": len(events) - len(inserted)})
    await close_due_periods(runtime)
    log.info("postings_received", received=len(events), new=len(inserted))


async def handle_pricebook_records(runtime: Runtime, records: Sequence[ConsumerRecord]) -> None:
    """Price books, for their period tiers: applied at close (DESIGN.md decision 6)."""
    books = [decode(PriceBookPublished, record.value) for record in records]
    async with runtime.db().acquire() as connection, connection.transaction():
        for book, record in zip(books, records, strict=True):
            await connection.execute(store.INSERT_BOOK, book.book_id, book.version, book.effective_from, record.value)


async def close_due_periods(runtime: Runtime) -> list[InvoiceIssued]:
    """Close every billing period whose end plus the allowed lateness the event-time watermark passed."""
    settings = runtime.settings
    async with runtime.db().acquire() as connection:
        watermark = await connection.fetchval(store.SELECT_WATERMARK)
        if watermark is None:
            return []
        horizon = watermark - timedelta(hours=settings.allowed_lateness_hours)
        due = [row["period"] for row in await connection.fetch(store.SELECT_DUE_PERIODS, horizon)]
    issued: list[InvoiceIssued] = []
    for name in due:
        issued += await close_period(runtime.db(), settings, name, actor="watermark", now=runtime.now())
    if issued:
        await runtime.relay()
    return issued


def _postings(rows: Sequence[asyncpg.Record]) -> list[tuple[str, LedgerPosted]]:
    return [(row["period"], decode(LedgerPosted, row["payload"])) for row in rows]


async def _books(connection: asyncpg.Connection) -> BookIndex:
    return BookIndex.of(decode(PriceBookPublished, row["payload"]) for row in await connection.fetch(store.SELECT_BOOKS))


def period_tier_lines(period: Period, payer_bu: str, postings: Sequence[tuple[str, LedgerPosted]],
                      books: BookIndex) -> list[InvoiceLine]:
    """A line per model with period tiers in the book in force at the period's
    last instant, from the payer's period total of that model's Tokens."""
    totals: dict[tuple[str, str], int] = {}
    for posting_period, posted in postings:
        if posting_period == period.name and posted.kind != "adjustment":
            key = (posted.model, posted.provider_bu)
            totals[key] = totals.get(key, 0) + posted.tokens
    last_instant = period.end - timedelta(microseconds=1)
    lines = []
    for (model, provider), total in sorted(totals.items()):
        book = books.in_force(model, last_instant)
        schedule = book.price_for(model).period_tiers if book else None  # type: ignore[union-attr]
        if schedule is None:
            continue
        lines.append(InvoiceLine(kind="period_tier", period=period.name, provider_bu=provider, consumer_bu=payer_bu,
                                 model=model, tokens=total, amount=period_tier_charge(total, schedule)))
    return lines


def tier_adjustment(invoice: InvoiceIssued, line: InvoiceLine, currency: str) -> Priced:
    """The period tier line as a Priced adjustment, so the ledger posts it."""
    adjustment_id = derive_id("period_tier", str(invoice.invoice_id), line.model)
    return Priced(
        id=adjustment_id, event_time=invoice.period_end - timedelta(microseconds=1),
        cause_id=str(invoice.invoice_id), kind="adjustment", consumed_id=adjustment_id,
        payer_bu=invoice.payer_bu, consumer_bu=invoice.payer_bu, provider_bu=line.provider_bu, model=line.model,
        book_id="period-tiers", book_version=1, currency=currency,
        lines=(PricedLine(token_class="period_tier", tokens=0, unit_price_per_million=Decimal(0), amount=line.amount),),
        total_tokens=0, total_amount=line.amount, invoice_id=invoice.invoice_id,
    )


async def draft_invoice(connection: asyncpg.Connection, settings: Settings, payer_bu: str, period: Period) -> InvoiceIssued | None:
    """What the payer's invoice for `period` would be if every open period closed now,
    tier reached so far included. As at a close, each open period gets its own
    invoice, numbered in period order, and postings of periods already invoiced
    (late usage, credits) go on the last one."""
    rows = await connection.fetch(store.SELECT_PAYER_OPEN_POSTINGS, payer_bu)
    invoiced = {row["period"] for row in await connection.fetch(store.SELECT_INVOICED_PERIODS, payer_bu)}
    open_periods = sorted({(row["period_end"], row["period"]) for row in rows if row["period"] not in invoiced})
    names = [name for _, name in open_periods]
    last = names[-1] if names else period.name
    rows = [row for row in rows if row["period"] == period.name or (row["period"] in invoiced and period.name == last)]
    if not rows:
        return None
    number = await connection.fetchval(store.SELECT_NEXT_NUMBER, payer_bu) + (names.index(period.name) if period.name in names else 0)
    postings = _postings(rows)
    books = await _books(connection)
    tiers = period_tier_lines(period, payer_bu, postings, books)
    return _build(settings, books, payer_bu, period, postings, number, "draft", None, tiers)


def _build(settings: Settings, books: BookIndex, payer_bu: str, period: Period, postings, number: int,  # noqa: ANN001
           status: str, issued_at: datetime | None, tiers: Sequence[InvoiceLine] = ()) -> InvoiceIssued:
    return domain.build_invoice(
        payer_bu, period, postings, number=number, currency=settings.currency,
        minor_units=settings.currency_minor_units, rounding_mode=domain.rounding_mode_for(postings, books.versions),
        status=status, issued_at=issued_at, extra_lines=tiers,
    )


async def close_period(pool: asyncpg.Pool, settings: Settings, period_name: str, *, actor: str, now: datetime) -> list[InvoiceIssued]:
    """Close every billing period that ends by the end of `period_name`: one invoice
    per payer and period, numbered without gaps per payer; postings of earlier
    periods still open become adjustment lines; later ones wait for the next invoice.
    Closing a month also nets it into a settlement."""
    target = parse(period_name, settings.timezone)
    issued: list[InvoiceIssued] = []
    async with pool.acquire() as connection, connection.transaction():
        await connection.execute(store.LOCK_INVOICES)
        books = await _books(connection)
        due = await connection.fetch(store.SELECT_OPEN_PAYER_PERIODS, target.end)
        for row in due:
            period = parse(row["period"], settings.timezone)
            invoice = await _issue(connection, settings, books, row["payer_bu"], period, now)
            if invoice is not None:
                issued.append(invoice)
        # Postings still open belong to periods invoiced before (late usage, repricing):
        # they go on the payer's invoice for the period being closed, as adjustments and credits.
        for payer_bu in dict.fromkeys(row["payer_bu"] for row in due):
            invoice = await _issue(connection, settings, books, payer_bu, target, now)
            if invoice is not None:
                issued.append(invoice)
        await connection.execute(store.INSERT_CLOSED_PERIOD, target.name, now, actor)
        settled = await _settle(connection, settings, target, now) if target.kind == "month" else 0
        adjustments = sum(1 for invoice in issued for line in invoice.lines if line.kind == "period_tier")
        await bump_counters(connection, SCHEMA, {"invoices_issued": len(issued), "settlements": settled,
                                                 "adjustments": adjustments})
    log.info("period_closed", period=target.name, invoices=len(issued), actor=actor)
    return issued


async def _issue(connection: asyncpg.Connection, settings: Settings, books: BookIndex, payer_bu: str, period: Period,
                 now: datetime) -> InvoiceIssued | None:
    rows = await connection.fetch(store.SELECT_OPEN_POSTINGS, payer_bu, period.end)
    if not rows:
        return None  # an earlier period's invoice of this close took them
    postings = _postings(rows)
    number = await connection.fetchval(store.SELECT_NEXT_NUMBER, payer_bu)
    tiers = period_tier_lines(period, payer_bu, postings, books)
    invoice = _build(settings, books, payer_bu, period, postings, number, "issued", now, tiers)
    payload = canonical_json(invoice)
    created = await connection.fetchval(
        store.INSERT_INVOICE, invoice.invoice_id, payer_bu, period.name, number, invoice.currency,
        invoice.subtotal, invoice.rounding, invoice.total, payload, now,
    )
    if created is None:
        return None  # issued before: these postings wait for the payer's next invoice
    await connection.execute(store.ASSIGN_POSTINGS, invoice.invoice_id, payer_bu, period.end)
    # Reversals on this invoice are credit notes for the invoices that carried the
    # charges: those are marked credited; their issued content never changes.
    # The charges' postings are found by key: a posting's id is its LedgerPosted's,
    # which is derived from the Priced's id (`posted_id`).
    reversed_postings = [posted_id(posted.corrects_id) for _, posted in postings
                         if posted.kind == "reversal" and posted.corrects_id]
    if reversed_postings:
        await connection.execute(store.MARK_CREDITED, reversed_postings, invoice.invoice_id)
    rows_out = [OutboxRow(INVOICES_ISSUED.name, payer_bu.encode(), payload)]
    rows_out += [OutboxRow(TOKENS_PRICED.name, payer_bu.encode(), canonical_json(tier_adjustment(invoice, line, settings.currency)))
                 for line in tiers]
    await stage(connection, SCHEMA, rows_out)
    return invoice


def build_settlement(settings: Settings, period: Period, postings: Sequence[LedgerPosted],
                     period_tiers: Sequence[tuple[str, InvoiceLine]] = ()) -> SettlementNetted:
    matrix = netting.gross_flows(postings, period_tiers)
    positions = netting.positions_from_matrix(matrix)
    rounded, absorber = netting.round_positions(positions, settings.currency_minor_units, ROUNDING_MODE)
    return SettlementNetted(
        id=derive_id("settlement", period.name),
        event_time=period.end,
        cause_id=f"settlement:{period.name}",
        period=period.name,
        currency=settings.currency,
        matrix=matrix,
        positions=positions,
        rounded_positions=rounded,
        rounding_residue_bu=absorber,
        transfers=netting.transfers(rounded),
    )


async def invoiced_postings(connection: asyncpg.Connection, month: Period) -> list[LedgerPosted]:
    """Postings on the month's invoices (its days, weeks and itself), adjustments included."""
    rows = await connection.fetch(store.SELECT_PERIOD_INVOICED_POSTINGS, month.start, month.end)
    return [decode(LedgerPosted, row["payload"]) for row in rows]


async def invoiced_period_tiers(connection: asyncpg.Connection, month: Period) -> list[tuple[str, InvoiceLine]]:
    """The period tier lines of the month's invoices, as (payer, line): netted from
    the invoices, since their ledger adjustments come back only after the close."""
    rows = await connection.fetch(store.SELECT_PERIOD_TIER_LINES, month.start, month.end)
    return [(row["payer_bu"], InvoiceLine.model_validate(row["line"])) for row in rows]


async def month_settlement(connection: asyncpg.Connection, settings: Settings, month: Period) -> SettlementNetted:
    """The month's settlement from what its invoices carry, period tier lines included."""
    return build_settlement(settings, month, await invoiced_postings(connection, month),
                            await invoiced_period_tiers(connection, month))


async def _settle(connection: asyncpg.Connection, settings: Settings, period: Period, now: datetime) -> int:
    """Net the month's invoiced flows once, when the month closes; published on settlements.netted."""
    settlement = await month_settlement(connection, settings, period)
    payload = canonical_json(settlement)
    created = await connection.fetchval(store.INSERT_SETTLEMENT, period.name, payload, now)
    if created is None:
        return 0
    await stage(connection, SCHEMA, [OutboxRow(SETTLEMENTS_NETTED.name, period.name.encode(), payload)])
    log.info("period_settled", period=period.name, transfers=len(settlement.transfers))
    return 1


async def set_cycle(pool: asyncpg.Pool, payer_bu: str, kind: str, actor: str, reason: str, now: datetime) -> None:
    async with pool.acquire() as connection:
        await connection.execute(store.UPSERT_CYCLE, payer_bu, kind, actor, reason, now)

