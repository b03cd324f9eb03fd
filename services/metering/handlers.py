"""Metering's shell: load state, call the core, write results in one transaction.

`Metering` is the service: it owns its store and its metrics, and `app.py`
makes one per process."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import structlog
from aiokafka.structs import ConsumerRecord
from prometheus_client import REGISTRY, CollectorRegistry

from tokenhub.contracts import codecs
from tokenhub.contracts.canonical import canonical_json
from tokenhub.contracts.topics import TOKENS_CONSUMED, USAGE_REJECTED, USAGE_REPORTED
from tokenhub.services.common.outbox import OutboxRow
from tokenhub.services.common.runtime import Runtime
from tokenhub.services.metering import domain, registry
from tokenhub.services.metering.adapters.store import SCHEMA, MeteringStore, Produced, RefusedChange, RejectedUsage
from tokenhub.services.metering.metrics import MeteringMetrics

__all__ = ["SCHEMA", "Incoming", "Metering", "Outcome"]

log = structlog.get_logger()

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


class Metering:
    def __init__(self, runtime: Runtime, registry: CollectorRegistry = REGISTRY) -> None:
        self.runtime = runtime
        self.store = MeteringStore(runtime.db)
        self.metrics = MeteringMetrics.create(registry)

    def limits(self) -> domain.Limits:
        settings = self.runtime.settings
        return domain.Limits(
            now=self.runtime.now(),
            accepted_window=timedelta(days=settings.accepted_window_days),
            future_skew=timedelta(seconds=settings.future_skew_seconds),
            message_bytes_max=settings.message_bytes_max,
        )

    async def handle_usage_records(self, records: Sequence[ConsumerRecord]) -> None:
        await self.meter_batch([incoming_from_record(record) for record in records])

    async def meter_batch(self, batch: Sequence[Incoming], *, publish_usage: bool = False) -> Outcome:
        """Meter a batch: dedup, reject with reasons, stage consumption; one transaction.

        Each accepted event's TokenConsumed are stored (metering's record, keyed
        by the usage's source + id: the dedup) and staged for tokens.consumed.
        `publish_usage` is for usage that did not come from usage.reported (HTTP
        ingest): what is accepted is also staged for usage.reported, and its
        record keeps the bytes published, so the copy that comes back from the
        topic is recognised as an echo of this event (see `http.py`)."""
        # Latency on the monotonic clock: `runtime.now()` stands still when a clock is injected.
        started = time.perf_counter()
        limits = self.limits()
        async with self.store.unit() as unit:
            catalogue = await unit.catalogue()
            accepted, refused = domain.meter_each([incoming.raw for incoming in batch], catalogue, limits)
            candidates = domain.first_sightings(accepted, refused)
            produced = {position: Produced(metered, tuple(codecs.encode(event) for event in metered.consumed),
                                           domain.structured(batch[position].raw, metered) if publish_usage else None)
                        for position, metered in candidates.fresh}
            claims = await unit.claim(list(produced.values()), [
                key for _, rejection in candidates.rejected if (key := domain.rejection_key(rejection)) is not None])
            outcome = domain.against_stored(candidates, claims.claimed, claims.stored, from_topic=not publish_usage)
            stored = await unit.store_rejected([
                RejectedUsage(batch[position].raw, rejection, domain.rejected_event(batch[position].raw, rejection, limits.now),
                              batch[position].topic, batch[position].partition, batch[position].offset)
                for position, rejection in outcome.rejected])
            usage = [OutboxRow(USAGE_REPORTED.name, metered.usage.data.consumer_bu.encode(), produced[position].usage_value)
                     for position, metered in outcome.fresh if produced[position].usage_value is not None]
            consumed = [OutboxRow(TOKENS_CONSUMED.name, event.payer_bu.encode(), payload)
                        for position, metered in outcome.fresh
                        for event, payload in zip(metered.consumed, produced[position].payloads, strict=True)]
            await unit.stage(usage + consumed + [
                OutboxRow(USAGE_REJECTED.name, (item.rejection.usage_source or "").encode(), canonical_json(item.event))
                for item in stored])
            await unit.count(_counts(outcome, len(consumed), len(usage), stored))
        self.runtime.relay_soon()
        self.metrics.observe_batch(len(outcome.fresh), outcome.duplicates, outcome.echoes,
                                   [rejection.reason_code for _, rejection in outcome.rejected], time.perf_counter() - started)
        log.info("usage_metered", accepted=len(outcome.fresh), duplicates=outcome.duplicates, echoes=outcome.echoes,
                 rejected=len(outcome.rejected), consumed=len(consumed), published_usage=len(usage))
        return Outcome(len(outcome.fresh), outcome.duplicates,
                       [(batch[position], rejection) for position, rejection in outcome.rejected])

    async def handle_registry_records(self, records: Sequence[ConsumerRecord]) -> None:
        """Apply the changes metering can apply and refuse the others with their
        reason (`registry.decide`), in one transaction. A refused change is stored
        with its bytes and put on the dead-letter topic with its reason before the
        transaction commits, so it is published at least once and stored once; it is
        not retried, since trying again gives the same answer."""
        batch = [registry.read(record.value or b"") for record in records]
        async with self.store.unit() as unit:
            state, answered = await unit.registry([received.change_id for received in batch])
            decision = registry.decide(batch, state, answered)
            applied = await unit.apply_registry_changes(decision.applied)
            refused = await unit.refuse_registry_changes([
                RefusedChange(batch[position].change_id, change.kind if (change := batch[position].change) else None,
                              change.entity_id if change else None, reason, batch[position].value,
                              records[position].topic, records[position].partition, records[position].offset)
                for position, reason in decision.refused], self.runtime.now())
            by_id = {received.change_id: record for received, record in zip(batch, records, strict=True)}
            for item in refused:
                await self.runtime.dead_letter(by_id[item.change_id], item.reason)
        for item in refused:
            log.warning("registry_change_refused", change_id=str(item.change_id), kind=item.kind, entity_id=item.entity_id,
                        reason=item.reason)
        log.info("registry_applied", applied=applied, refused=len(refused), received=len(records))

def _counts(outcome: domain.Sorted, consumed: int, published_usage: int, stored: list[RejectedUsage]) -> dict[str, int]:
    counts = {"accepted": len(outcome.fresh), "duplicates": outcome.duplicates, "echoes": outcome.echoes,
              "consumed": consumed, "published_usage": published_usage, "rejected": len(stored)}
    for item in stored:
        name = f"rejected.{item.rejection.reason_code}"
        counts[name] = counts.get(name, 0) + 1
    return counts
