"""Replay: every balance rebuilt from the log (tokens.priced) or from the
Priced in the ledger's journal, as of an event time, and compared with the ledger's
own projection (its balances table, or its journal at a past time)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

import asyncpg
import msgspec

from tokenhub.audit.balances import (
    ACCOUNT_TOTALS,
    FIGURES_DECODER,
    PRICED_DECODER,
    Balances,
    Difference,
    PricedFacts,
    PricedFigures,
    diff,
    figures_document,
    figures_of,
    rebuild,
)
from tokenhub.audit.log import Progress, event_id, read_topic, silent
from tokenhub.audit.reprice import Repricing, load_pricing_inputs, reprice
from tokenhub.contracts.stored import StoredPayloadError, unpack
from tokenhub.contracts.topics import TOKENS_PRICED

SELECT_PRICED_ARCHIVE: Final = "select priced as payload from ledger.journal"  # sums need no order
# The journal read in parts of its heap (a TID range scan each), on connections of
# their own: the database sends one part while this process decodes another.
SELECT_JOURNAL_PAGES: Final = "select pg_relation_size('ledger.journal') / current_setting('block_size')::bigint"
SELECT_PRICED_ARCHIVE_PART: Final = """
select priced as payload from ledger.journal where ctid >= $1::tid and ($2::tid is null or ctid < $2::tid)
"""
ARCHIVE_PARTS: Final = 2
"""Parts read at once: on two cores, the database's and this process's, more parts gain nothing."""
SELECT_ARCHIVE_COUNT: Final = "select count(*) from ledger.journal"
SELECT_PROJECTION: Final = "select ledger, account, debit_total, credit_total from ledger.balances"
SELECT_JOURNAL_AS_OF: Final = ACCOUNT_TOTALS.format(where="where j.event_time <= $1")


async def priced_from_topic(bootstrap_servers: str, expected: int, idle_timeout_s: float,
                            progress: Progress = silent) -> tuple[list[PricedFacts], int]:
    """Distinct Priced on tokens.priced, the first copy of each id kept (the one
    the ledger posted), and how many later copies had other content."""
    records = await read_topic(bootstrap_servers, TOKENS_PRICED.name, expected=expected, idle_timeout_s=idle_timeout_s,
                               distinct=event_id, progress=progress)
    kept: dict[str, PricedFacts] = {}
    conflicts = 0
    for record in records:
        try:
            event = PRICED_DECODER.decode(record.value)
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue  # the ledger dead-letters what it cannot read; so does replay
        previous = kept.setdefault(event.id, event)
        if previous is not event and previous != event:
            conflicts += 1
    return list(kept.values()), conflicts


class NotReadable(ValueError):
    """An archived event is not JSON, or its figures are missing or of the wrong type."""


async def priced_from_archive(source: asyncpg.Connection | asyncpg.Pool) -> list[PricedFigures]:
    """The figures of every Priced in the journal; from a pool, read in
    ARCHIVE_PARTS parts at once (the last part open-ended, so a row appended
    meanwhile is read as a single query would read it, or not at all)."""
    decode = FIGURES_DECODER.decode
    try:
        if not isinstance(source, asyncpg.Pool):
            return [decode(unpack(row[0])) for row in await source.fetch(SELECT_PRICED_ARCHIVE)]
        pages = await source.fetchval(SELECT_JOURNAL_PAGES)
        bounds = [(pages * part // ARCHIVE_PARTS, 0) for part in range(ARCHIVE_PARTS)] + [None]

        async def part(index: int) -> list[PricedFigures]:
            async with source.acquire() as connection:
                rows = await connection.fetch(SELECT_PRICED_ARCHIVE_PART, bounds[index], bounds[index + 1])
            return [decode(unpack(row[0])) for row in rows]

        parts = await asyncio.gather(*(part(index) for index in range(ARCHIVE_PARTS)))
    except (msgspec.DecodeError, msgspec.ValidationError, StoredPayloadError) as error:
        raise NotReadable(f"an archived Priced cannot be read: {error}") from None
    return [figures for events in parts for figures in events]


async def priced_events_from_archive(connection: asyncpg.Connection) -> list[PricedFacts]:
    """The facts repricing needs as well (causes, book versions)."""
    try:
        return [PRICED_DECODER.decode(unpack(row["payload"])) for row in await connection.fetch(SELECT_PRICED_ARCHIVE)]
    except (msgspec.DecodeError, msgspec.ValidationError, StoredPayloadError) as error:
        raise NotReadable(f"a Priced in the journal cannot be read: {error}") from None


async def projection(connection: asyncpg.Connection, as_of: datetime | None) -> Balances:
    """The ledger's answer: its balances table now, its journal at a past time."""
    if as_of is None:
        return figures_of(await connection.fetch(SELECT_PROJECTION))
    return figures_of(await connection.fetch(SELECT_JOURNAL_AS_OF, as_of))


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

    def document(self) -> dict[str, Any]:
        """The report as JSON of a stable shape (`tokenhub replay --json`), amounts exact."""
        document: dict[str, Any] = {
            "ok": self.ok,
            "source": self.source,
            "as_of": self.as_of.isoformat() if self.as_of else None,
            "bu": self.bu,
            "events": self.events,
            "conflicting_copies": self.conflicts,
            "differences": [{"bu": difference.bu, "figure": difference.figure, "rebuilt": f"{difference.rebuilt:f}",
                             "projected": f"{difference.projected:f}", "row": difference.row(self.as_of)}
                            for difference in self.differences],
            "balances": {bu: figures_document(values) for bu, values in sorted(self.rebuilt.items())
                         if self.bu is None or bu == self.bu},
        }
        if self.repricing is not None:
            document["reprice"] = {
                "recomputed": len(self.repricing.amounts),
                "adjustments_kept": self.repricing.kept,
                "mismatches": [{"priced_id": priced_id, "kind": kind, "recorded": f"{recorded:f}", "recomputed": f"{recomputed:f}"}
                               for priced_id, kind, recorded, recomputed in self.repricing.mismatches],
                "unrecomputable": [{"priced_id": priced_id, "reason": why} for priced_id, why in self.repricing.unrecomputable],
                "differences": [{"bu": difference.bu, "figure": difference.figure, "repriced": f"{difference.rebuilt:f}",
                                 "projected": f"{difference.projected:f}"} for difference in self.repriced_differences],
            }
        return document


async def replay(pool: asyncpg.Pool, bootstrap_servers: str | None, *, source: str = "topic", bu: str | None = None,
                 as_of: datetime | None = None, with_reprice: bool = False, idle_timeout_s: float = 3.0,
                 progress: Progress = silent) -> ReplayReport:
    """Rebuild balances from tokens.priced or the ledger's archive, as of an
    event time, and diff them against the ledger's projection."""
    async with pool.acquire() as connection:
        expected = await connection.fetchval(SELECT_ARCHIVE_COUNT)
        projected = await projection(connection, as_of)
        archived: list[PricedFigures] | list[PricedFacts] | None = None
        if source == "archive" and with_reprice:
            archived = await priced_events_from_archive(connection)  # repricing needs whole events
        inputs = await load_pricing_inputs(connection) if with_reprice else None
    if source == "archive" and not with_reprice:
        archived = await priced_from_archive(pool)  # rebuilding balances needs their figures only
    conflicts = 0
    events: list[PricedFigures] | list[PricedFacts]
    if archived is not None:
        events = archived
        progress("read ledger.journal", len(events), len(events))
    else:
        if not bootstrap_servers:
            raise ValueError("replay from the topic needs a broker")
        events, conflicts = await priced_from_topic(bootstrap_servers, expected, idle_timeout_s, progress)
    rebuilt = rebuild(events, as_of)
    report = ReplayReport(len(events), rebuilt, projected, diff(rebuilt, projected, bu), source, as_of, bu, conflicts)
    if inputs is not None:
        scoped = [event for event in events if bu is None or bu in (event.payer_bu, event.consumer_bu, event.provider_bu)]
        report.repricing = reprice(scoped if bu else events, *inputs)
        repriced = rebuild(events, as_of, report.repricing.amounts)
        report.repriced_differences = diff(repriced, projected, bu)
    return report
