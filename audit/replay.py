"""Replay: every balance rebuilt from the log (tokens.priced) or from the
Priced in the ledger's journal, as of an event time, and compared with the ledger's
own projection (its balances table, or its journal at a past time)."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import re
import signal
import time
from dataclasses import dataclass, field
from datetime import datetime
from multiprocessing.connection import Connection as Pipe, wait
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
    add_counts,
    balances_in_units,
    count_in_units,
    diff,
    figures_document,
    figures_of,
    rebuild,
)
from tokenhub.audit.log import Progress, event_id, read_topic, silent
from tokenhub.audit.reprice import Repricing, load_pricing_inputs, reprice
from tokenhub.contracts.stored import StoredPayloadError, unpack
from tokenhub.contracts.topics import TOKENS_PRICED
from tokenhub.services.common.db import COMMAND_TIMEOUT_S

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


ARCHIVE_WORKERS_MAX: Final = 8
"""Worker processes that read and count the archive at once, each with its own
database connection: beyond eight, the database's single writer of each part's
rows (one backend per part) is what waits, not the decoding."""
ARCHIVE_WORKER_PAGES_MIN: Final = 1_000
"""Journal pages (8 KB, about 19 entries each) below which the archive is
counted in this process: forking the workers and connecting each costs 20-30
ms, which on two cores about 20,000 entries pay back (measured: 5,000 entries
take 24-36 ms here and 34-46 ms in two workers; 20,000 take 86-150 ms and
93-111 ms; 60,000 take 384-419 ms and 222-234 ms)."""
CONNECT_TIMEOUT_S: Final = 10
"""A worker that cannot connect to the database within this fails the replay."""
ARCHIVE_WORKER_TIMEOUT_S: Final = CONNECT_TIMEOUT_S + 5 * COMMAND_TIMEOUT_S
"""A worker's read of its part is bounded by COMMAND_TIMEOUT_S, and decoding
what was read takes about four times as long as reading it (3.8 µs an event
against about 1): a worker not done after connecting, one read and five times
its bound is stuck (a lock held in the parent when it forked, say), and the
replay fails instead of waiting for it."""
SNAPSHOT_ID: Final = re.compile(r"[0-9A-F]+-[0-9A-F]+(-[0-9]+)?")
"""How PostgreSQL names an exported snapshot; SET TRANSACTION SNAPSHOT takes a literal, not a parameter."""


def archive_workers() -> int:
    """Worker processes for counting the archive: one per core (the database
    sends a part while its worker decodes the one before), none where this
    platform cannot fork (a spawned worker imports everything again)."""
    if "fork" not in multiprocessing.get_all_start_methods():
        return 0
    return min(os.cpu_count() or 1, ARCHIVE_WORKERS_MAX)


@dataclass(frozen=True)
class ArchivePart:
    """What a worker sends back: its part's counts (`balances.count_in_units`),
    events of other forms, and how many events it read; or why it could not."""

    counted: dict[str, list[int]]
    others: list[PricedFigures]
    events: int
    unreadable: str | None = None
    failed: str | None = None


async def balances_from_archive(pool: asyncpg.Pool, database_url: str | None, *, workers: int | None = None,
                                pages_min: int = ARCHIVE_WORKER_PAGES_MIN) -> tuple[int, Balances]:
    """Every balance rebuilt from the journal, and how many events it holds;
    equal to `rebuild(await priced_from_archive(pool))` to the last digit and in
    the same order of BUs.

    Where this platform forks, a database URL is given and the journal has at
    least ARCHIVE_WORKER_PAGES_MIN pages, its heap is read in one part per
    worker process, each counted in integers there; this process adds the
    integers and makes Decimals once. All parts read one snapshot, exported
    here: together they read exactly the rows a single query would when the
    snapshot was taken (the last part open-ended), and no row committed after it."""
    workers = archive_workers() if workers is None else workers
    if database_url and workers >= 2:
        async with pool.acquire() as connection, connection.transaction(isolation="repeatable_read", readonly=True):
            pages = await connection.fetchval(SELECT_JOURNAL_PAGES)
            if pages >= pages_min:
                snapshot = await connection.fetchval("select pg_export_snapshot()")
                # The snapshot stays importable while this transaction is open: until every worker is done.
                return await _count_in_workers(database_url, snapshot, pages, workers)
    events = await priced_from_archive(pool)
    return len(events), rebuild(events)


async def _count_in_workers(database_url: str, snapshot: str, pages: int, workers: int) -> tuple[int, Balances]:
    if not SNAPSHOT_ID.fullmatch(snapshot):
        raise ValueError(f"the database exported a snapshot named {snapshot!r}, not in the form PostgreSQL names them")
    bounds = [(pages * part // workers, 0) for part in range(workers)] + [None]
    context = multiprocessing.get_context("fork")
    processes = []
    receivers = []
    try:
        for index in range(workers):
            receiver, sender = context.Pipe(duplex=False)
            process = context.Process(target=_archive_worker, name=f"tokenhub-replay-{index}", daemon=True,
                                      args=(sender, database_url, snapshot, bounds[index], bounds[index + 1]))
            process.start()
            sender.close()  # this process's copy: the worker's end closing is what ends the pipe
            processes.append(process)
            receivers.append(receiver)
        parts = await asyncio.to_thread(_collect, processes, receivers, time.monotonic() + ARCHIVE_WORKER_TIMEOUT_S)
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
            process.join()
        for receiver in receivers:
            receiver.close()
    counted: dict[str, list[int]] = {}
    others: list[PricedFigures] = []
    for part in parts:  # in the heap's order, as one query reads it
        if part.unreadable is not None:
            raise NotReadable(f"an archived Priced cannot be read: {part.unreadable}")
        if part.failed is not None:
            raise NotReadable(f"the archive could not be read: {part.failed}")
    for part in parts:
        add_counts(counted, part.counted)
        others += part.others
    return sum(part.events for part in parts), balances_in_units(counted, others)


def _collect(processes: list[multiprocessing.process.BaseProcess], receivers: list[Pipe],
             deadline: float) -> list[ArchivePart]:
    """Each worker's part, waiting on its pipe and on the process itself: a
    worker that ends without sending (killed, out of memory) raises at once,
    and one still working at the deadline raises then."""
    parts: dict[int, ArchivePart] = {}
    while len(parts) < len(processes):
        waiting = [index for index in range(len(processes)) if index not in parts]
        ready = wait([receivers[index] for index in waiting] + [processes[index].sentinel for index in waiting],
                     timeout=max(0.0, deadline - time.monotonic()))
        if not ready:
            raise NotReadable(f"the archive could not be read: {len(waiting)} of its readers were not done "
                              f"after {ARCHIVE_WORKER_TIMEOUT_S} s")
        for index in waiting:
            if receivers[index] in ready or processes[index].sentinel in ready:
                try:
                    parts[index] = receivers[index].recv()
                except EOFError:
                    processes[index].join()
                    raise NotReadable(f"the archive could not be read: its reader {processes[index].name} ended "
                                      f"with exit code {processes[index].exitcode} before sending its part") from None
    return [parts[index] for index in range(len(processes))]


def _archive_worker(sender: Pipe, database_url: str, snapshot: str, lower: tuple[int, int],
                    upper: tuple[int, int] | None) -> None:
    """In a forked process: read one part of the journal in the exported
    snapshot, count it, send the counts. The parent's event loop and
    connections came along with the fork; none of them is touched here."""
    with contextlib.suppress(ValueError):  # a signal here must not wake the parent's loop through its pipe
        signal.set_wakeup_fd(-1)
    try:
        part = asyncio.run(_count_part(database_url, snapshot, lower, upper))
    except (msgspec.DecodeError, msgspec.ValidationError, StoredPayloadError) as error:
        part = ArchivePart({}, [], 0, unreadable=str(error))
    except Exception as error:  # noqa: BLE001 - sent to the parent, which raises it as NotReadable
        part = ArchivePart({}, [], 0, failed=f"{type(error).__name__}: {error}")
    sender.send(part)
    sender.close()


async def _count_part(database_url: str, snapshot: str, lower: tuple[int, int], upper: tuple[int, int] | None) -> ArchivePart:
    connection = await asyncpg.connect(database_url, timeout=CONNECT_TIMEOUT_S, command_timeout=COMMAND_TIMEOUT_S)
    try:
        async with connection.transaction(isolation="repeatable_read", readonly=True):
            await connection.execute(f"set transaction snapshot '{snapshot}'")
            rows = await connection.fetch(SELECT_PRICED_ARCHIVE_PART, lower, upper)
    finally:
        await connection.close()
    decode = FIGURES_DECODER.decode
    counted: dict[str, list[int]] = {}
    others: list[PricedFigures] = []
    count_in_units((decode(unpack(row[0])) for row in rows), counted, others)
    return ArchivePart(counted, others, len(rows))


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
                 progress: Progress = silent, database_url: str | None = None) -> ReplayReport:
    """Rebuild balances from tokens.priced or the ledger's archive, as of an
    event time, and diff them against the ledger's projection. With
    `database_url`, the whole ledger's balances from the archive are counted
    in worker processes of their own (`balances_from_archive`)."""
    if source == "archive" and not with_reprice and as_of is None and bu is None:
        async with pool.acquire() as connection:
            projected = await projection(connection, None)
        events_read, rebuilt = await balances_from_archive(pool, database_url)
        progress("read ledger.journal", events_read, events_read)
        return ReplayReport(events_read, rebuilt, projected, diff(rebuilt, projected), source)
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
