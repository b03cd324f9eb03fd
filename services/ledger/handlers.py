"""The ledger's shell: a batch of Priced becomes journal entries, archive rows,
balance updates and outbox rows in ONE transaction; offsets follow."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import asyncpg
import structlog
from aiokafka.structs import ConsumerRecord

from tokenhub.contracts.canonical import canonical_json, sha256_hex
from tokenhub.contracts.events import Priced, decode
from tokenhub.contracts.ids import derive_id
from tokenhub.contracts.topics import LEDGER_POSTED
from tokenhub.services.common.outbox import OutboxRow, bump_counters, stage
from tokenhub.services.common.runtime import Runtime, maybe_crash
from tokenhub.services.ledger import domain
from tokenhub.services.ledger.adapters import store

SCHEMA = "ledger"
log = structlog.get_logger()


async def post_records(runtime: Runtime, records: Sequence[ConsumerRecord]) -> None:
    events = [decode(Priced, record.value) for record in records]
    payloads = [canonical_json(event) for event in events]
    hashes = [sha256_hex(payload) for payload in payloads]
    first: dict[uuid.UUID, int] = {}
    for index, event in enumerate(events):
        first.setdefault(event.id, index)
    async with runtime.db().acquire() as connection, connection.transaction():
        unique = sorted(first.values())
        inserted = await connection.fetch(
            store.INSERT_ARCHIVE,
            [events[index].id for index in unique],
            [hashes[index] for index in unique],
            [payloads[index] for index in unique],
        )
        new_ids = {row["priced_id"] for row in inserted}
        fresh = [events[index] for index in unique if events[index].id in new_ids]
        conflicts = await _conflicting(connection, events, hashes, first, new_ids)
        posted = await _post(connection, fresh, runtime)
        maybe_crash(runtime.settings, "ledger.mid_batch")
        await bump_counters(connection, SCHEMA, {
            "posted": len(posted), "duplicates": len(events) - len(posted) - len(conflicts), "conflicts": len(conflicts),
        })
    maybe_crash(runtime.settings, "ledger.after_db_commit")
    if conflicts:
        log.error("conflicting_duplicates", priced_ids=[str(priced_id) for priced_id in conflicts])
    log.info("priced_posted", received=len(events), posted=len(posted), conflicts=len(conflicts))


async def _conflicting(connection: asyncpg.Connection, events, hashes, first, new_ids) -> list[uuid.UUID]:  # noqa: ANN001
    """Same id, other content: post nothing, raise an alert once per distinct content."""
    suspects = {events[index].id for index in range(len(events)) if events[index].id not in new_ids or first[events[index].id] != index}
    if not suspects:
        return []
    stored = {row["priced_id"]: row["payload_sha256"] for row in await connection.fetch(store.SELECT_ARCHIVE_HASHES, list(suspects))}
    conflicts = []
    for index, event in enumerate(events):
        expected = stored.get(event.id, hashes[first[event.id]])
        if event.id in suspects and hashes[index] != expected:
            alert_id = derive_id("alert", "conflicting_duplicate", str(event.id), hashes[index])
            await connection.fetchval(store.INSERT_ALERT, alert_id, "conflicting_duplicate",
                                      {"priced_id": str(event.id), "stored_sha256": expected, "received_sha256": hashes[index]})
            conflicts.append(event.id)
    return conflicts


async def _post(connection: asyncpg.Connection, fresh: list[Priced], runtime: Runtime) -> list:  # noqa: ANN401
    if not fresh:
        return []
    heads = await store.lock_chain_heads(connection, [event.payer_bu for event in fresh])
    posted, new_heads = domain.post_batch(fresh, heads, runtime.now())
    payloads = [canonical_json(entry) for entry in posted]
    await store.write_entries(connection, posted, payloads)
    await store.update_balances(connection, domain.balance_deltas(posted))
    await store.save_chain_heads(connection, list(new_heads.values()))
    await stage(connection, SCHEMA, [
        OutboxRow(LEDGER_POSTED.name, entry.payer_bu.encode(), payload) for entry, payload in zip(posted, payloads, strict=True)
    ])
    return posted
