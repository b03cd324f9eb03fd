"""Read-only queries for people. Tools may read every schema (DESIGN.md);
`replay` sums with its own code, independent of the ledger's posting path."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Final

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from tokenhub.contracts.events import InvoiceIssued, decode
from tokenhub.contracts.periods import parse
from tokenhub.contracts.topics import TOKENS_PRICED
from tokenhub.infra.settings import Settings
from tokenhub.services.invoicing.handlers import draft_invoice

SELECT_PROJECTION: Final = "select ledger, account, debit_total, credit_total from ledger.balances"
SELECT_AS_OF: Final = """
select p.ledger, p.account, sum(p.debit) as debit_total, sum(p.credit) as credit_total
from ledger.postings p join ledger.entries e using (entry_id)
where e.{column} <= $1
group by p.ledger, p.account
"""
SELECT_NAMES: Final = "select bu_id, display_name from metering.business_units"
SELECT_ARCHIVE_COUNT: Final = "select count(*) from ledger.priced_archive"
SELECT_ISSUED: Final = "select payload, status from invoicing.invoices order by payer_bu, number"
SELECT_OPEN: Final = "select distinct payer_bu, period from invoicing.postings where invoice_id is null order by 1, 2"

FIGURES: Final = ("spend", "revenue", "tokens_consumed", "tokens_served")


@dataclass(frozen=True)
class BalanceRow:
    bu: str
    display_name: str
    spend: Decimal
    revenue: Decimal
    tokens_consumed: int
    tokens_served: int

    @property
    def net(self) -> Decimal:
        return self.revenue - self.spend


def figures_from_accounts(rows: list[asyncpg.Record]) -> dict[str, dict[str, Decimal]]:
    """Per BU: spend and consumed are debit balances, revenue and served credit balances."""
    figures: dict[str, dict[str, Decimal]] = defaultdict(lambda: dict.fromkeys(FIGURES, Decimal(0)))
    for row in rows:
        _, bu, kind = row["account"].split(":", 2)
        debit_balance = row["debit_total"] - row["credit_total"]
        name = {"spend": "spend", "revenue": "revenue", "consumed": "tokens_consumed", "served": "tokens_served"}[kind]
        figures[bu][name] += debit_balance if kind in ("spend", "consumed") else -debit_balance
    return figures


async def balances(pool: asyncpg.Pool, *, bu: str | None = None, as_of: datetime | None = None,
                   by: str = "event-time") -> list[BalanceRow]:
    async with pool.acquire() as connection:
        if as_of is None:
            rows = await connection.fetch(SELECT_PROJECTION)
        else:
            column = "event_time" if by == "event-time" else "posted_at"
            rows = await connection.fetch(SELECT_AS_OF.format(column=column), as_of)
        names = {row["bu_id"]: row["display_name"] for row in await connection.fetch(SELECT_NAMES)}
    figures = figures_from_accounts(rows)
    return [
        BalanceRow(name, names.get(name, name), values["spend"], values["revenue"],
                   int(values["tokens_consumed"]), int(values["tokens_served"]))
        for name, values in sorted(figures.items())
        if bu is None or name == bu
    ]


async def invoices(pool: asyncpg.Pool, settings: Settings, *, bu: str | None, period: str | None) -> list[InvoiceIssued]:
    """Issued invoices, then drafts of the open periods."""
    async with pool.acquire() as connection:
        # The status moves to credited when a later credit note reverses its charges; the content never changes.
        issued = [decode(InvoiceIssued, row["payload"]).model_copy(update={"status": row["status"]})
                  for row in await connection.fetch(SELECT_ISSUED)]
        drafts = []
        for row in await connection.fetch(SELECT_OPEN):
            draft = await draft_invoice(connection, settings, row["payer_bu"], parse(row["period"], settings.timezone))
            if draft is not None:
                drafts.append(draft)
    return [invoice for invoice in issued + drafts
            if (bu is None or invoice.payer_bu == bu) and (period is None or invoice.period == period)]


@dataclass
class ReplayReport:
    events: int
    rebuilt: dict[str, dict[str, Decimal]]
    projected: dict[str, dict[str, Decimal]]
    differences: list[tuple[str, str, Decimal, Decimal]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.differences


READ_BATCH_MAX: Final = 5_000


async def read_priced_topic(bootstrap_servers: str, expected: int, idle_timeout_s: float) -> list[dict]:
    """Every distinct Priced on the topic. Stops once `expected` distinct ids were
    read, or after `idle_timeout_s` without records (end offsets are not trusted)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest", max_partition_fetch_bytes=8 * 1024 * 1024)
    await consumer.start()
    seen: dict[str, dict] = {}
    try:
        partitions = [TopicPartition(TOKENS_PRICED.name, p) for p in sorted(consumer.partitions_for_topic(TOKENS_PRICED.name) or ())]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        last_record = time.monotonic()
        while len(seen) < expected or expected == 0:
            batches = await consumer.getmany(timeout_ms=200, max_records=READ_BATCH_MAX)
            if not batches:
                if time.monotonic() - last_record > idle_timeout_s:
                    break
                continue
            last_record = time.monotonic()
            for records in batches.values():
                for record in records:
                    event = orjson.loads(record.value)
                    seen.setdefault(event["id"], event)
            await asyncio.sleep(0)
    finally:
        await consumer.stop()
    return list(seen.values())


def rebuild(events: list[dict]) -> dict[str, dict[str, Decimal]]:
    """Balances straight from Priced events: its own arithmetic, no ledger code."""
    totals: dict[str, dict[str, Decimal]] = defaultdict(lambda: dict.fromkeys(FIGURES, Decimal(0)))
    for event in events:
        amount = Decimal(event["total_amount"])
        tokens = Decimal(event["total_tokens"])
        totals[event["payer_bu"]]["spend"] += amount
        totals[event["provider_bu"]]["revenue"] += amount
        totals[event["consumer_bu"]]["tokens_consumed"] += tokens
        totals[event["provider_bu"]]["tokens_served"] += tokens
    return totals


def diff(rebuilt: dict[str, dict[str, Decimal]], projected: dict[str, dict[str, Decimal]], bu: str | None) -> list[tuple[str, str, Decimal, Decimal]]:
    names = sorted((set(rebuilt) | set(projected)) if bu is None else {bu})
    zero = dict.fromkeys(FIGURES, Decimal(0))
    return [
        (name, figure, rebuilt.get(name, zero)[figure], projected.get(name, zero)[figure])
        for name in names
        for figure in FIGURES
        if rebuilt.get(name, zero)[figure] != projected.get(name, zero)[figure]
    ]


async def replay_topic(pool: asyncpg.Pool, bootstrap_servers: str, *, bu: str | None, idle_timeout_s: float) -> ReplayReport:
    async with pool.acquire() as connection:
        expected = await connection.fetchval(SELECT_ARCHIVE_COUNT)
        projected = figures_from_accounts(await connection.fetch(SELECT_PROJECTION))
    events = await read_priced_topic(bootstrap_servers, expected, idle_timeout_s)
    rebuilt = rebuild(events)
    return ReplayReport(len(events), rebuilt, projected, diff(rebuilt, projected, bu))
