"""Replay, repricing and restore for auditors, with code of their own.

Nothing here calls the ledger's or pricing's domain code: events are read as
plain JSON (numbers as Decimal), balances are summed and prices recomputed
here, so a bug in the posting or pricing path shows up as a difference
instead of being repeated (docs/architecture.md, "Ledger, replay and audit"). Only
`restore` posts, and it does so through the ledger's own shell on purpose:
it rebuilds a ledger, it does not judge one."""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from typing import Any, Final

import asyncpg
import msgspec
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from tokenhub.contracts.topics import BUDGETS_CONFIGURED, LEDGER_POSTED, TOKENS_PRICED
from tokenhub.services.common.kafka import client_options

FIGURES: Final = ("spend", "revenue", "tokens_consumed", "tokens_served")
ACCOUNT_FIGURES: Final = {"spend": ("money", "spend"), "revenue": ("money", "revenue"),
                          "tokens_consumed": ("tokens", "consumed"), "tokens_served": ("tokens", "served")}
READ_BATCH_MAX: Final = 5_000
"""Records per fetch while reading a topic: a few MB of JSON at most."""
POLL_MS: Final = 200
PROGRESS_EVERY: Final = 10_000
"""Records between two progress reports while reading a topic."""
RESTORE_BATCH_MAX: Final = 1_000
"""Priced per restore transaction: the ledger's own batch size."""
QUANTUM: Final = Decimal("0.000000000001")
MILLION: Final = Decimal(1_000_000)

Progress = Callable[[str, int, int | None], None]
"""(what, done, total or None): how long runs report that they move."""


def _silent(what: str, done: int, total: int | None) -> None:
    return None


def loads(raw: bytes | str) -> dict[str, Any]:
    """JSON with every non-integer number as an exact Decimal."""
    return json.loads(raw, parse_float=Decimal)


def loads_many(raw: bytes | str) -> dict[str, Any]:
    """For reading a whole log: orjson, several times faster than `loads`. It
    would read a float as a float, so every figure taken from such an event goes
    through `exact`, which refuses one (the contract sends amounts as strings)."""
    return orjson.loads(raw)


class NotExact(ValueError):
    """An amount or quantity in the log is not an exact number (a float, say)."""


def exact(value: Any) -> Decimal:
    if isinstance(value, str | int) and not isinstance(value, bool):
        return Decimal(value)
    raise NotExact(f"{value!r} is not an exact amount or quantity")


def moment(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# --- reading topics and archives -------------------------------------------------------

@dataclass(frozen=True)
class TopicRecord:
    partition: int
    offset: int
    key: bytes | None
    value: bytes


async def read_topic(bootstrap_servers: str, topic: str, *, expected: int = 0, idle_timeout_s: float = 3.0,
                     distinct: Callable[[bytes], object] | None = None, progress: Progress = _silent) -> list[TopicRecord]:
    """Every record of `topic`, in partition and offset order. Stops once
    `expected` distinct records (by `distinct`) were read, or after
    `idle_timeout_s` without a record: the broker's end offsets are not trusted."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest", max_partition_fetch_bytes=8 * 1024 * 1024,
                                **client_options())
    await consumer.start()
    records: list[TopicRecord] = []
    seen: set[object] = set()
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not partitions:
            return []
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        last_record = time.monotonic()
        reported = 0
        while expected == 0 or len(seen) < expected:
            batches = await consumer.getmany(timeout_ms=POLL_MS, max_records=READ_BATCH_MAX)
            if not any(batches.values()):
                if time.monotonic() - last_record > idle_timeout_s:
                    break
                continue
            last_record = time.monotonic()
            for partition_records in batches.values():
                for record in partition_records:
                    records.append(TopicRecord(record.partition, record.offset, record.key, record.value))
                    key = distinct(record.value) if distinct else (record.partition, record.offset)
                    if key is not None:
                        seen.add(key)
            if len(records) - reported >= PROGRESS_EVERY:
                reported = len(records)
                progress(f"read {topic}", len(seen), expected or None)
            await asyncio.sleep(0)
    finally:
        await consumer.stop()
    records.sort(key=lambda record: (record.partition, record.offset))
    progress(f"read {topic}", len(seen), expected or None)
    return records


class _EventId(msgspec.Struct):
    id: Any = None


_EVENT_ID_DECODER: Final = msgspec.json.Decoder(_EventId)


def _event_id(value: bytes) -> object:
    """An event's id, read without building the rest of it; the bytes themselves
    for what is not a JSON object."""
    try:
        return _EVENT_ID_DECODER.decode(value).id
    except (msgspec.DecodeError, msgspec.ValidationError):
        return value


async def priced_from_topic(bootstrap_servers: str, expected: int, idle_timeout_s: float,
                            progress: Progress = _silent) -> tuple[list[dict[str, Any]], int]:
    """Distinct Priced on tokens.priced, the first copy of each id kept (the one
    the ledger posted), and how many later copies had other content."""
    records = await read_topic(bootstrap_servers, TOKENS_PRICED.name, expected=expected, idle_timeout_s=idle_timeout_s,
                               distinct=_event_id, progress=progress)
    kept: dict[str, dict[str, Any]] = {}
    conflicts = 0
    for record in records:
        try:
            event = loads_many(record.value)
        except ValueError:
            continue  # the ledger dead-letters what it cannot read; so does replay
        previous = kept.setdefault(event["id"], event)
        if previous is not event and previous != event:
            conflicts += 1
    return list(kept.values()), conflicts


SELECT_PRICED_ARCHIVE: Final = "select payload from ledger.priced_archive"  # sums need no order
SELECT_ARCHIVE_COUNT: Final = "select count(*) from ledger.priced_archive"


class PricedFigures(msgspec.Struct, frozen=True):
    """What balances are rebuilt from, of one Priced. Decoding only these
    fields skips the rest of the event (its lines) without building it, about
    ten times faster than parsing the whole event. The types are the contract's:
    an amount is a string and a Token count an integer, so a float in either is
    refused while decoding."""

    id: str
    event_time: str
    payer_bu: str
    provider_bu: str
    consumer_bu: str
    total_amount: str
    total_tokens: int


_FIGURES_DECODER: Final = msgspec.json.Decoder(PricedFigures)


def figures(event: Mapping[str, Any]) -> PricedFigures:
    """The figures of an event already parsed whole (from a topic, say); `rebuild` checks them with `exact`."""
    return PricedFigures(event["id"], event["event_time"], event["payer_bu"], event["provider_bu"], event["consumer_bu"],
                         event["total_amount"], event["total_tokens"])


class NotReadable(ValueError):
    """An archived event is not JSON, or its figures are missing or of the wrong type."""


async def priced_from_archive(connection: asyncpg.Connection) -> list[PricedFigures]:
    try:
        return [_FIGURES_DECODER.decode(row["payload"]) for row in await connection.fetch(SELECT_PRICED_ARCHIVE)]
    except (msgspec.DecodeError, msgspec.ValidationError) as error:
        raise NotReadable(f"an archived Priced cannot be read: {error}") from None


async def priced_events_from_archive(connection: asyncpg.Connection) -> list[dict[str, Any]]:
    """Whole events, for repricing, which needs their lines and causes."""
    return [loads_many(row["payload"]) for row in await connection.fetch(SELECT_PRICED_ARCHIVE)]


# --- rebuilding balances -------------------------------------------------------------

Balances = dict[str, dict[str, Decimal]]


def _zero() -> dict[str, Decimal]:
    return dict.fromkeys(FIGURES, Decimal(0))


def rebuild(events: Iterable[PricedFigures | Mapping[str, Any]], as_of: datetime | None = None,
            amounts: dict[str, Decimal] | None = None) -> Balances:
    """Balances straight from Priced events: spend of the payer and revenue of
    the provider; Tokens consumed by the consumer and served by the provider.
    `amounts` replaces recorded amounts by recomputed ones (by Priced id)."""
    totals: Balances = defaultdict(_zero)
    for event in events:
        if type(event) is not PricedFigures:
            event = figures(event)
        if as_of is not None and moment(event.event_time) > as_of:
            continue
        amount = amounts[event.id] if amounts and event.id in amounts else exact(event.total_amount)
        tokens = exact(event.total_tokens)
        totals[event.payer_bu]["spend"] += amount
        totals[event.provider_bu]["revenue"] += amount
        totals[event.consumer_bu]["tokens_consumed"] += tokens
        totals[event.provider_bu]["tokens_served"] += tokens
    return dict(totals)


SELECT_PROJECTION: Final = "select ledger, account, debit_total, credit_total from ledger.balances"
SELECT_JOURNAL_AS_OF: Final = """
select p.ledger, p.account, sum(p.debit) as debit_total, sum(p.credit) as credit_total
from ledger.postings p join ledger.entries e using (entry_id)
where e.event_time <= $1
group by p.ledger, p.account
"""


def figures_of(rows: Iterable[asyncpg.Record | dict[str, Any]]) -> Balances:
    """Per BU from account totals: spend and consumed are debit balances,
    revenue and served credit balances."""
    by_kind = {kind: figure for figure, (_, kind) in ACCOUNT_FIGURES.items()}
    figures: Balances = defaultdict(_zero)
    for row in rows:
        _, bu, kind = row["account"].split(":", 2)
        debit_balance = row["debit_total"] - row["credit_total"]
        figures[bu][by_kind[kind]] += debit_balance if kind in ("spend", "consumed") else -debit_balance
    return dict(figures)


async def projection(connection: asyncpg.Connection, as_of: datetime | None) -> Balances:
    """The ledger's answer: its balances table now, its journal at a past time."""
    if as_of is None:
        return figures_of(await connection.fetch(SELECT_PROJECTION))
    return figures_of(await connection.fetch(SELECT_JOURNAL_AS_OF, as_of))


@dataclass(frozen=True)
class Difference:
    bu: str
    figure: str
    rebuilt: Decimal
    projected: Decimal

    def __iter__(self):  # noqa: ANN204 - unpacks as (bu, figure, rebuilt, projected)
        return iter((self.bu, self.figure, self.rebuilt, self.projected))

    def row(self, as_of: datetime | None) -> str:
        ledger, kind = ACCOUNT_FIGURES[self.figure]
        if as_of is None:
            return f"ledger.balances ({ledger}, bu:{self.bu}:{kind})"
        return f"journal ({ledger}, bu:{self.bu}:{kind}) as of {as_of.isoformat()}"


def diff(rebuilt: Balances, projected: Balances, bu: str | None = None) -> list[Difference]:
    names = sorted((set(rebuilt) | set(projected)) if bu is None else {bu})
    zero = _zero()
    return [
        Difference(name, figure, rebuilt.get(name, zero)[figure], projected.get(name, zero)[figure])
        for name in names
        for figure in FIGURES
        if rebuilt.get(name, zero)[figure] != projected.get(name, zero)[figure]
    ]


# --- repricing: pricing recomputed with its own arithmetic ----------------------------

class NotRecomputable(ValueError):
    pass


def _fixed(value: Decimal) -> Decimal:
    with localcontext() as context:
        context.prec = 60
        return value.quantize(QUANTUM, rounding=ROUND_HALF_EVEN)


def recompute_lines(consumed: dict[str, Any], book: dict[str, Any]) -> list[tuple[str, int, Decimal, Decimal]]:
    """(class, Tokens, unit price per million, amount) for one consumption under
    one book version: base prices, replaced whole by the highest context tier the
    request's input exceeds, times the payer's factor, each fixed at 12 places
    half-even; amount = Tokens x price / 1e6 at 12 places half-even."""
    entry = next((model for model in book["models"] if model["model"] == consumed["model"]), None)
    if entry is None:
        raise NotRecomputable(f"book {book['book_id']} v{book['version']} has no price for {consumed['model']}")
    prices = dict(entry["unit_prices_per_million"])
    reached = [tier for tier in entry.get("context_tiers", ()) if consumed["request_input_tokens"] > tier["above_input_tokens"]]
    if reached:
        prices.update(max(reached, key=lambda tier: tier["above_input_tokens"])["unit_prices_per_million"])
    factor = next((Decimal(adjustment["factor"]) for adjustment in entry.get("bu_adjustments", ())
                   if adjustment["bu"] == consumed["payer_bu"]), None)
    lines = []
    with localcontext() as context:
        context.prec = 60
        for token_class, tokens in consumed["tokens"].items():
            if token_class not in prices:
                raise NotRecomputable(f"no {token_class} price for {consumed['model']}")
            unit = Decimal(prices[token_class])
            if factor is not None:
                unit = _fixed(unit * factor)
            lines.append((token_class, int(tokens), unit, _fixed(Decimal(tokens) * unit / MILLION)))
    return lines


@dataclass
class Repricing:
    amounts: dict[str, Decimal] = field(default_factory=dict)
    mismatches: list[tuple[str, str, Decimal, Decimal]] = field(default_factory=list)
    """(priced id, kind, recorded, recomputed)"""
    unrecomputable: list[tuple[str, str]] = field(default_factory=list)
    """(priced id, why)"""
    kept: int = 0
    """Period tier adjustments: no TokenConsumed; verify checks them against their invoice."""


SELECT_CONSUMED: Final = "select consumed_id::text as id, payload from pricing.consumed_archive"
SELECT_BOOKS: Final = "select book_id, version, payload from pricing.price_books"


async def load_pricing_inputs(connection: asyncpg.Connection) -> tuple[dict[str, dict], dict[tuple[str, int], dict]]:
    consumed = {row["id"]: loads(row["payload"]) for row in await connection.fetch(SELECT_CONSUMED)}
    books = {(row["book_id"], row["version"]): loads(row["payload"]) for row in await connection.fetch(SELECT_BOOKS)}
    return consumed, books


def reprice(events: list[dict[str, Any]], consumed: dict[str, dict], books: dict[tuple[str, int], dict]) -> Repricing:
    """Every Priced's amount from its TokenConsumed and its book version;
    a reversal is the negative of what it reverses, recomputed the same way."""
    result = Repricing()
    by_id = {event["id"]: event for event in events}

    def recomputed(event: dict[str, Any]) -> Decimal:
        source = consumed.get(event["consumed_id"])
        if source is None:
            raise NotRecomputable(f"no TokenConsumed {event['consumed_id']} in pricing's archive")
        book = books.get((event["book_id"], event["book_version"]))
        if book is None:
            raise NotRecomputable(f"no price book {event['book_id']} v{event['book_version']}")
        return sum((line[3] for line in recompute_lines(source, book)), Decimal(0))

    for event in events:
        kind = event.get("kind", "charge")
        try:
            if kind == "adjustment":
                result.kept += 1
                continue
            if kind == "reversal":
                reversed_event = by_id.get(event.get("corrects_id") or "")
                if reversed_event is None:
                    raise NotRecomputable(f"reverses {event.get('corrects_id')}, which is not in the log")
                amount = -recomputed(reversed_event)
            else:
                amount = recomputed(event)
        except NotRecomputable as why:
            result.unrecomputable.append((event["id"], str(why)))
            continue
        result.amounts[event["id"]] = amount
        if amount != exact(event["total_amount"]):
            result.mismatches.append((event["id"], kind, exact(event["total_amount"]), amount))
    return result


# --- replay ---------------------------------------------------------------------------

@dataclass
class ReplayReport:
    events: int
    rebuilt: Balances
    projected: Balances
    differences: list[Difference] = field(default_factory=list)
    source: str = "topic"
    as_of: datetime | None = None
    bu: str | None = None
    conflicts: int = 0
    repricing: Repricing | None = None
    repriced_differences: list[Difference] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        reprice_ok = self.repricing is None or not (self.repricing.mismatches or self.repricing.unrecomputable
                                                    or self.repriced_differences)
        return not self.differences and reprice_ok


async def replay(pool: asyncpg.Pool, bootstrap_servers: str | None, *, source: str = "topic", bu: str | None = None,
                 as_of: datetime | None = None, with_reprice: bool = False, idle_timeout_s: float = 3.0,
                 progress: Progress = _silent) -> ReplayReport:
    """Rebuild balances from tokens.priced or the ledger's archive, as of an
    event time, and diff them against the ledger's projection."""
    async with pool.acquire() as connection:
        expected = await connection.fetchval(SELECT_ARCHIVE_COUNT)
        projected = await projection(connection, as_of)
        archived: list[PricedFigures] | list[dict[str, Any]] | None = None
        if source == "archive":
            # Repricing needs whole events; rebuilding balances needs their figures only.
            archived = await (priced_events_from_archive if with_reprice else priced_from_archive)(connection)
        inputs = await load_pricing_inputs(connection) if with_reprice else None
    conflicts = 0
    events: list[PricedFigures] | list[dict[str, Any]]
    if archived is not None:
        events = archived
        progress("read ledger.priced_archive", len(events), len(events))
    else:
        if not bootstrap_servers:
            raise ValueError("replay from the topic needs a broker")
        events, conflicts = await priced_from_topic(bootstrap_servers, expected, idle_timeout_s, progress)
    rebuilt = rebuild(events, as_of)
    report = ReplayReport(len(events), rebuilt, projected, diff(rebuilt, projected, bu), source, as_of, bu, conflicts)
    if inputs is not None:
        scoped = [event for event in events if bu is None or bu in (event["payer_bu"], event["consumer_bu"], event["provider_bu"])]
        report.repricing = reprice(scoped if bu else events, *inputs)
        repriced = rebuild(events, as_of, report.repricing.amounts)
        report.repriced_differences = diff(repriced, projected, bu)
    return report


async def replay_topic(pool: asyncpg.Pool, bootstrap_servers: str, *, bu: str | None, idle_timeout_s: float,
                       as_of: datetime | None = None) -> ReplayReport:
    """Replay from tokens.priced (kept under this name for the demo and older callers)."""
    return await replay(pool, bootstrap_servers, source="topic", bu=bu, as_of=as_of, idle_timeout_s=idle_timeout_s)


# --- restore ----------------------------------------------------------------------------

SELECT_BUDGET_ARCHIVE: Final = "select payload from ledger.budgets order by set_at, budget_id"
SELECT_ARCHIVE_PLACED: Final = """
select a.payload, e.chain, e.sequence, e.posted_at
from ledger.priced_archive a left join ledger.entries e using (priced_id)
order by a.received_at, a.priced_id
"""
TARGET_EMPTY: Final = "select (select count(*) from ledger.entries) + (select count(*) from ledger.budgets)"
CLEAR_OUTBOX: Final = """
with dropped as (delete from ledger.outbox returning cardinality(topics) as events)
select coalesce(sum(events), 0) from dropped
"""
COPY_OFFSETS_NONE: Final = "delete from ledger.offsets"


@dataclass(frozen=True)
class Placement:
    """Where the ledger being restored posted a Priced: its chain, sequence and posting time."""

    chain: str
    sequence: int
    posted_at: datetime


def _posted_place(value: bytes) -> object:
    try:
        return loads_many(value).get("priced_id")
    except ValueError:
        return None


def placements_from_posted(records: Iterable[TopicRecord]) -> dict[object, Placement]:
    """Priced id -> placement, from ledger.posted (the first copy of each id)."""
    placements: dict[object, Placement] = {}
    for record in records:
        try:
            event = loads_many(record.value)  # ids, sequences and times only: no amounts
            placements.setdefault(event["priced_id"], Placement(event["chain"], int(event["sequence"]), moment(event["posted_at"])))
        except (ValueError, KeyError, TypeError):
            continue  # verify names unreadable ledger.posted records; restore posts those Priced afresh
    return placements


def posting_groups(placed: list[tuple[bytes, Placement | None]], now: datetime,
                   size_max: int) -> list[tuple[datetime, list[bytes]]]:
    """The Priced in the order and batches the original ledger posted them, each
    batch with its posting time, so every chain is rebuilt entry for entry with
    the same sequences and hashes (and matches the heads published and printed
    on invoices). Within a chain the sort key is the running latest posting
    time, so chain order holds even if instances' clocks disagreed. Priced the
    original never posted come last, posted `now`. The sort is stable: of two
    copies of one id the first read stays first."""
    latest: dict[str, datetime] = {}
    keyed: list[tuple[tuple[int, datetime, str, int], datetime, bytes]] = []
    for value, place in sorted(placed, key=lambda item: (item[1].chain, item[1].sequence) if item[1] else ("", 0)):
        if place is None:
            keyed.append(((1, now, "", 0), now, value))
            continue
        latest[place.chain] = max(latest.get(place.chain, place.posted_at), place.posted_at)
        keyed.append(((0, latest[place.chain], place.chain, place.sequence), place.posted_at, value))
    keyed.sort(key=lambda item: item[0])
    groups: list[tuple[datetime, list[bytes]]] = []
    for _, posted_at, value in keyed:
        if groups and groups[-1][0] == posted_at and len(groups[-1][1]) < size_max:
            groups[-1][1].append(value)
        else:
            groups.append((posted_at, [value]))
    return groups


@dataclass(frozen=True)
class RestoreReport:
    priced: int
    posted: int
    duplicates: int
    conflicts: int
    budgets: int
    alerts: int
    outbox_cleared: int


async def restore(source_pool: asyncpg.Pool, target_url: str, bootstrap_servers: str | None, *, source: str,
                  now: datetime, zone: str, idle_timeout_s: float = 3.0, progress: Progress = _silent) -> RestoreReport:
    """Rebuild a ledger into an empty, migrated database by posting every
    archived (or published) Priced, budgets first, in the batches and at the
    posting times of the ledger being restored (its journal, or ledger.posted),
    so the rebuilt chains equal the published ones. The rebuilt outbox is
    dropped: those events were published by the ledger being restored."""
    from tokenhub.infra.migrate import migrate
    from tokenhub.services.common.db import create_pool
    from tokenhub.services.ledger.adapters.store import LedgerUnit
    from tokenhub.services.ledger.handlers import apply_budget_values, post_values

    await migrate(target_url)
    if source == "archive":
        async with source_pool.acquire() as connection:
            placed = [(bytes(row["payload"]), Placement(row["chain"], row["sequence"], row["posted_at"])
                       if row["chain"] is not None else None) for row in await connection.fetch(SELECT_ARCHIVE_PLACED)]
            budget_values = [bytes(row["payload"]) for row in await connection.fetch(SELECT_BUDGET_ARCHIVE)]
    else:
        if not bootstrap_servers:
            raise ValueError("restore from the topics needs a broker")
        async with source_pool.acquire() as connection:
            expected = await connection.fetchval(SELECT_ARCHIVE_COUNT)
        records = await read_topic(bootstrap_servers, TOKENS_PRICED.name, expected=expected,
                                   idle_timeout_s=idle_timeout_s, distinct=_event_id, progress=progress)
        placements = placements_from_posted(await read_topic(
            bootstrap_servers, LEDGER_POSTED.name, expected=expected, idle_timeout_s=idle_timeout_s,
            distinct=_posted_place, progress=progress))
        placed = [(record.value, placements.get(_event_id(record.value))) for record in records]
        budget_values = [record.value for record in await read_topic(bootstrap_servers, BUDGETS_CONFIGURED.name,
                                                                     idle_timeout_s=idle_timeout_s)]
    groups = posting_groups(placed, now, RESTORE_BATCH_MAX)
    priced_count = len(placed)
    target_pool = await create_pool(target_url, size_max=1)
    posted = duplicates = conflicts = alerts = 0
    try:
        async with target_pool.acquire() as target:
            if await target.fetchval(TARGET_EMPTY):
                raise ValueError("the target database already holds a ledger; restore needs an empty one")
            async with target.transaction():
                stored, raised = await apply_budget_values(LedgerUnit(target), budget_values, now=now, zone=zone)
                alerts += len(raised)
            done = 0
            for posted_at, values in groups:
                async with target.transaction():
                    outcome = await post_values(LedgerUnit(target), values, now=posted_at, zone=zone)
                posted += len(outcome.posted)
                duplicates += outcome.duplicates
                conflicts += len(outcome.conflicts)
                alerts += len(outcome.alerts)
                done += len(values)
                if done // PROGRESS_EVERY != (done - len(values)) // PROGRESS_EVERY or done == priced_count:
                    progress("restore", done, priced_count)
            cleared = int(await target.fetchval(CLEAR_OUTBOX))
            await target.execute(COPY_OFFSETS_NONE)
    finally:
        await target_pool.close()
    return RestoreReport(priced_count, posted, duplicates, conflicts, len(stored), alerts, cleared)


# --- statement ---------------------------------------------------------------------------

SELECT_STATEMENT: Final = """
select e.entry_id, e.priced_id, e.kind, e.corrects_id, e.chain, e.sequence, e.payer_bu, e.consumer_bu, e.provider_bu,
       e.app, e.model, e.amount, e.tokens, e.event_time, e.posted_at, e.entry_hash,
       coalesce(sum(p.debit) filter (where p.ledger = 'money'), 0) as money_debit,
       coalesce(sum(p.credit) filter (where p.ledger = 'money'), 0) as money_credit,
       coalesce(sum(p.debit) filter (where p.ledger = 'tokens'), 0) as tokens_debit,
       coalesce(sum(p.credit) filter (where p.ledger = 'tokens'), 0) as tokens_credit
from ledger.entries e join ledger.postings p using (entry_id)
where (e.payer_bu = $1 or e.consumer_bu = $1 or e.provider_bu = $1)
  and e.{column} >= $2 and e.{column} < $3
group by e.entry_id
order by e.{column}, e.chain, e.sequence
limit $4
"""
SELECT_ACCOUNTS_AS_OF: Final = """
select p.ledger, p.account, sum(p.debit) as debit_total, sum(p.credit) as credit_total
from ledger.postings p join ledger.entries e using (entry_id)
where e.{column} < $1 and p.account like $2
group by p.ledger, p.account
"""


class Unbalanced(ValueError):
    """An entry read back does not balance: the journal is damaged."""


@dataclass(frozen=True)
class StatementLine:
    entry_id: str
    priced_id: str
    kind: str
    corrects_id: str | None
    chain: str
    sequence: int
    event_time: datetime
    posted_at: datetime
    payer_bu: str
    consumer_bu: str
    provider_bu: str
    app: str | None
    model: str
    amount: Decimal
    tokens: int
    effect: dict[str, Decimal]
    """What this entry adds to each of the BU's figures."""


@dataclass(frozen=True)
class Statement:
    bu: str
    start: datetime
    end: datetime
    by: str
    opening: dict[str, Decimal]
    lines: list[StatementLine]
    closing: dict[str, Decimal]
    truncated: bool

    @property
    def movements(self) -> dict[str, Decimal]:
        return {figure: sum((line.effect[figure] for line in self.lines), Decimal(0)) for figure in FIGURES}


STATEMENT_LINES_MAX: Final = 100_000
"""Entries on one statement: a month of a large BU; narrow the window for more."""


def _effect(bu: str, row: asyncpg.Record) -> dict[str, Decimal]:
    effect = _zero()
    if row["payer_bu"] == bu:
        effect["spend"] += row["amount"]
    if row["provider_bu"] == bu:
        effect["revenue"] += row["amount"]
        effect["tokens_served"] += row["tokens"]
    if row["consumer_bu"] == bu:
        effect["tokens_consumed"] += row["tokens"]
    return effect


async def statement(pool: asyncpg.Pool, bu: str, start: datetime, end: datetime, by: str = "event-time",
                    limit: int = STATEMENT_LINES_MAX) -> Statement:
    """The entries behind a BU's balance in [start, end), between the balances
    at both ends; each entry's legs are checked to balance as read back."""
    column = "event_time" if by == "event-time" else "posted_at"
    pattern = f"bu:{bu}:%"
    async with pool.acquire() as connection, connection.transaction(isolation="repeatable_read", readonly=True):
        opening = figures_of(await connection.fetch(SELECT_ACCOUNTS_AS_OF.format(column=column), start, pattern)).get(bu, _zero())
        closing = figures_of(await connection.fetch(SELECT_ACCOUNTS_AS_OF.format(column=column), end, pattern)).get(bu, _zero())
        rows = await connection.fetch(SELECT_STATEMENT.format(column=column), bu, start, end, limit + 1)
    lines = []
    for row in rows[:limit]:
        if row["money_debit"] != row["money_credit"] or row["tokens_debit"] != row["tokens_credit"]:
            raise Unbalanced(f"entry {row['entry_id']} (chain {row['chain']} #{row['sequence']}) does not balance")
        lines.append(StatementLine(
            str(row["entry_id"]), str(row["priced_id"]), row["kind"], str(row["corrects_id"]) if row["corrects_id"] else None,
            row["chain"], row["sequence"], row["event_time"], row["posted_at"], row["payer_bu"], row["consumer_bu"],
            row["provider_bu"], row["app"], row["model"], row["amount"], row["tokens"], _effect(bu, row)))
    return Statement(bu, start, end, by, opening, lines, closing, len(rows) > limit)
