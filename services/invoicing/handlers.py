"""Invoicing's shell: store postings by period; close periods into invoices."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

import asyncpg
import orjson
import structlog
from aiokafka.structs import ConsumerRecord

from tokenhub.contracts.canonical import canonical_json
from tokenhub.contracts.events import InvoiceIssued, LedgerPosted, decode
from tokenhub.contracts.periods import Period, containing, parse
from tokenhub.contracts.ids import derive_id
from tokenhub.contracts.settlement import SettlementNetted
from tokenhub.contracts.topics import INVOICES_ISSUED, SETTLEMENTS_NETTED
from tokenhub.infra.settings import Settings
from tokenhub.services.common.outbox import OutboxRow, bump_counters, stage
from tokenhub.services.common.runtime import Runtime
from tokenhub.services.invoicing import domain, netting
from tokenhub.services.invoicing.adapters import store

SCHEMA = "invoicing"
log = structlog.get_logger()


async def handle_posted_records(runtime: Runtime, records: Sequence[ConsumerRecord]) -> None:
    events = [decode(LedgerPosted, record.value) for record in records]
    zone = runtime.settings.timezone
    async with runtime.db().acquire() as connection, connection.transaction():
        inserted = await connection.fetch(
            store.INSERT_POSTINGS,
            [event.id for event in events],
            [event.payer_bu for event in events],
            [containing(event.event_time, "month", zone).name for event in events],
            [event.event_time for event in events],
            [event.chain for event in events],
            [event.sequence for event in events],
            [event.entry_hash for event in events],
            [orjson.loads(record.value) for record in records],
        )
        await bump_counters(connection, SCHEMA, {"postings": len(inserted), "duplicates": len(events) - len(inserted)})
    await close_due_periods(runtime)
    log.info("postings_received", received=len(events), new=len(inserted))


async def close_due_periods(runtime: Runtime) -> list[InvoiceIssued]:
    """Close every month whose end plus the allowed lateness the event-time watermark passed."""
    settings = runtime.settings
    async with runtime.db().acquire() as connection:
        watermark = await connection.fetchval(store.SELECT_WATERMARK)
        open_periods = [row["period"] for row in await connection.fetch(store.SELECT_OPEN_PERIODS)]
        closed = {row["period"] for row in await connection.fetch(store.SELECT_CLOSED_PERIODS)}
    if watermark is None:
        return []
    lateness = timedelta(hours=settings.allowed_lateness_hours)
    # A closed period is never reissued: its late postings wait for the payer's next invoice.
    due = [name for name in open_periods
           if name not in closed and parse(name, settings.timezone).end + lateness <= watermark]
    issued: list[InvoiceIssued] = []
    for name in due:
        issued += await close_period(runtime.db(), settings, name, actor="watermark", now=runtime.now())
    if issued:
        await runtime.relay()
    return issued


def _postings(rows: Sequence[asyncpg.Record]) -> list[tuple[str, LedgerPosted]]:
    return [(row["period"], decode(LedgerPosted, row["payload"])) for row in rows]


async def draft_invoice(connection: asyncpg.Connection, settings: Settings, payer_bu: str, period: Period) -> InvoiceIssued | None:
    """What the payer's invoice for `period` would be if it closed now."""
    rows = await connection.fetch(store.SELECT_OPEN_POSTINGS, payer_bu, period.name)
    if not rows:
        return None
    number = await connection.fetchval(store.SELECT_NEXT_NUMBER, payer_bu)
    return _build(settings, payer_bu, period, _postings(rows), number, "draft", None)


def _build(settings: Settings, payer_bu: str, period: Period, postings, number: int, status: str,  # noqa: ANN001
           issued_at: datetime | None) -> InvoiceIssued:
    return domain.build_invoice(
        payer_bu, period, postings, number=number, currency=settings.currency,
        minor_units=settings.currency_minor_units, rounding_mode="half_even", status=status, issued_at=issued_at,
    )


async def close_period(pool: asyncpg.Pool, settings: Settings, period_name: str, *, actor: str, now: datetime) -> list[InvoiceIssued]:
    """Issue one invoice per payer with open postings up to `period_name`; numbers
    have no gaps per payer; later postings of this period go on the next invoice."""
    period = parse(period_name, settings.timezone)
    issued: list[InvoiceIssued] = []
    async with pool.acquire() as connection, connection.transaction():
        await connection.execute(store.LOCK_INVOICES)
        payers = [row["payer_bu"] for row in await connection.fetch(store.SELECT_PAYERS_WITH_OPEN_POSTINGS, period.name)]
        for payer_bu in payers:
            rows = await connection.fetch(store.SELECT_OPEN_POSTINGS, payer_bu, period.name)
            number = await connection.fetchval(store.SELECT_NEXT_NUMBER, payer_bu)
            invoice = _build(settings, payer_bu, period, _postings(rows), number, "issued", now)
            payload = canonical_json(invoice)
            created = await connection.fetchval(
                store.INSERT_INVOICE, invoice.invoice_id, payer_bu, period.name, number, invoice.currency,
                invoice.subtotal, invoice.rounding, invoice.total, orjson.loads(payload), now,
            )
            if created is None:
                continue  # this payer's invoice for the period exists; the postings wait for the next one
            await connection.execute(store.ASSIGN_POSTINGS, invoice.invoice_id, payer_bu, period.name)
            await stage(connection, SCHEMA, [OutboxRow(INVOICES_ISSUED.name, payer_bu.encode(), payload)])
            issued.append(invoice)
        await connection.execute(store.INSERT_CLOSED_PERIOD, period.name, now, actor)
        settled = 0
        if period.kind == "month":
            settled = await _settle(connection, settings, period, now)
        await bump_counters(connection, SCHEMA, {"invoices_issued": len(issued), "settlements": settled})
    log.info("period_closed", period=period.name, invoices=len(issued), actor=actor)
    return issued


def build_settlement(settings: Settings, period: Period, postings: Sequence[LedgerPosted]) -> SettlementNetted:
    matrix = netting.gross_flows(postings)
    positions = netting.positions_from_matrix(matrix)
    rounded, absorber = netting.round_positions(positions, settings.currency_minor_units, "half_even")
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


async def invoiced_postings(connection: asyncpg.Connection, period: Period) -> list[LedgerPosted]:
    return [decode(LedgerPosted, row["payload"]) for row in await connection.fetch(store.SELECT_PERIOD_INVOICED_POSTINGS, period.name)]


async def _settle(connection: asyncpg.Connection, settings: Settings, period: Period, now: datetime) -> int:
    """Net the month's invoiced flows once, when the month closes; published on settlements.netted."""
    settlement = build_settlement(settings, period, await invoiced_postings(connection, period))
    payload = canonical_json(settlement)
    created = await connection.fetchval(store.INSERT_SETTLEMENT, period.name, orjson.loads(payload), now)
    if created is None:
        return 0
    await stage(connection, SCHEMA, [OutboxRow(SETTLEMENTS_NETTED.name, period.name.encode(), payload)])
    log.info("period_settled", period=period.name, transfers=len(settlement.transfers))
    return 1
