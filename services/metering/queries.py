"""Metering's read side, for the CLI, the HTTP API and pages: the registry
(business units, models, funding agreements, conversion tables), API keys,
rejected usage, and Tokens consumed by class and by funding share (from
metering's record of every TokenConsumed). Reads metering's own schema only. Rows are plain dicts with
the columns' names (TypedDicts below), so they render as JSON as they are."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Final, Literal, TypedDict

import asyncpg
import msgspec
from aiokafka import AIOKafkaConsumer, TopicPartition

from tokenhub.contracts.registry import ConversionTable
from tokenhub.contracts.stored import unpack
from tokenhub.contracts.topics import USAGE_REPORTED
from tokenhub.services.metering.adapters.store import load_registry
from tokenhub.services.metering.domain import header_value
from tokenhub.services.metering.registry import Registry

REJECTED_SHOWN_MAX: Final = 1_000
"""Rejected usage listed at once: a person reads a page, a tool narrows by reason."""

SELECT_NAMES: Final = "select bu_id, display_name from metering.business_units"
SELECT_BUSINESS_UNITS: Final = """
select bu_id, display_name, parent_group, cost_centre, active, actor, reason, changed_at
from metering.business_units order by bu_id
"""
SELECT_MODELS: Final = """
select model_id, provider_bu, display_name, modality, token_classes, active, actor, reason, changed_at
from metering.models order by model_id
"""
SELECT_FUNDING: Final = """
select agreement_id, consumer_bu, app, model_pattern, payers, effective_from, effective_to, actor, reason, changed_at
from metering.funding_agreements order by consumer_bu, agreement_id
"""
SELECT_CONVERSION: Final = """
select version, effective_from, rules, actor, reason, published_at from metering.conversion_tables order by version
"""
SELECT_KEYS: Final = """
select key_id, sources, actor, reason, created_at, revoked_at from metering.api_keys order by created_at
"""
REJECTED_COLUMNS: Final = """
select rejected_id, reason_code, message, usage_source, usage_id, topic, received_at, resubmitted_at, resubmitted_by,
       length(original_bytes) as size
from metering.rejected_usage
"""
SELECT_REJECTED_AT: Final = "select received_at from metering.rejected_usage where rejected_id = $1"
STATS_SOURCES_MAX: Final = 50
"""Sources counted one by one in `rejected stats`; the rest are summed, so a
flood from many sources still fits a screen."""
SELECT_REJECTED_BY_REASON: Final = """
select reason_code, count(*) as rejected from metering.rejected_usage group by reason_code
order by rejected desc, reason_code
"""
SELECT_REJECTED_BY_SOURCE: Final = """
select usage_source, count(*) as rejected from metering.rejected_usage group by usage_source
order by rejected desc, usage_source nulls last
"""
SELECT_REJECTED_ONE: Final = "select original_bytes, headers, reason_code from metering.rejected_usage where rejected_id = $1"
SELECT_ACCEPTED_KEYS: Final = """
select usage_source, usage_id, encode(content_sha256, 'hex') as content_sha256 from metering.consumed
where (usage_source, usage_id) in (select * from unnest($1::text[], $2::text[])) and content_sha256 is not null
"""
SELECT_REJECTIONS_OF: Final = """
select rejected_id, usage_source, usage_id, original_sha256, reason_code, message from metering.rejected_usage
where (usage_source, usage_id) in (select * from unnest($1::text[], $2::text[])) or original_sha256 = any($3::text[])
order by received_at, rejected_id
"""
SELECT_OUTCOMES: Final = """
select change_id, null as reason from metering.registry_changes where change_id = any($1::uuid[])
union all
select change_id, reason from metering.registry_refused where change_id = any($1::uuid[])
"""
METERING_GROUP: Final = "metering"
"""The consumer group metering reads usage.reported in (services/metering/app.py)."""
ANSWERS_ASKED_MAX: Final = 100_000
"""Usage events one question may ask about: a file `tokenhub emit` sends at once."""


class BusinessUnitRow(TypedDict):
    bu_id: str
    display_name: str
    parent_group: str | None
    cost_centre: str | None
    active: bool
    actor: str
    reason: str
    changed_at: datetime


class ModelRow(TypedDict):
    model_id: str
    provider_bu: str
    display_name: str | None
    modality: str
    token_classes: list[str]
    active: bool
    actor: str
    reason: str
    changed_at: datetime


class FundingRow(TypedDict):
    agreement_id: str
    consumer_bu: str
    app: str | None
    model_pattern: str | None
    payers: list[dict[str, Any]]
    """[{"bu": ..., "percent": ...}]"""
    effective_from: datetime
    effective_to: datetime | None
    actor: str
    reason: str
    changed_at: datetime


class ConversionTableRow(TypedDict):
    version: int
    effective_from: datetime
    rules: list[dict[str, Any]]
    """[{"unit": ..., "token_class": ..., "tokens_per_unit": ...}]"""
    actor: str
    reason: str
    published_at: datetime


class ApiKeyRow(TypedDict):
    key_id: str
    sources: list[str]
    actor: str
    reason: str
    created_at: datetime
    revoked_at: datetime | None


class RejectedRow(TypedDict):
    rejected_id: uuid.UUID
    reason_code: str
    message: str
    usage_source: str | None
    usage_id: str | None
    topic: str
    received_at: datetime
    resubmitted_at: datetime | None
    resubmitted_by: str | None
    size: int
    """Bytes of the original."""


async def _rows(pool: asyncpg.Pool, query: str, *parameters: Any) -> list[Any]:
    async with pool.acquire() as connection:
        return [dict(row) for row in await connection.fetch(query, *parameters)]


@dataclass(frozen=True)
class Refused:
    """A registry change metering refused, and why."""

    reason: str


Outcome = Literal["applied"] | Refused | None
"""Metering's answer to a registry change: applied, refused with a reason, or none yet."""


async def registry_outcomes(pool: asyncpg.Pool, change_ids: list[uuid.UUID]) -> list[Outcome]:
    """What metering made of each of these registry changes, in their order."""
    async with pool.acquire() as connection:
        rows = {row["change_id"]: row["reason"] for row in await connection.fetch(SELECT_OUTCOMES, change_ids)}
    return [None if change_id not in rows else "applied" if rows[change_id] is None else Refused(rows[change_id])
            for change_id in change_ids]


async def registry(pool: asyncpg.Pool) -> Registry:
    """The registry as metering validates changes against it (services/metering/registry.py)."""
    async with pool.acquire() as connection:
        return await load_registry(connection)


async def display_names(pool: asyncpg.Pool) -> dict[str, str]:
    """Business units' display names by slug."""
    async with pool.acquire() as connection:
        return {row["bu_id"]: row["display_name"] for row in await connection.fetch(SELECT_NAMES)}


async def business_units(pool: asyncpg.Pool) -> list[BusinessUnitRow]:
    """Every registered business unit, by slug."""
    return await _rows(pool, SELECT_BUSINESS_UNITS)


async def models(pool: asyncpg.Pool) -> list[ModelRow]:
    """Every registered model, tool and agent, by id."""
    return await _rows(pool, SELECT_MODELS)


async def funding_agreements(pool: asyncpg.Pool) -> list[FundingRow]:
    """Every funding agreement, by consumer and id."""
    return await _rows(pool, SELECT_FUNDING)


async def conversion_tables(pool: asyncpg.Pool) -> list[ConversionTableRow]:
    """Every conversion table version, oldest first."""
    return await _rows(pool, SELECT_CONVERSION)


async def conversion_table_at(pool: asyncpg.Pool, moment: datetime) -> ConversionTable | None:
    """The conversion table in force at `moment`: the latest effective by then."""
    in_force = [ConversionTable(version=row["version"], effective_from=row["effective_from"], rules=row["rules"])
                for row in await conversion_tables(pool) if row["effective_from"] <= moment]
    return max(in_force, key=lambda table: (table.effective_from, table.version), default=None)


async def api_keys(pool: asyncpg.Pool) -> list[ApiKeyRow]:
    """Every API key for HTTP ingest (never the key itself), oldest first."""
    return await _rows(pool, SELECT_KEYS)


@dataclass(frozen=True)
class RejectedPage:
    """One page of rejected usage in order of arrival, how many match in all, and
    the id to pass as `after` for the next page (None on the last page)."""

    rows: list[RejectedRow]
    total: int
    next_after: uuid.UUID | None


class UnknownRejected(LookupError):
    """`after` names no stored rejection."""


async def rejected_page(pool: asyncpg.Pool, *, reason_code: str | None = None, source: str | None = None,
                        after: uuid.UUID | None = None, limit: int = REJECTED_SHOWN_MAX) -> RejectedPage:
    """Rejected usage oldest first, `limit` at a time after the rejection `after`,
    only of `reason_code` and of `source` when given. Pages follow the indexes
    rejected_usage_received and rejected_usage_reason (migration 0019)."""
    if not 1 <= limit <= REJECTED_SHOWN_MAX:
        raise ValueError(f"a page holds 1 to {REJECTED_SHOWN_MAX} rows, not {limit}")
    conditions: list[str] = []
    parameters: list[Any] = []
    for column, value in (("reason_code", reason_code), ("usage_source", source)):
        if value is not None:
            parameters.append(value)
            conditions.append(f"{column} = ${len(parameters)}")
    counted = list(parameters)
    count_query = "select count(*) from metering.rejected_usage" + (" where " + " and ".join(conditions) if conditions else "")
    async with pool.acquire() as connection:
        if after is not None:
            received_at = await connection.fetchval(SELECT_REJECTED_AT, after)
            if received_at is None:
                raise UnknownRejected(f"no rejected usage {after}")
            parameters += [received_at, after]
            conditions.append(f"(received_at, rejected_id) > (${len(parameters) - 1}, ${len(parameters)})")
        parameters.append(limit + 1)  # one more than shown tells whether a next page exists
        query = (REJECTED_COLUMNS + (" where " + " and ".join(conditions) if conditions else "")
                 + f" order by received_at, rejected_id limit ${len(parameters)}")
        rows = [dict(row) for row in await connection.fetch(query, *parameters)]
        total = await connection.fetchval(count_query, *counted)
    shown = rows[:limit]
    return RejectedPage(shown, total, shown[-1]["rejected_id"] if len(rows) > limit else None)  # type: ignore[arg-type]


@dataclass(frozen=True)
class RejectedStats:
    """How much usage was rejected, by reason and by source (the busiest
    STATS_SOURCES_MAX sources one by one, the rest together as `others`)."""

    total: int
    by_reason: dict[str, int]
    by_source: dict[str, int]
    others: int


async def rejected_stats(pool: asyncpg.Pool) -> RejectedStats:
    async with pool.acquire() as connection:
        by_reason = {row["reason_code"]: row["rejected"] for row in await connection.fetch(SELECT_REJECTED_BY_REASON)}
        sources = await connection.fetch(SELECT_REJECTED_BY_SOURCE)
    shown = {row["usage_source"] or "(unknown)": row["rejected"] for row in sources[:STATS_SOURCES_MAX]}
    return RejectedStats(sum(by_reason.values()), by_reason, shown, sum(row["rejected"] for row in sources[STATS_SOURCES_MAX:]))


@dataclass(frozen=True)
class RejectedOriginal:
    """A rejected message as it was received: its bytes and its headers."""

    value: bytes
    headers: list[tuple[str, bytes]]
    reason_code: str


async def rejected_original(pool: asyncpg.Pool, rejected_id: uuid.UUID) -> RejectedOriginal | None:
    """The original bytes and headers of a rejected message, headers decoded
    back to the bytes received (non-UTF-8 ones are stored as base64)."""
    async with pool.acquire() as connection:
        row = await connection.fetchrow(SELECT_REJECTED_ONE, rejected_id)
    if row is None:
        return None
    headers = [(name, header_value(text)) for name, text in (row["headers"] or {}).items()]
    return RejectedOriginal(bytes(row["original_bytes"]), headers, row["reason_code"])


# The payloads are stored packed (contracts.stored), so PostgreSQL cannot parse
# them: the two figures below are summed here over metering's whole record,
# read a cursor page at a time.
SELECT_CONSUMED_PAYLOADS: Final = "select payload from metering.consumed"
CONSUMED_PREFETCH: Final = 5_000
"""Rows a cursor holds at a time: bounds memory whatever the record's size."""


class _Consumption(msgspec.Struct, frozen=True):
    """The fields of a TokenConsumed these figures sum; the rest is skipped undecoded."""

    model: str
    tokens: dict[str, int]
    consumer_bu: str
    payer_bu: str
    share_percent: str
    funding_agreement_id: str | None = None


_CONSUMPTION: Final = msgspec.json.Decoder(_Consumption)


async def _each_consumption(pool: asyncpg.Pool) -> AsyncIterator[_Consumption]:
    async with pool.acquire() as connection, connection.transaction():
        async for row in connection.cursor(SELECT_CONSUMED_PAYLOADS, prefetch=CONSUMED_PREFETCH):
            yield _CONSUMPTION.decode(unpack(row[0]))


@dataclass(frozen=True)
class ClassTokens:
    token_class: str
    models: str
    """The models that consumed Tokens of this class, comma-separated."""
    tokens: Decimal


async def tokens_by_class(pool: asyncpg.Pool) -> list[ClassTokens]:
    """Tokens consumed per class over everything metering produced, most first."""
    tokens: dict[str, int] = defaultdict(int)
    models: dict[str, set[str]] = defaultdict(set)
    async for consumption in _each_consumption(pool):
        for token_class, quantity in consumption.tokens.items():
            tokens[token_class] += quantity
            models[token_class].add(consumption.model)
    return [ClassTokens(token_class, ", ".join(sorted(models[token_class])), Decimal(total))
            for token_class, total in sorted(tokens.items(), key=lambda item: (-item[1], item[0]))]


@dataclass(frozen=True)
class FundingShare:
    """The consumption one funding agreement put on one payer."""

    agreement: str
    consumer_bu: str
    payer_bu: str
    share_percent: str
    events: int
    tokens: Decimal


async def funding_shares(pool: asyncpg.Pool) -> list[FundingShare]:
    """Consumption split by funding agreements, per agreement and payer."""
    shares: dict[tuple[str, str, str, str], list[int]] = defaultdict(lambda: [0, 0])
    async for consumption in _each_consumption(pool):
        if consumption.funding_agreement_id is not None:
            share = shares[consumption.funding_agreement_id, consumption.consumer_bu, consumption.payer_bu,
                           consumption.share_percent]
            share[0] += 1
            share[1] += sum(consumption.tokens.values())
    return [FundingShare(agreement, consumer_bu, payer_bu, share_percent, events, Decimal(tokens))
            for (agreement, consumer_bu, payer_bu, share_percent), (events, tokens)
            in sorted(shares.items(), key=lambda item: (item[0][0], item[0][2], item[0][1], item[0][3]))]


# --- what metering answered about usage a producer sent ----------------------------------

@dataclass(frozen=True)
class SentUsage:
    """One message a producer sent, as metering will know it: by its key
    (source + id) and the hash of its usage when it parses, else by the hash of
    its bytes (what metering stores a message that does not parse under)."""

    key: tuple[str, str] | None
    content_sha256: str | None
    original_sha256: str


@dataclass(frozen=True)
class Rejection:
    reason_code: str
    message: str


Verdict = str | Rejection | None
""""accepted", "duplicate", a Rejection, or None while metering has not answered."""


@dataclass(frozen=True)
class Snapshot:
    """What metering had decided about these messages before they were sent."""

    accepted: dict[tuple[str, str], str]
    """Key -> content hash of the usage accepted under it."""
    rejected_ids: frozenset[uuid.UUID]
    rejected_bytes: dict[str, Rejection]
    """Bytes' hash -> why they were rejected: metering stores one rejection of
    the same bytes for the same reason, so a copy leaves no new row."""


async def _decisions(pool: asyncpg.Pool, sent: list[SentUsage]) -> tuple[dict[tuple[str, str], str], list[asyncpg.Record]]:
    if len(sent) > ANSWERS_ASKED_MAX:
        raise ValueError(f"at most {ANSWERS_ASKED_MAX} usage events per question, got {len(sent)}")
    keys = sorted({item.key for item in sent if item.key is not None})
    sources, ids = [source for source, _ in keys], [usage_id for _, usage_id in keys]
    hashes = sorted({item.original_sha256 for item in sent})
    async with pool.acquire() as connection:
        accepted = {(row["usage_source"], row["usage_id"]): row["content_sha256"]
                    for row in await connection.fetch(SELECT_ACCEPTED_KEYS, sources, ids)}
        rejected = await connection.fetch(SELECT_REJECTIONS_OF, sources, ids, hashes)
    return accepted, rejected


async def snapshot(pool: asyncpg.Pool, sent: list[SentUsage]) -> Snapshot:
    """Taken before sending, so that what changes afterwards is metering's answer."""
    accepted, rejected = await _decisions(pool, sent)
    return Snapshot(accepted, frozenset(row["rejected_id"] for row in rejected),
                    {row["original_sha256"]: Rejection(row["reason_code"], row["message"]) for row in rejected})


async def metering_read_through(bootstrap_servers: str, partitions: list[int], **client: Any) -> dict[int, int]:
    """Metering's committed position on each of these partitions of
    usage.reported: the offset it will read next, so everything before it is
    metered and stored. Read as a member of its group that joins nothing."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, group_id=METERING_GROUP, enable_auto_commit=False,
                                **client)
    await consumer.start()
    try:
        positions = {}
        for partition in partitions:
            committed = await consumer.committed(TopicPartition(USAGE_REPORTED.name, partition))
            positions[partition] = committed if committed is not None else -1
        return positions
    finally:
        await consumer.stop()


async def answers(pool: asyncpg.Pool, sent: list[SentUsage], before: Snapshot, *, read_past: bool = False) -> list[Verdict]:
    """Metering's answer for each message in `sent`, in order. An exact copy of
    usage accepted before is a duplicate at once; a first sighting is accepted
    once its key is stored with its content; a message is rejected once a
    rejection that was not there `before` names its key or its bytes, or, when
    metering has `read_past` everything sent, by the rejection its very bytes
    had before. A later copy within `sent` shares the first copy's fate (a
    duplicate if that was accepted)."""
    accepted, rows = await _decisions(pool, sent)
    by_key: dict[tuple[str, str], list[Rejection]] = {}
    by_bytes: dict[str, list[Rejection]] = {}
    for row in rows:
        if row["rejected_id"] in before.rejected_ids:
            continue
        rejection = Rejection(row["reason_code"], row["message"])
        if row["usage_source"] is not None and row["usage_id"] is not None:
            by_key.setdefault((row["usage_source"], row["usage_id"]), []).append(rejection)
        # Also by its bytes: a message this side could not read may still have named its key to metering.
        by_bytes.setdefault(row["original_sha256"], []).append(rejection)
    verdicts: list[Verdict] = []
    first: dict[object, Verdict] = {}
    for item in sent:
        identity: object = item.key if item.key is not None else item.original_sha256
        if first.get(identity) is not None:
            earlier = first[identity]
            verdicts.append("duplicate" if earlier in ("accepted", "duplicate") else earlier)
            continue
        verdict: Verdict
        if item.key is None:
            waiting = by_bytes.get(item.original_sha256)
            verdict = waiting.pop(0) if waiting else None
        elif item.content_sha256 is not None and before.accepted.get(item.key) == item.content_sha256:
            verdict = "duplicate"
        elif by_key.get(item.key):
            verdict = by_key[item.key].pop(0)
        elif (item.content_sha256 is not None and item.key not in before.accepted
              and accepted.get(item.key) == item.content_sha256):
            verdict = "accepted"
        else:
            verdict = None  # not answered yet (a conflicting copy's rejection is on its way)
        if verdict is None and read_past:
            verdict = before.rejected_bytes.get(item.original_sha256)
        first.setdefault(identity, verdict)
        verdicts.append(verdict)
    return verdicts
