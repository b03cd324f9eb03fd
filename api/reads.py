"""What the API reads, in one place: each function answers one question from
the services' schemas through the read-only role, and returns JSON-ready values
(amounts as strings in plain notation, as the CLI's `--json` prints them, so
the two agree to the last digit).

The services' own read queries (`services/<svc>/queries.py`) answer wherever
they can. Read here: what they do not offer yet, each a page at a time by
cursor (the statement, rejected and parked usage, chain heads, settled
months). Nothing here writes."""

from __future__ import annotations

import base64
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Final

import asyncpg
import orjson

from tokenhub.contracts.accounts import account_name
from tokenhub.contracts.money import format_amount
from tokenhub.contracts.events import InvoiceIssued, PriceBookPublished, decode
from tokenhub.contracts.ids import posted_id
from tokenhub.contracts.periods import Period
from tokenhub.contracts.pricebook import BookIndex
from tokenhub.contracts.settlement import SettlementNetted
from tokenhub.contracts.stored import unpack
from tokenhub.infra.settings import Settings
from tokenhub.services.invoicing import queries as invoicing_queries
from tokenhub.services.ledger import queries as ledger_queries
from tokenhub.services.metering import queries as metering_queries
from tokenhub.services.pricing import queries as pricing_queries
from tokenhub.services.invoicing.adapters import store as invoicing_store

FIGURES: Final = ("spend", "revenue", "tokens_consumed", "tokens_served")
STATEMENT_PAGE_MAX: Final = 1_000


def text(value: Decimal) -> str:
    """Plain notation, as the CLI prints amounts."""
    return f"{value:f}"


# --- balances (ledger) ----------------------------------------------------------------

SELECT_ACCOUNTS_BEFORE: Final = """
select legs.ledger, legs.account, sum(legs.debit) as debit_total, sum(legs.credit) as credit_total
from ledger.journal j,
     lateral (values ('money', j.money_debit, j.amount, 0::numeric), ('money', j.money_credit, 0::numeric, j.amount),
                     ('tokens', j.tokens_debit, j.tokens::numeric, 0::numeric),
                     ('tokens', j.tokens_credit, 0::numeric, j.tokens::numeric)) as legs(ledger, account, debit, credit)
where j.{column} < $1
group by legs.ledger, legs.account
having legs.account like $2
"""


def _zero() -> dict[str, Decimal]:
    return dict.fromkeys(FIGURES, Decimal(0))


def figures_from_accounts(rows: list[asyncpg.Record]) -> dict[str, dict[str, Decimal]]:
    """Per BU: spend and consumed are debit balances, revenue and served credit balances."""
    figures: dict[str, dict[str, Decimal]] = defaultdict(_zero)
    for row in rows:
        _, bu, kind = row["account"].split(":", 2)
        debit_balance = row["debit_total"] - row["credit_total"]
        name = {"spend": "spend", "revenue": "revenue", "consumed": "tokens_consumed", "served": "tokens_served"}[kind]
        figures[bu][name] += debit_balance if kind in ("spend", "consumed") else -debit_balance
    return figures


def _column(by: str) -> str:
    return "event_time" if by == "event-time" else "posted_at"


async def balances(pool: asyncpg.Pool, *, as_of: datetime | None, by: str, bu: str | None = None) -> list[dict[str, Any]]:
    """Balances per BU (or one registered BU's, zero when nothing is posted), as
    `tokenhub balance --json` shows them: the ledger's own query."""
    rows = await ledger_queries.balances(pool, names=await metering_queries.display_names(pool), bu=bu, as_of=as_of,
                                         by=by)  # type: ignore[arg-type]
    return [{"bu": row.bu, "display_name": row.display_name, "spend": text(row.spend), "revenue": text(row.revenue),
             "net": text(row.net), "tokens_consumed": row.tokens_consumed, "tokens_served": row.tokens_served} for row in rows]


# --- statements (ledger) ----------------------------------------------------------------

SELECT_STATEMENT_PAGE: Final = """
select priced_id, chain, sequence, event_time, posted_at, money_debit, money_credit, amount, tokens_debit, tokens_credit,
       tokens, priced, overage
from ledger.journal
where (money_debit = any($1::text[]) or money_credit = any($1::text[])
       or tokens_debit = any($1::text[]) or tokens_credit = any($1::text[]))
  and {column} >= $2 and {column} < $3
  and ($4::timestamptz is null or ({column}, chain, sequence) > ($4, $5, $6))
order by {column}, chain, sequence
limit $7
"""


class Unbalanced(ValueError):
    """An entry read back does not move what its Priced says: the journal is damaged."""


def _entry(bu: str, row: asyncpg.Record) -> dict[str, Any]:
    """A statement entry from a journal row: its movements from the row's
    transfers (a reversal moves the other way round), checked against its Priced."""
    priced = orjson.loads(unpack(row["priced"]))
    spend = f"bu:{priced['payer_bu']}:spend"
    amount = row["amount"] if row["money_debit"] == spend else -row["amount"]
    tokens = row["tokens"] if row["tokens_debit"] == f"bu:{priced['consumer_bu']}:consumed" else -row["tokens"]
    if spend not in (row["money_debit"], row["money_credit"]) or amount != Decimal(priced["total_amount"]) \
            or tokens != priced["total_tokens"]:
        raise Unbalanced(f"entry of Priced {row['priced_id']} (chain {row['chain']} #{row['sequence']}) "
                         "does not move what its Priced says")
    effect = _zero()
    if priced["payer_bu"] == bu:
        effect["spend"] += amount
    if priced["provider_bu"] == bu:
        effect["revenue"] += amount
        effect["tokens_served"] += tokens
    if priced["consumer_bu"] == bu:
        effect["tokens_consumed"] += tokens
    return {
        "entry_id": str(posted_id(priced["id"])), "priced_id": priced["id"], "kind": priced.get("kind", "charge"),
        "corrects_id": priced.get("corrects_id"), "chain": row["chain"], "sequence": row["sequence"],
        "event_time": row["event_time"].isoformat(), "posted_at": row["posted_at"].isoformat(),
        "payer_bu": priced["payer_bu"], "consumer_bu": priced["consumer_bu"], "provider_bu": priced["provider_bu"],
        "app": priced.get("app"), "model": priced["model"], "amount": text(amount), "tokens": tokens,
        "effect": _figures_text(effect), "overage": row["overage"]}


def _figures_text(values: dict[str, Decimal]) -> dict[str, str]:
    return {figure: text(values[figure]) for figure in FIGURES}


@dataclass(frozen=True)
class StatementPage:
    opening: dict[str, str]
    closing: dict[str, str]
    entries: list[dict[str, Any]]
    last_key: tuple[datetime, str, int] | None
    more: bool


async def statement(pool: asyncpg.Pool, bu: str, start: datetime, end: datetime, by: str,
                    after: tuple[datetime, str, int] | None, limit: int) -> StatementPage:
    """A page of the entries behind a BU's balance in [start, end), with the
    balances at both ends of the whole window; each entry's movements are
    checked against its Priced as read back."""
    column = _column(by)
    pattern = f"bu:{bu}:%"
    moment, chain, sequence = after if after else (None, "", 0)
    async with pool.acquire() as connection, connection.transaction(isolation="repeatable_read", readonly=True):
        opening = figures_from_accounts(await connection.fetch(SELECT_ACCOUNTS_BEFORE.format(column=column), start, pattern)).get(bu, _zero())
        closing = figures_from_accounts(await connection.fetch(SELECT_ACCOUNTS_BEFORE.format(column=column), end, pattern)).get(bu, _zero())
        accounts = [f"bu:{bu}:{kind}" for kind in ("spend", "revenue", "consumed", "served")]
        rows = await connection.fetch(SELECT_STATEMENT_PAGE.format(column=column), accounts, start, end, moment, chain,
                                      sequence, limit + 1)
    entries = [_entry(bu, row) for row in rows[:limit]]
    last = rows[:limit][-1] if rows[:limit] else None
    return StatementPage(_figures_text(opening), _figures_text(closing), entries,
                         (last[column], last["chain"], last["sequence"]) if last is not None else None, len(rows) > limit)


# --- daily spend (ledger) ------------------------------------------------------------------

SELECT_DAILY_SPEND: Final = """
select (event_time at time zone $2)::date as day,
       coalesce(sum(amount) filter (where money_debit = $1), 0) - coalesce(sum(amount) filter (where money_credit = $1), 0) as spend
from ledger.journal
where (money_debit = $1 or money_credit = $1) and event_time >= $3 and event_time < $4
group by 1 order by 1
"""


async def daily_spend(pool: asyncpg.Pool, payer: str, zone: str, month: Period) -> list[dict[str, str]]:
    """A payer's spend per day of `month` (by event time, days in the company zone), days without spend left out."""
    async with pool.acquire() as connection:
        rows = await connection.fetch(SELECT_DAILY_SPEND, account_name(payer, "spend"), zone, month.start, month.end)
    return [{"day": row["day"].isoformat(), "spend": text(row["spend"])} for row in rows]


# --- chain heads (ledger) -----------------------------------------------------------------

SELECT_CHAINS: Final = "select chain, sequence, head_hash from ledger.chains order by chain"


async def chain_heads(pool: asyncpg.Pool) -> list[dict[str, Any]]:
    async with pool.acquire() as connection:
        return [{"chain": row["chain"], "sequence": row["sequence"], "head_hash": row["head_hash"]}
                for row in await connection.fetch(SELECT_CHAINS)]


# --- budgets (ledger) ---------------------------------------------------------------------

async def budgets(pool: asyncpg.Pool, month: str) -> list[dict[str, Any]]:
    """Each payer's budget in force for `month` per scope, with month-to-date
    spend by event time, thresholds crossed and the quota state, as
    `tokenhub budget show --json` shows them: the ledger's own query."""
    rows = []
    for status in await ledger_queries.budgets(pool, month=month):
        budget = status.budget
        rows.append({
            "payer_bu": budget.payer_bu, "consumer_bu": status.consumer_bu, "period": status.month,
            "budget_id": str(budget.id), "amount": text(budget.amount), "currency": budget.currency,
            "thresholds_percent": [text(threshold) for threshold in budget.thresholds_percent],
            "hard_limit": text(budget.hard_limit) if budget.hard_limit is not None else None,
            "spent": text(status.spent), "used_percent": text(status.used_percent),
            "thresholds_crossed": [text(threshold.normalize()) for threshold in status.thresholds_crossed],
            "quota_exhausted": status.quota_exhausted,
            "actor": budget.actor, "reason": budget.reason, "set_at": budget.set_at.isoformat(), "period_from": budget.period_from,
        })
    return rows


# --- spend month to date (invoicing) --------------------------------------------------------

def tier_reached(total_tokens: int, book: PriceBookPublished | None, model: str) -> dict[str, Any] | None:
    """Which of the model's period tiers the running total falls in (tiers cover (from, to])."""
    schedule = book.price_for(model).period_tiers if book is not None and book.price_for(model) else None
    if schedule is None:
        return None
    lower = 0
    for index, tier in enumerate(schedule.tiers):
        if tier.up_to_tokens is None or total_tokens <= tier.up_to_tokens:
            return {"mode": schedule.mode, "tier": index + 1, "tiers": len(schedule.tiers), "from_tokens": lower,
                    "up_to_tokens": tier.up_to_tokens, "unit_price_per_million": text(tier.unit_price_per_million),
                    "flat_fee": text(tier.flat_fee)}
        lower = tier.up_to_tokens
    return None


def forecast(spent: Decimal, month: Period, now: datetime) -> str | None:
    """Spend at the month's end if it goes on at the pace so far (by elapsed
    time); None outside the month. Fixed at 12 places, half-even."""
    if not month.start < now < month.end:
        return None
    elapsed = Decimal((now - month.start).total_seconds())
    whole = Decimal((month.end - month.start).total_seconds())
    return format_amount(spent * whole / elapsed)


async def spend(pool: asyncpg.Pool, settings: Settings, payer: str, month: Period,
                now: datetime | None = None) -> dict[str, Any]:
    """Month to date: what the payer spends by consumer, app, model, class and
    modality, and the period tier its running total has reached; the lines and
    tiers as `tokenhub spend --json` shows them."""
    report = await invoicing_queries.spend(pool, settings, payer, month)
    rows, tiers, total = report.rows, report.period_tiers, report.total
    modalities = {row["model_id"]: row["modality"] for row in await metering_queries.models(pool)}
    async with pool.acquire() as connection:
        books = BookIndex.of(decode(PriceBookPublished, row["payload"])
                             for row in await connection.fetch(invoicing_store.SELECT_BOOKS))
    lines = [{**row, "amount": text(row["amount"]), "overage": text(row["overage"]),
              "modality": modalities.get(row["model"], "unknown")} for row in rows]
    by: dict[str, list[dict[str, Any]]] = {}
    for dimension, key in (("consumer", "consumer_bu"), ("app", "app"), ("model", "model"), ("class", "token_class"),
                           ("modality", "modality")):
        sums: dict[str, list[Decimal]] = defaultdict(lambda: [Decimal(0), Decimal(0)])
        for row, line in zip(rows, lines, strict=True):
            sums[line[key]][0] += row["tokens"]
            sums[line[key]][1] += row["amount"]
        by[dimension] = [{"key": name, "tokens": int(tokens), "amount": text(amount)} for name, (tokens, amount) in sorted(sums.items())]
    last_instant = month.end
    return {
        "bu": payer, "period": month.name, "currency": settings.currency, "spend": text(total),
        "overage": text(report.overage),
        "forecast_month_end": forecast(total, month, now) if now is not None else None, "lines": lines, "by": by,
        "period_tiers": [{"model": line.model, "tokens": line.tokens, "charge": text(line.amount),
                          "reached": tier_reached(line.tokens, books.in_force(line.model, last_instant), line.model)}
                         for line in tiers],
    }


# --- invoices and settlements (invoicing) ------------------------------------------------------

async def invoices(pool: asyncpg.Pool, settings: Settings) -> list[InvoiceIssued]:
    """Issued invoices, then drafts of the open periods."""
    return await invoicing_queries.invoices(pool, settings, bu=None, period=None)


async def settlement(pool: asyncpg.Pool, settings: Settings, month: Period) -> tuple[SettlementNetted, bool]:
    """The issued settlement of a closed month, or a provisional one from what is invoiced so far."""
    return await invoicing_queries.settlement(pool, settings, month)


async def settled_months(pool: asyncpg.Pool) -> list[dict[str, Any]]:
    """Each settled month once, at its latest revision (the one that stands)."""
    return [{"period": row["period"], "settled_at": row["settled_at"].isoformat(), "revision": row["revision"]}
            for row in await invoicing_queries.settled_months(pool)]


# --- rejected usage (metering) --------------------------------------------------------------

SELECT_REJECTED_PAGE: Final = """
select rejected_id, reason_code, message, usage_source, usage_id, topic, received_at, resubmitted_at, resubmitted_by,
       length(original_bytes) as size, api.usage_consumer(original_bytes) as consumer_bu
from metering.rejected_usage
where ($1::text is null or reason_code = $1) and ($2::text is null or usage_source = $2)
  and ($3::timestamptz is null or received_at >= $3) and ($4::timestamptz is null or received_at < $4)
  and ($5::text is null or api.usage_consumer(original_bytes) = $5)
  and ($6::timestamptz is null or (received_at, rejected_id) > ($6, $7::uuid))
order by received_at, rejected_id
limit $8
"""
SELECT_REJECTED_ONE: Final = """
select rejected_id, reason_code, message, usage_source, usage_id, topic, received_at, resubmitted_at, resubmitted_by,
       length(original_bytes) as size, api.usage_consumer(original_bytes) as consumer_bu, original_bytes
from metering.rejected_usage where rejected_id = $1
"""
SELECT_REJECTED_CONSUMERS: Final = """
select rejected_id::text as id, api.usage_consumer(original_bytes) as consumer_bu from metering.rejected_usage
where rejected_id = any($1::uuid[])
"""


def _rejected(row: asyncpg.Record) -> dict[str, Any]:
    return {"rejected_id": str(row["rejected_id"]), "reason_code": row["reason_code"], "message": row["message"],
            "usage_source": row["usage_source"], "usage_id": row["usage_id"], "consumer_bu": row["consumer_bu"],
            "topic": row["topic"], "received_at": row["received_at"].isoformat(),
            "resubmitted_at": row["resubmitted_at"].isoformat() if row["resubmitted_at"] else None,
            "resubmitted_by": row["resubmitted_by"], "size": row["size"]}


async def rejected(pool: asyncpg.Pool, *, reason_code: str | None, source: str | None, start: datetime | None,
                   end: datetime | None, consumer_bu: str | None, after: tuple[datetime, uuid.UUID] | None,
                   limit: int) -> list[dict[str, Any]]:
    moment, rejected_id = after if after else (None, uuid.UUID(int=0))
    async with pool.acquire() as connection:
        rows = await connection.fetch(SELECT_REJECTED_PAGE, reason_code, source, start, end, consumer_bu, moment,
                                      rejected_id, limit)
    return [{**_rejected(row), "_key": (row["received_at"], row["rejected_id"])} for row in rows]


async def rejected_one(pool: asyncpg.Pool, rejected_id: uuid.UUID) -> dict[str, Any] | None:
    async with pool.acquire() as connection:
        row = await connection.fetchrow(SELECT_REJECTED_ONE, rejected_id)
    if row is None:
        return None
    original = bytes(row["original_bytes"])
    try:
        shown = {"original": original.decode(), "original_base64": None}
    except UnicodeDecodeError:
        shown = {"original": None, "original_base64": base64.b64encode(original).decode()}
    return {**_rejected(row), **shown}


async def rejected_consumers(pool: asyncpg.Pool, rejected_ids: list[str]) -> dict[str, str | None]:
    ids = []
    for rejected_id in rejected_ids:
        try:
            ids.append(uuid.UUID(rejected_id))
        except ValueError:
            continue
    async with pool.acquire() as connection:
        return {row["id"]: row["consumer_bu"] for row in await connection.fetch(SELECT_REJECTED_CONSUMERS, ids)}


# --- parked consumption (pricing) ------------------------------------------------------------

SELECT_PARKED_PAGE: Final = """
select consumed_id, model, event_time, reason, parked_at, consumed ->> 'payer_bu' as payer_bu, consumed
from (select parked.*, convert_from(parked.payload, 'UTF8')::jsonb as consumed from pricing.parked parked) parked
where ($1::text is null or consumed ->> 'payer_bu' = $1) and ($2::text is null or model = $2)
  and ($3::text is null or consumed ->> 'payer_bu' = $3 or consumed ->> 'consumer_bu' = $3
       or consumed ->> 'provider_bu' = $3)
  and ($4::timestamptz is null or (event_time, consumed_id) > ($4, $5::uuid))
order by event_time, consumed_id
limit $6
"""


async def parked(pool: asyncpg.Pool, *, payer: str | None, model: str | None, visible_to: str | None,
                 after: tuple[datetime, uuid.UUID] | None, limit: int) -> list[dict[str, Any]]:
    moment, consumed_id = after if after else (None, uuid.UUID(int=0))
    async with pool.acquire() as connection:
        rows = await connection.fetch(SELECT_PARKED_PAGE, payer, model, visible_to, moment, consumed_id, limit)
    return [{"consumed_id": str(row["consumed_id"]), "payer_bu": row["payer_bu"],
             "consumer_bu": row["consumed"].get("consumer_bu"), "provider_bu": row["consumed"].get("provider_bu"),
             "model": row["model"], "tokens": row["consumed"].get("tokens", {}), "event_time": row["event_time"].isoformat(),
             "parked_at": row["parked_at"].isoformat(), "reason": row["reason"],
             "_key": (row["event_time"], row["consumed_id"])} for row in rows]


# --- billing cycles (invoicing) ------------------------------------------------------------------

SELECT_BILLING_CYCLES: Final = "select payer_bu, kind as every, actor, reason, changed_at from invoicing.billing_cycles order by payer_bu"


async def billing_cycles(pool: asyncpg.Pool) -> list[dict[str, Any]]:
    """Every payer's billing cycle that was set (the others are billed monthly), who set it and why."""
    async with pool.acquire() as connection:
        return [dict(row) for row in await connection.fetch(SELECT_BILLING_CYCLES)]


# --- price books (pricing) ----------------------------------------------------------------------

async def price_books(pool: asyncpg.Pool) -> list[PriceBookPublished]:
    return await pricing_queries.price_books(pool)


def book_for(book: PriceBookPublished, bu: str | None) -> dict[str, Any]:
    """A book as JSON; for a BU's reader, only its own price adjustments."""
    document = orjson.loads(book.model_dump_json())
    if bu is not None:
        for model in document["models"]:
            model["bu_adjustments"] = [adjustment for adjustment in model.get("bu_adjustments", ()) if adjustment["bu"] == bu]
    return document


# --- the registry (metering) ---------------------------------------------------------------------

REGISTRY_QUERIES: Final = {"business-units": metering_queries.business_units, "models": metering_queries.models,
                           "funding-agreements": metering_queries.funding_agreements,
                           "conversion-tables": metering_queries.conversion_tables}


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):  # asyncpg's own UUID type, which orjson does not know
        return str(value)
    if isinstance(value, Decimal):
        return text(value)
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {name: _plain(item) for name, item in value.items()}
    return value


async def registry(pool: asyncpg.Pool, section: str) -> list[dict[str, Any]]:
    return [{name: _plain(value) for name, value in dict(row).items()} for row in await REGISTRY_QUERIES[section](pool)]
