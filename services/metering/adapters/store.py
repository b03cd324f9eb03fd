"""Metering's tables: asyncpg here and only here."""

from __future__ import annotations

from datetime import datetime
from typing import Final

import asyncpg

from tokenhub.contracts.registry import (
    BusinessUnit,
    ConversionTable,
    FundingAgreement,
    ModelEntry,
    RegistryChanged,
)
from tokenhub.services.common.db import insert_new
from tokenhub.services.metering.domain import Catalogue

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

INSERT_DEDUP: Final = """
insert into metering.dedup (usage_source, usage_id, content_sha256, event_time)
select * from unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[])
on conflict do nothing
returning usage_source, usage_id
"""
DEDUP_COLUMNS: Final = ("usage_source", "usage_id", "content_sha256", "event_time")


async def claim_dedup_keys(connection: asyncpg.Connection, records: list[tuple[str, str, str, datetime]]) -> set[tuple[str, str]]:
    """Store idempotency keys (DEDUP_COLUMNS); the (source, id) pairs not seen before."""
    return await insert_new(connection, schema="metering", table="dedup", columns=DEDUP_COLUMNS, records=records,
                            key_columns=2, fallback_sql=INSERT_DEDUP)


SELECT_DEDUP: Final = """
select usage_source, usage_id, content_sha256 from metering.dedup
where (usage_source, usage_id) in (select * from unnest($1::text[], $2::text[]))
"""
PRUNE_DEDUP: Final = """
with old as (
    delete from metering.dedup where ctid in (select ctid from metering.dedup where event_time < $1 limit $2)
    returning 1
)
select count(*) from old
"""
INSERT_REJECTED: Final = """
insert into metering.rejected_usage (
    rejected_id, reason_code, message, original_bytes, original_sha256, headers,
    usage_source, usage_id, topic, kafka_partition, kafka_offset)
select * from unnest($1::uuid[], $2::text[], $3::text[], $4::bytea[], $5::text[], $6::jsonb[],
                     $7::text[], $8::text[], $9::text[], $10::int[], $11::bigint[])
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


async def load_catalogue(connection: asyncpg.Connection) -> Catalogue:
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
    return Catalogue(business_units, models, tables, funding)


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

