"""Metering's tables: asyncpg here and only here. Handlers open a unit of work
(`MeteringStore.unit`, one transaction) and call its typed methods, which take
and return domain types."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Final

import asyncpg

from tokenhub.contracts import stored as stored_payloads
from tokenhub.contracts.events import UsageRejected
from tokenhub.contracts.registry import (
    BusinessUnit,
    ConversionTable,
    FundingAgreement,
    ModelEntry,
    RegistryChanged,
)
from tokenhub.contracts.topics import TOKENS_CONSUMED, USAGE_REPORTED
from tokenhub.services.common.outbox import OutboxRow, bump_counters, stage
from tokenhub.services.metering import domain
from tokenhub.services.metering.adapters import keys
from tokenhub.services.metering.registry import Registry

SCHEMA: Final = "metering"

SELECT_BUSINESS_UNITS: Final = "select bu_id from metering.business_units where active"
SELECT_MODELS: Final = """
select model_id, provider_bu, display_name, modality, token_classes, active from metering.models
"""
SELECT_CONVERSION_TABLES: Final = """
select version, effective_from, rules from metering.conversion_tables order by effective_from, version
"""
SELECT_FUNDING: Final = """
select agreement_id, consumer_bu, app, model_pattern, payers, effective_from, effective_to
from metering.funding_agreements
"""

# metering.consumed holds each TokenConsumed produced, keyed by its usage's source
# + id: the first row of an event carries the usage's content hash and is the
# one in the unique index consumed_usage (migration 0017). Its payload and usage
# value are stored packed (contracts.stored: zstd with a trained dictionary).
CONSUMED_COLUMNS: Final = ("usage_source", "usage_id", "content_sha256", "usage_value", "payload")
INSERT_FIRST_ROWS: Final = """
insert into metering.consumed (usage_source, usage_id, content_sha256, usage_value, payload)
select * from unnest($1::text[], $2::text[], $3::bytea[], $4::bytea[], $5::bytea[])
on conflict (usage_source, usage_id) where content_sha256 is not null do nothing
returning usage_source, usage_id
"""
SELECT_STORED: Final = """
select usage_source, usage_id, content_sha256, usage_value is not null as published from metering.consumed
where (usage_source, usage_id) in (select * from unnest($1::text[], $2::text[])) and content_sha256 is not null
"""
INSERT_REJECTED: Final = """
insert into metering.rejected_usage (
    rejected_id, reason_code, message, original_bytes, original_sha256, headers,
    usage_source, usage_id, topic, kafka_partition, kafka_offset, received_at)
select * from unnest($1::uuid[], $2::text[], $3::text[], $4::bytea[], $5::text[], $6::jsonb[],
                     $7::text[], $8::text[], $9::text[], $10::int[], $11::bigint[], $12::timestamptz[])
on conflict (rejected_id) do nothing
returning rejected_id
"""

INSERT_REGISTRY_CHANGE: Final = """
insert into metering.registry_changes (change_id, kind, entity_id, payload, actor, reason, changed_at)
values ($1, $2, $3, $4, $5, $6, $7) on conflict (change_id) do nothing returning change_id
"""
UPSERT_BUSINESS_UNIT: Final = """
insert into metering.business_units (bu_id, display_name, parent_group, cost_centre, active, actor, reason, changed_at)
values ($1, $2, $3, $4, $5, $6, $7, $8)
on conflict (bu_id) do update set display_name = excluded.display_name, parent_group = excluded.parent_group,
    cost_centre = excluded.cost_centre, active = excluded.active, actor = excluded.actor,
    reason = excluded.reason, changed_at = excluded.changed_at
where business_units.changed_at <= excluded.changed_at
"""
UPSERT_MODEL: Final = """
insert into metering.models (model_id, provider_bu, display_name, modality, token_classes, active, actor, reason, changed_at)
values ($1, $2, $3, $4, $5, $6, $7, $8, $9)
on conflict (model_id) do update set provider_bu = excluded.provider_bu, display_name = excluded.display_name,
    modality = excluded.modality, token_classes = excluded.token_classes, active = excluded.active,
    actor = excluded.actor, reason = excluded.reason, changed_at = excluded.changed_at
where models.changed_at <= excluded.changed_at
"""
INSERT_CONVERSION_TABLE: Final = """
insert into metering.conversion_tables (version, effective_from, rules, actor, reason, published_at)
values ($1, $2, $3, $4, $5, $6) on conflict (version) do nothing
"""
UPSERT_FUNDING: Final = """
insert into metering.funding_agreements (agreement_id, consumer_bu, app, model_pattern, payers,
    effective_from, effective_to, actor, reason, changed_at)
values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
on conflict (agreement_id) do update set consumer_bu = excluded.consumer_bu, app = excluded.app,
    model_pattern = excluded.model_pattern, payers = excluded.payers, effective_from = excluded.effective_from,
    effective_to = excluded.effective_to, actor = excluded.actor, reason = excluded.reason,
    changed_at = excluded.changed_at
where funding_agreements.changed_at <= excluded.changed_at
"""

# What validating a registry change needs (services/metering/registry.py), and
# which changes already have their outcome (applied or refused, by change id).
SELECT_REGISTRY_STATE: Final = """
select (select coalesce(array_agg(bu_id), '{}') from metering.business_units) as business_units,
       (select coalesce(array_agg(model_id), '{}') from metering.models) as models,
       (select coalesce(array_agg(distinct token_class), '{}')
        from metering.models, unnest(token_classes) as token_class) as model_classes,
       (select coalesce(array_agg(agreement_id), '{}') from metering.funding_agreements) as agreements
"""
SELECT_ANSWERED: Final = """
select change_id from metering.registry_changes where change_id = any($1::uuid[])
union all
select change_id from metering.registry_refused where change_id = any($1::uuid[])
"""
INSERT_REFUSED: Final = """
insert into metering.registry_refused (change_id, kind, entity_id, reason, original_bytes, topic, kafka_partition,
                                       kafka_offset, refused_at)
values ($1, $2, $3, $4, $5, $6, $7, $8, $9) on conflict (change_id) do nothing returning change_id
"""


async def load_registry(connection: asyncpg.Connection) -> Registry:
    """The registry as validation sees it: every business unit, model, agreement and table."""
    row = await connection.fetchrow(SELECT_REGISTRY_STATE)
    tables = {table_row["version"]: ConversionTable(version=table_row["version"], effective_from=table_row["effective_from"],
                                                    rules=table_row["rules"])
              for table_row in await connection.fetch(SELECT_CONVERSION_TABLES)}
    return Registry(frozenset(row["business_units"]), frozenset(row["models"]), frozenset(row["agreements"]), tables,
                    frozenset(row["model_classes"]))


@dataclass(frozen=True)
class RefusedChange:
    """A registry change metering refused, as received, with its reason."""

    change_id: uuid.UUID
    kind: str | None
    entity_id: str | None
    reason: str
    value: bytes
    topic: str
    partition: int | None
    offset: int | None


async def load_catalogue(connection: asyncpg.Connection) -> domain.Catalogue:
    business_units = frozenset(row["bu_id"] for row in await connection.fetch(SELECT_BUSINESS_UNITS))
    models = {
        row["model_id"]: ModelEntry(
            model_id=row["model_id"],
            provider_bu=row["provider_bu"],
            display_name=row["display_name"],
            modality=row["modality"],
            token_classes=tuple(row["token_classes"]),
            active=row["active"],
        )
        for row in await connection.fetch(SELECT_MODELS)
    }
    tables = tuple(
        ConversionTable(version=row["version"], effective_from=row["effective_from"], rules=row["rules"])
        for row in await connection.fetch(SELECT_CONVERSION_TABLES)
    )
    funding = tuple(
        FundingAgreement(
            agreement_id=row["agreement_id"],
            consumer_bu=row["consumer_bu"],
            app=row["app"],
            model_pattern=row["model_pattern"],
            payers=row["payers"],
            effective_from=row["effective_from"],
            effective_to=row["effective_to"],
        )
        for row in await connection.fetch(SELECT_FUNDING)
    )
    return domain.Catalogue(business_units, models, tables, funding)


async def apply_registry_change(connection: asyncpg.Connection, change: RegistryChanged) -> bool:
    """Record the change and apply it to its table; False if it was seen before."""
    inserted = await connection.fetchval(
        INSERT_REGISTRY_CHANGE,
        change.id,
        change.kind,
        change.entity_id,
        change.payload,
        change.actor,
        change.reason,
        change.event_time,
    )
    if inserted is None:
        return False
    audit = (change.actor, change.reason, change.event_time)
    if change.kind == "business_unit":
        unit = BusinessUnit.model_validate(change.payload)
        await connection.execute(
            UPSERT_BUSINESS_UNIT, unit.bu_id, unit.display_name, unit.parent_group, unit.cost_centre, unit.active, *audit
        )
    elif change.kind == "model":
        model = ModelEntry.model_validate(change.payload)
        await connection.execute(
            UPSERT_MODEL, model.model_id, model.provider_bu, model.display_name, model.modality,
            list(model.token_classes), model.active, *audit,
        )
    elif change.kind == "conversion_table":
        table = ConversionTable.model_validate(change.payload)
        await connection.execute(
            INSERT_CONVERSION_TABLE, table.version, table.effective_from,
            [rule.model_dump(mode="json") for rule in table.rules], *audit,
        )
    elif change.kind == "funding_agreement":
        agreement = FundingAgreement.model_validate(change.payload)
        await connection.execute(
            UPSERT_FUNDING, agreement.agreement_id, agreement.consumer_bu, agreement.app, agreement.model_pattern,
            [payer.model_dump(mode="json") for payer in agreement.payers], agreement.effective_from,
            agreement.effective_to, *audit,
        )
    return True



@dataclass(frozen=True)
class Claims:
    """Usage keys claimed by this batch, and what is stored for the keys that
    were claimed before (of the candidates and of the refused usage asked about)."""

    claimed: set[domain.UsageKey]
    stored: dict[domain.UsageKey, domain.Stored]


@dataclass(frozen=True)
class Produced:
    """An accepted usage event: its TokenConsumed as published (canonical bytes,
    in the order of `metered.consumed`), and, for usage that came over HTTP, the
    bytes metering publishes on usage.reported for it; `rows` are how they are
    stored (packed)."""

    metered: domain.Metered
    payloads: tuple[bytes, ...]
    usage_value: bytes | None = None

    def rows(self) -> list[tuple[str, str, bytes | None, bytes | None, bytes]]:
        source, usage_id = domain.key_of(self.metered)
        pack = stored_payloads.pack
        usage_value = None if self.usage_value is None else pack(USAGE_REPORTED.name, self.usage_value)
        first = (source, usage_id, bytes.fromhex(self.metered.content_sha256), usage_value,
                 pack(TOKENS_CONSUMED.name, self.payloads[0]))
        return [first, *((source, usage_id, None, None, pack(TOKENS_CONSUMED.name, payload)) for payload in self.payloads[1:])]


@dataclass(frozen=True)
class RejectedUsage:
    """A bad original as received, its reason, and what is published about it."""

    raw: domain.RawUsage
    rejection: domain.Rejection
    event: UsageRejected
    topic: str
    partition: int | None
    offset: int | None


class MeteringUnit:
    """One transaction of metering's writes and the reads they depend on."""

    def __init__(self, connection: asyncpg.Connection) -> None:
        self._connection = connection

    async def catalogue(self) -> domain.Catalogue:
        return await load_catalogue(self._connection)

    async def claim(self, candidates: Sequence[Produced], refused: Sequence[domain.UsageKey] = ()) -> Claims:
        """Store the TokenConsumed of first sightings: the record of what metering
        produced, whose usage key is its dedup. A key that another batch or
        instance stored first is not claimed (none of its event's rows is
        stored); what is stored for it, and for the `refused` keys, is returned."""
        claimed = await self._store_first_sightings(candidates) if candidates else set()
        asked = [key for item in candidates if (key := domain.key_of(item.metered)) not in claimed] + list(refused)
        if not asked:
            return Claims(claimed, {})
        rows = await self._connection.fetch(SELECT_STORED, [source for source, _ in asked], [usage_id for _, usage_id in asked])
        return Claims(claimed, {(row["usage_source"], row["usage_id"]): domain.Stored(row["content_sha256"].hex(), row["published"])
                                for row in rows})

    async def _store_first_sightings(self, candidates: Sequence[Produced]) -> set[domain.UsageKey]:
        """COPY every row first, in a savepoint: nearly every batch is new. A key
        stored before fails it with a unique violation; then the events' first rows
        go in with `on conflict do nothing`, and the other payers' rows of the
        events claimed that way follow."""
        connection = self._connection
        packed = [item.rows() for item in candidates]
        rows = [row for item_rows in packed for row in item_rows]
        try:
            async with connection.transaction():
                await connection.copy_records_to_table("consumed", schema_name=SCHEMA, columns=list(CONSUMED_COLUMNS),
                                                       records=rows)
            return {domain.key_of(item.metered) for item in candidates}
        except asyncpg.UniqueViolationError:
            pass
        first_rows = [item_rows[0] for item_rows in packed]
        inserted = await connection.fetch(INSERT_FIRST_ROWS, *(list(values) for values in zip(*first_rows, strict=True)))
        claimed = {(row["usage_source"], row["usage_id"]) for row in inserted}
        others = [row for item, item_rows in zip(candidates, packed, strict=True) if domain.key_of(item.metered) in claimed
                  for row in item_rows[1:]]
        if others:
            await connection.copy_records_to_table("consumed", schema_name=SCHEMA, columns=list(CONSUMED_COLUMNS),
                                                   records=others)
        return claimed

    async def store_rejected(self, rejected: Sequence[RejectedUsage]) -> list[RejectedUsage]:
        """Store every bad original with its bytes and headers; the ones not stored
        before (a redelivered bad message is stored and published once: its id is
        deterministic)."""
        if not rejected:
            return []
        ids = [uuid.UUID(item.event.rejected_ref) for item in rejected]
        rows = await self._connection.fetch(
            INSERT_REJECTED,
            ids,
            [item.rejection.reason_code for item in rejected],
            [item.rejection.message for item in rejected],
            [item.raw.value for item in rejected],
            [item.event.original_sha256 for item in rejected],
            [domain.sorted_headers(item.raw) for item in rejected],
            [item.rejection.usage_source for item in rejected],
            [item.rejection.usage_id for item in rejected],
            [item.topic for item in rejected],
            [item.partition for item in rejected],
            [item.offset for item in rejected],
            [item.event.event_time for item in rejected],
        )
        new_ids = {row["rejected_id"] for row in rows}
        return [item for rejected_id, item in zip(ids, rejected, strict=True) if rejected_id in new_ids]

    async def stage(self, rows: list[OutboxRow]) -> None:
        await stage(self._connection, SCHEMA, rows)

    async def count(self, counts: dict[str, int]) -> None:
        await bump_counters(self._connection, SCHEMA, counts)

    async def registry(self, change_ids: Sequence[uuid.UUID]) -> tuple[Registry, set[uuid.UUID]]:
        """The registry as it stands, and which of these changes already have their outcome."""
        answered = {row["change_id"] for row in await self._connection.fetch(SELECT_ANSWERED, list(change_ids))}
        return await load_registry(self._connection), answered

    async def refuse_registry_changes(self, refused: Sequence[RefusedChange], at: datetime) -> list[RefusedChange]:
        """Store refused changes with their reason and bytes; the ones not stored before."""
        stored = []
        for item in refused:
            inserted = await self._connection.fetchval(
                INSERT_REFUSED, item.change_id, item.kind, item.entity_id, item.reason, item.value, item.topic,
                item.partition, item.offset, at)
            if inserted is not None:
                stored.append(item)
        return stored

    async def apply_registry_changes(self, changes: Sequence[RegistryChanged]) -> int:
        """Apply changes in the order given; how many were new."""
        applied = 0
        for change in changes:
            applied += await apply_registry_change(self._connection, change)
        return applied


class MeteringStore:
    """Metering's schema behind a pool that exists once the service has started."""

    def __init__(self, pool: Callable[[], asyncpg.Pool]) -> None:
        self._pool = pool

    @asynccontextmanager
    async def unit(self) -> AsyncIterator[MeteringUnit]:
        async with self._pool().acquire() as connection, connection.transaction():
            yield MeteringUnit(connection)

    async def api_key(self, key: str) -> keys.ApiKey | None:
        async with self._pool().acquire() as connection:
            return await keys.lookup(connection, key)
