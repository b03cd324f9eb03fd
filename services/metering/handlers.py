"""Metering's shell: load state, call the core, write results in one transaction."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import structlog
from aiokafka.structs import ConsumerRecord

from tokenhub.contracts.canonical import canonical_json, sha256_hex
from tokenhub.contracts.events import UsageRejected, decode
from tokenhub.contracts.ids import derive_id
from tokenhub.contracts.registry import RegistryChanged
from tokenhub.contracts.topics import TOKENS_CONSUMED, USAGE_REJECTED
from tokenhub.services.common.outbox import OutboxRow, bump_counters, stage
from tokenhub.services.common.runtime import Runtime
from tokenhub.services.metering import domain
from tokenhub.services.metering.adapters import store
from tokenhub.services.metering.metrics import METRICS

SCHEMA = "metering"
log = structlog.get_logger()

PRUNE_INTERVAL_S = 60.0
PRUNE_ROWS_MAX = 10_000
"""Dedup keys are kept for the accepted window plus the future skew: an older
event is rejected as too old before dedup is consulted, so its key can go.
Pruned in bounded slices so one batch never pays for a whole backlog."""
_last_prune = 0.0


@dataclass(frozen=True)
class Incoming:
    """One usage message as received, wherever it came from (Kafka or HTTP)."""

    raw: domain.RawUsage
    topic: str
    partition: int | None = None
    offset: int | None = None


@dataclass(frozen=True)
class Outcome:
    accepted: int
    duplicates: int
    rejected: list[tuple[Incoming, domain.Rejection]]


def incoming_from_record(record: ConsumerRecord) -> Incoming:
    headers = tuple((name, value) for name, value in record.headers or ())
    return Incoming(domain.RawUsage(record.value or b"", headers), record.topic, record.partition, record.offset)


def limits(runtime: Runtime) -> domain.Limits:
    settings = runtime.settings
    return domain.Limits(
        now=runtime.now(),
        accepted_window=timedelta(days=settings.accepted_window_days),
        future_skew=timedelta(seconds=settings.future_skew_seconds),
        message_bytes_max=settings.message_bytes_max,
    )


async def handle_usage_records(runtime: Runtime, records: Sequence[ConsumerRecord]) -> None:
    await meter_batch(runtime, [incoming_from_record(record) for record in records])


async def meter_batch(runtime: Runtime, batch: Sequence[Incoming]) -> Outcome:
    """Meter a batch: dedup, reject with reasons, stage consumption; one transaction."""
    # Latency on the monotonic clock: `runtime.now()` stands still when a clock is injected.
    started = time.perf_counter()
    async with runtime.db().acquire() as connection:
        catalogue = await store.load_catalogue(connection)
        current_limits = limits(runtime)
        metered: list[tuple[Incoming, domain.Metered]] = []
        rejected: list[tuple[Incoming, domain.Rejection]] = []
        for incoming in batch:
            try:
                metered.append((incoming, domain.meter(incoming.raw, catalogue, current_limits)))
            except domain.UsageError as error:
                rejected.append((incoming, error.rejection))
        async with connection.transaction():
            fresh, duplicates, conflicts = await _dedup(connection, metered)
            rejected.extend(conflicts)
            rows = [
                OutboxRow(TOKENS_CONSUMED.name, event.payer_bu.encode(), canonical_json(event))
                for _, result in fresh
                for event in result.consumed
            ]
            rejected_rows = await _store_rejected(connection, rejected, runtime)
            await stage(connection, SCHEMA, rows + rejected_rows)
            counts = {"accepted": len(fresh), "duplicates": duplicates, "consumed": len(rows)}
            for reason_code in (row.reason_code for row in rejected_rows):
                counts[f"rejected.{reason_code}"] = counts.get(f"rejected.{reason_code}", 0) + 1
            counts["rejected"] = len(rejected_rows)
            await bump_counters(connection, SCHEMA, counts)
    runtime.relay_soon()
    await _prune_dedup(runtime, current_limits)
    METRICS.observe_batch(len(fresh), duplicates, [rejection.reason_code for _, rejection in rejected],
                          time.perf_counter() - started)
    log.info("usage_metered", accepted=len(fresh), duplicates=duplicates, rejected=len(rejected), consumed=len(rows))
    return Outcome(len(fresh), duplicates, rejected)


async def _prune_dedup(runtime: Runtime, current_limits: domain.Limits) -> None:
    global _last_prune
    if time.monotonic() - _last_prune < PRUNE_INTERVAL_S:
        return
    _last_prune = time.monotonic()
    horizon = domain.dedup_horizon(current_limits)
    async with runtime.db().acquire() as connection:
        pruned = await connection.fetchval(store.PRUNE_DEDUP, horizon, PRUNE_ROWS_MAX)
    if pruned:
        log.info("dedup_pruned", rows=pruned, older_than=horizon.isoformat())


async def _dedup(connection, metered):  # noqa: ANN001, ANN202 - internal helper over the batch
    """Split into first-seen, exact duplicates (dropped, counted) and conflicting
    duplicates (same source+id, other content: rejected)."""
    first_in_batch: dict[tuple[str, str], tuple[Incoming, domain.Metered]] = {}
    duplicates = 0
    conflicts: list[tuple[Incoming, domain.Rejection]] = []
    for incoming, result in metered:
        key = (result.usage.source, result.usage.id)
        seen = first_in_batch.get(key)
        if seen is None:
            first_in_batch[key] = (incoming, result)
        elif seen[1].content_sha256 == result.content_sha256:
            duplicates += 1
        else:
            conflicts.append((incoming, _conflict(result)))
    candidates = list(first_in_batch.values())
    if not candidates:
        return [], duplicates, conflicts
    inserted_keys = await store.claim_dedup_keys(connection, [
        (result.usage.source, result.usage.id, result.content_sha256, result.usage.time) for _, result in candidates])
    fresh = [(incoming, result) for incoming, result in candidates if (result.usage.source, result.usage.id) in inserted_keys]
    seen_before = [(incoming, result) for incoming, result in candidates if (result.usage.source, result.usage.id) not in inserted_keys]
    if seen_before:
        stored = await connection.fetch(
            store.SELECT_DEDUP,
            [result.usage.source for _, result in seen_before],
            [result.usage.id for _, result in seen_before],
        )
        stored_hashes = {(row["usage_source"], row["usage_id"]): row["content_sha256"] for row in stored}
        for incoming, result in seen_before:
            if stored_hashes.get((result.usage.source, result.usage.id)) == result.content_sha256:
                duplicates += 1
            else:
                conflicts.append((incoming, _conflict(result)))
    return fresh, duplicates, conflicts


def _conflict(result: domain.Metered) -> domain.Rejection:
    return domain.Rejection(
        domain.Reason.CONFLICTING_DUPLICATE,
        f"source {result.usage.source} id {result.usage.id} was already accepted with other content",
        result.usage.source,
        result.usage.id,
    )


@dataclass(frozen=True)
class RejectedRow(OutboxRow):
    reason_code: str = ""


async def _store_rejected(connection, rejected, runtime: Runtime) -> list[RejectedRow]:  # noqa: ANN001
    """Store every rejected original with its bytes and headers; publish its reason."""
    if not rejected:
        return []
    ids = [uuid.UUID(domain.rejected_id(incoming.raw, rejection.reason_code)) for incoming, rejection in rejected]
    stored = await connection.fetch(
        store.INSERT_REJECTED,
        ids,
        [rejection.reason_code for _, rejection in rejected],
        [rejection.message for _, rejection in rejected],
        [incoming.raw.value for incoming, _ in rejected],
        [sha256_hex(incoming.raw.value) for incoming, _ in rejected],
        [domain.sorted_headers(incoming.raw) for incoming, _ in rejected],
        [rejection.usage_source for _, rejection in rejected],
        [rejection.usage_id for _, rejection in rejected],
        [incoming.topic for incoming, _ in rejected],
        [incoming.partition for incoming, _ in rejected],
        [incoming.offset for incoming, _ in rejected],
    )
    # A redelivered bad message is stored and published once: its id is deterministic.
    new_ids = {row["rejected_id"] for row in stored}
    now = runtime.now()
    rows = []
    for rejected_id, (incoming, rejection) in zip(ids, rejected, strict=True):
        if rejected_id not in new_ids:
            continue
        event = UsageRejected(
            id=derive_id("usage.rejected", str(rejected_id)),
            event_time=now,
            cause_id=str(rejected_id),
            reason_code=rejection.reason_code,
            message=rejection.message,
            rejected_ref=str(rejected_id),
            usage_source=rejection.usage_source,
            usage_id=rejection.usage_id,
            original_sha256=sha256_hex(incoming.raw.value),
        )
        rows.append(RejectedRow(USAGE_REJECTED.name, (rejection.usage_source or "").encode(), canonical_json(event),
                                rejection.reason_code))
    return rows


async def handle_registry_records(runtime: Runtime, records: Sequence[ConsumerRecord]) -> None:
    changes = [decode(RegistryChanged, record.value) for record in records]
    applied = 0
    async with runtime.db().acquire() as connection, connection.transaction():
        for change in sorted(changes, key=lambda change: change.event_time):
            applied += await store.apply_registry_change(connection, change)
    log.info("registry_applied", applied=applied, received=len(changes))
