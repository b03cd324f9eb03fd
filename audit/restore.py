"""Restore: a ledger rebuilt into an empty, migrated database from the Priced
it archived (or that were published), posted in the batches and at the posting
times of the ledger being restored, so its hash chains come out entry for entry
as they were published and printed on invoices.

Unlike replay and verify, restore posts through the ledger's own shell
(`post_values`, `apply_budget_values`) on purpose: it rebuilds a ledger, it
does not judge one; `tokenhub verify` then judges the result."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Final

import asyncpg

from tokenhub.audit.log import PROGRESS_EVERY, Progress, TopicRecord, event_id, loads_many, read_topic, silent
from tokenhub.audit.replay import SELECT_ARCHIVE_COUNT
from tokenhub.contracts.periods import parse_time
from tokenhub.contracts.stored import unpack
from tokenhub.contracts.topics import BUDGETS_CONFIGURED, LEDGER_POSTED, TOKENS_PRICED
from tokenhub.infra.migrate import migrate
from tokenhub.services.common.db import create_pool
from tokenhub.services.ledger.adapters.store import LedgerUnit
from tokenhub.services.ledger.handlers import apply_budget_values, post_values

RESTORE_BATCH_MAX: Final = 1_000
"""Priced per restore transaction: the ledger's own batch size."""
SELECT_BUDGET_ARCHIVE: Final = "select payload from ledger.budgets order by set_at, budget_id"
SELECT_ARCHIVE_PLACED: Final = """
select priced as payload, chain, sequence, posted_at, overage from ledger.journal order by chain, sequence
"""
TARGET_EMPTY: Final = "select (select count(*) from ledger.journal) + (select count(*) from ledger.budgets)"
CLEAR_OUTBOX: Final = """
with dropped as (delete from ledger.outbox returning cardinality(topics) as events)
select coalesce(sum(events), 0) from dropped
"""
CLEAR_OFFSETS: Final = "delete from ledger.offsets"
"""Offsets are positions on the restored ledger's broker, not facts of the ledger:
the rebuilt one starts without them and recognises what it has posted by Priced id."""


@dataclass(frozen=True)
class Placement:
    """Where the ledger being restored posted a Priced: its chain, sequence and posting time."""

    chain: str
    sequence: int
    posted_at: datetime
    overage: bool = False
    """Marked as posted over quota: the rebuilt entry keeps the mark (budgets are
    restored first, so the marks cannot be decided again as they were)."""


def posted_priced_id(value: bytes) -> object:
    try:
        return loads_many(value).get("priced_id")
    except ValueError:
        return None


def placements_from_posted(records: Iterable[TopicRecord]) -> dict[object, Placement]:
    """Priced id -> placement, from ledger.posted (the first copy of each id)."""
    placements: dict[object, Placement] = {}
    for record in records:
        try:
            event = loads_many(record.value)  # ids, sequences and times only: no amounts
            placements.setdefault(event["priced_id"], Placement(event["chain"], int(event["sequence"]), parse_time(event["posted_at"]),
                                                                event.get("overage") is True))
        except (ValueError, KeyError, TypeError):
            continue  # verify names unreadable ledger.posted records; restore posts those Priced afresh
    return placements


def posting_groups(placed: list[tuple[bytes, Placement | None]], now: datetime,
                   size_max: int) -> list[tuple[datetime, list[bytes]]]:
    """The Priced in the order and batches the original ledger posted them, each
    batch with its posting time, so every chain is rebuilt entry for entry with
    the same sequences and hashes (and matches the heads published and printed
    on invoices). Within a chain the sort key is the running latest posting
    time, so chain order holds even if instances' clocks disagreed. Priced the
    original never posted come last, posted `now`. The sort is stable: of two
    copies of one id the first read stays first."""
    latest: dict[str, datetime] = {}
    keyed: list[tuple[tuple[int, datetime, str, int], datetime, bytes]] = []
    for value, place in sorted(placed, key=lambda item: (item[1].chain, item[1].sequence) if item[1] else ("", 0)):
        if place is None:
            keyed.append(((1, now, "", 0), now, value))
            continue
        latest[place.chain] = max(latest.get(place.chain, place.posted_at), place.posted_at)
        keyed.append(((0, latest[place.chain], place.chain, place.sequence), place.posted_at, value))
    keyed.sort(key=lambda item: item[0])
    groups: list[tuple[datetime, list[bytes]]] = []
    for _, posted_at, value in keyed:
        if groups and groups[-1][0] == posted_at and len(groups[-1][1]) < size_max:
            groups[-1][1].append(value)
        else:
            groups.append((posted_at, [value]))
    return groups


@dataclass(frozen=True)
class RestoreReport:
    priced: int
    posted: int
    duplicates: int
    conflicts: int
    budgets: int
    alerts: int
    outbox_cleared: int


async def restore(source_pool: asyncpg.Pool, target_url: str, bootstrap_servers: str | None, *, source: str,
                  now: datetime, zone: str, idle_timeout_s: float = 3.0, progress: Progress = silent) -> RestoreReport:
    """Rebuild a ledger into an empty, migrated database by posting every
    archived (or published) Priced, budgets first, in the batches and at the
    posting times of the ledger being restored (its journal, or ledger.posted),
    so the rebuilt chains equal the published ones. The rebuilt outbox is
    dropped: those events were published by the ledger being restored."""
    await migrate(target_url)
    if source == "archive":
        async with source_pool.acquire() as connection:
            placed = [(unpack(row["payload"]), Placement(row["chain"], row["sequence"], row["posted_at"], row["overage"]))
                      for row in await connection.fetch(SELECT_ARCHIVE_PLACED)]
            budget_values = [bytes(row["payload"]) for row in await connection.fetch(SELECT_BUDGET_ARCHIVE)]
    else:
        if not bootstrap_servers:
            raise ValueError("restore from the topics needs a broker")
        async with source_pool.acquire() as connection:
            expected = await connection.fetchval(SELECT_ARCHIVE_COUNT)
        records = await read_topic(bootstrap_servers, TOKENS_PRICED.name, expected=expected,
                                   idle_timeout_s=idle_timeout_s, distinct=event_id, progress=progress)
        placements = placements_from_posted(await read_topic(
            bootstrap_servers, LEDGER_POSTED.name, expected=expected, idle_timeout_s=idle_timeout_s,
            distinct=posted_priced_id, progress=progress))
        placed = [(record.value, placements.get(event_id(record.value))) for record in records]
        budget_values = [record.value for record in await read_topic(bootstrap_servers, BUDGETS_CONFIGURED.name,
                                                                     idle_timeout_s=idle_timeout_s)]
    groups = posting_groups(placed, now, RESTORE_BATCH_MAX)
    marked = {str(event_id(value)) for value, place in placed if place is not None and place.overage}
    priced_count = len(placed)
    target_pool = await create_pool(target_url, size_max=1)
    posted = duplicates = conflicts = alerts = 0
    try:
        async with target_pool.acquire() as target:
            if await target.fetchval(TARGET_EMPTY):
                raise ValueError("the target database already holds a ledger; restore needs an empty one")
            async with target.transaction():
                stored, raised = await apply_budget_values(LedgerUnit(target), budget_values, now=now, zone=zone)
                alerts += len(raised)
            done = 0
            for posted_at, values in groups:
                async with target.transaction():
                    outcome = await post_values(LedgerUnit(target), values, now=posted_at, zone=zone, overage=marked)
                posted += len(outcome.posted)
                duplicates += outcome.duplicates
                conflicts += len(outcome.conflicts)
                alerts += len(outcome.alerts)
                done += len(values)
                if done // PROGRESS_EVERY != (done - len(values)) // PROGRESS_EVERY or done == priced_count:
                    progress("restore", done, priced_count)
            cleared = int(await target.fetchval(CLEAR_OUTBOX))
            await target.execute(CLEAR_OFFSETS)
    finally:
        await target_pool.close()
    return RestoreReport(priced_count, posted, duplicates, conflicts, len(stored), alerts, cleared)

