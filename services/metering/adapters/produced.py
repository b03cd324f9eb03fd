"""What metering produced, read back from its own tables for the republish into
a broker that lost its topics (`infra.boot`, docs/architecture.md, durability):
- tokens.consumed: metering's record, one row per TokenConsumed, in production
  order; where the usage came over HTTP, the usage that metering published on
  usage.reported for it comes first, from the same record (migration 0017);
  both stored packed, published as the canonical bytes `unpack` gives back;
- usage.rejected: rebuilt from the stored originals, whose stored time is the
  event time of the UsageRejected published for them (the same bytes; rows
  stored before migration 0017 carry the time they were stored);
- registry changes (the configuration metering keeps), as full events.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Final

import asyncpg
import msgspec
import orjson

from tokenhub.contracts.canonical import canonical_json
from tokenhub.contracts.stored import unpack
from tokenhub.contracts.registry import RegistryChanged
from tokenhub.contracts.topics import REGISTRY_CHANGED, TOKENS_CONSUMED, USAGE_REJECTED, USAGE_REPORTED
from tokenhub.services.common.outbox import ProducedRecord
from tokenhub.services.metering import domain

ROWS_PREFETCH: Final = 5_000
"""Rows a cursor holds at a time: bounds memory whatever the table's size."""
PRODUCED_RANGE_ROWS: Final = 10_000
"""Sequence numbers read per query of the record: bounds the rows in memory."""

SELECT_REGISTRY_CHANGES: Final = """
select change_id, kind, entity_id, payload, actor, reason, changed_at from metering.registry_changes
order by changed_at, change_id
"""
SELECT_LAST_SEQ: Final = "select pg_sequence_last_value(pg_get_serial_sequence('metering.consumed', 'seq')::regclass)"
# By seq range (the block range index consumed_seq), in production order.
SELECT_PRODUCED: Final = "select usage_value, payload from metering.consumed where seq > $1 and seq <= $2 order by seq"
SELECT_REJECTED: Final = """
select rejected_id, reason_code, message, original_sha256, usage_source, usage_id, received_at
from metering.rejected_usage order by received_at, rejected_id
"""


class _Parties(msgspec.Struct):
    payer_bu: str
    consumer_bu: str


_PARTIES: Final = msgspec.json.Decoder(_Parties)


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
    """What metering published: each usage event's TokenConsumed (keyed by payer)
    in production order, preceded by the usage itself where metering published it
    on usage.reported (keyed by consumer); then every UsageRejected, in the order
    they were made."""
    last = await connection.fetchval(SELECT_LAST_SEQ) or 0
    for start in range(0, last, PRODUCED_RANGE_ROWS):
        for row in await connection.fetch(SELECT_PRODUCED, start, start + PRODUCED_RANGE_ROWS):
            payload = unpack(row["payload"])
            parties = _PARTIES.decode(payload)
            if row["usage_value"] is not None:
                yield USAGE_REPORTED.name, parties.consumer_bu.encode(), unpack(row["usage_value"]), ()
            yield TOKENS_CONSUMED.name, parties.payer_bu.encode(), payload, ()
    async with connection.transaction():
        async for row in connection.cursor(SELECT_REJECTED, prefetch=ROWS_PREFETCH):
            rejection = domain.Rejection(row["reason_code"], row["message"], row["usage_source"], row["usage_id"])
            event = domain.usage_rejected(str(row["rejected_id"]), rejection, row["original_sha256"], row["received_at"])
            yield USAGE_REJECTED.name, (row["usage_source"] or "").encode(), canonical_json(event), ()
