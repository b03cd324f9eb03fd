"""What metering produced, read back from its own tables for the republish into
a broker that lost its topics (`infra.boot`, docs/architecture.md, durability).

First version, against the tables metering keeps today:
- usage.reported: the usage accepted over HTTP, whose idempotency key keeps the
  bytes metering published (migration 0016);
- tokens.consumed: NOT YET. Metering keeps no copy of the TokenConsumed it
  produced: once relayed, its outbox row is gone. Until metering stores them (one
  row per produced event, keyed by the usage it came from), consumption that the
  broker lost before pricing stored it is lost with the broker;
- usage.rejected: rebuilt from the stored originals, with the time each was
  stored as its event time (the id, the reason and the reference are the same);
- registry changes (the configuration metering keeps), as full events.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Final

import asyncpg
import orjson

from tokenhub.contracts.canonical import canonical_json
from tokenhub.contracts.events import UsageRejected
from tokenhub.contracts.ids import derive_id
from tokenhub.contracts.registry import RegistryChanged
from tokenhub.contracts.topics import REGISTRY_CHANGED, USAGE_REJECTED, USAGE_REPORTED
from tokenhub.services.common.outbox import ProducedRecord

ROWS_PREFETCH: Final = 5_000
"""Rows a cursor holds at a time: bounds memory whatever the table's size."""

SELECT_REGISTRY_CHANGES: Final = """
select change_id, kind, entity_id, payload, actor, reason, changed_at from metering.registry_changes
order by changed_at, change_id
"""
SELECT_HTTP_USAGE: Final = """
select usage_value from metering.dedup where usage_value is not null order by received_at, usage_source, usage_id
"""
SELECT_REJECTED: Final = """
select rejected_id, reason_code, message, original_sha256, usage_source, usage_id, received_at
from metering.rejected_usage order by received_at, rejected_id
"""


async def configuration_records(connection: asyncpg.Connection) -> AsyncIterator[ProducedRecord]:
    """Every registry change as the full RegistryChanged event it arrived as (the
    table keeps its fields; the cause is `registry_change`'s actor:kind:entity),
    in the order the changes happened. Metering applies a change once by its id."""
    async with connection.transaction():
        async for row in connection.cursor(SELECT_REGISTRY_CHANGES, prefetch=ROWS_PREFETCH):
            payload = row["payload"] if isinstance(row["payload"], dict) else orjson.loads(row["payload"])
            event = RegistryChanged(
                id=row["change_id"], event_time=row["changed_at"], cause_id=f"{row['actor']}:{row['kind']}:{row['entity_id']}",
                kind=row["kind"], entity_id=row["entity_id"], payload=payload, actor=row["actor"], reason=row["reason"],
            )
            yield REGISTRY_CHANGED.name, row["entity_id"].encode(), canonical_json(event), ()


async def produced_records(connection: asyncpg.Connection) -> AsyncIterator[ProducedRecord]:
    """What metering published, in the order it published each kind."""
    async with connection.transaction():
        async for row in connection.cursor(SELECT_HTTP_USAGE, prefetch=ROWS_PREFETCH):
            value = row["usage_value"]
            yield USAGE_REPORTED.name, orjson.loads(value)["data"]["consumer_bu"].encode(), value, ()
        async for row in connection.cursor(SELECT_REJECTED, prefetch=ROWS_PREFETCH):
            reference = str(row["rejected_id"])
            event = UsageRejected(
                id=derive_id("usage.rejected", reference), event_time=row["received_at"], cause_id=reference,
                reason_code=row["reason_code"], message=row["message"], rejected_ref=reference,
                usage_source=row["usage_source"], usage_id=row["usage_id"], original_sha256=row["original_sha256"],
            )
            yield USAGE_REJECTED.name, (row["usage_source"] or "").encode(), canonical_json(event), ()
