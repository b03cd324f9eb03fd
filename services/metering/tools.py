"""Metering's operations for tools (the CLI, the HTTP API, tests): publish
registry changes and wait for metering to apply or refuse them; send usage and wait
for metering's answer to every message (accepted, a duplicate, or rejected with
its reason); send rejected usage back; API keys for HTTP ingest. What they ask
metering is in `queries.py`; what they publish goes on metering's input topics,
as any producer's would."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import asyncpg
import orjson

from tokenhub.client import UsageClient
from tokenhub.contracts.canonical import canonical_json, sha256_hex
from tokenhub.contracts.registry import ConversionTable, FundingAgreement, RegistryChanged, RegistryKind, registry_change
from tokenhub.contracts.topics import REGISTRY_CHANGED
from tokenhub.infra.pipeline import Timeout, wait_until
from tokenhub.infra.settings import Settings, clock
from tokenhub.services.common.db import pooled
from tokenhub.services.common.kafka import client_options, send_events, usage_client_options
from tokenhub.services.metering import domain, queries, registry
from tokenhub.services.metering.adapters import keys, rejected
from tokenhub.services.metering.queries import FundingRow, Outcome, Rejection, SentUsage, Snapshot, Verdict

REGISTRY_WAIT_S: Final = 60.0
"""How long registry commands wait for metering's answer by default: it applies
or refuses a change within seconds; a minute covers a service starting (as emit's)."""
ANSWER_WAIT_S: Final = 60.0
"""How long sending usage waits for metering's answer by default: metering
answers a batch within a second or two; a minute covers a service starting."""
REJECTION_REASONS: Final = tuple(sorted(value for name, value in vars(domain.Reason).items() if name.isupper()))

Message = tuple[bytes, bytes]
"""A usage message as sent: its key (the consumer BU) and its value."""


# --- the registry -----------------------------------------------------------------------------

async def publish_changes(settings: Settings, changes: Sequence[RegistryChanged]) -> None:
    await send_events(settings.require_stack()[0], REGISTRY_CHANGED.name,
                      [(change.entity_id.encode(), canonical_json(change)) for change in changes], settings=settings)


async def publish_change(settings: Settings, kind: RegistryKind, entity: Any, entity_id: str, actor: str,
                         reason: str) -> RegistryChanged:
    """One registry entity changed, by `actor` for `reason`, now."""
    change = registry_change(kind, entity, entity_id, actor, reason, clock(settings))
    await publish_changes(settings, [change])
    return change


async def conversion_table_at(database_url: str, moment: datetime) -> ConversionTable | None:
    """The conversion table in force at `moment`, from the database alone (a
    price map's import works without a broker)."""
    async with pooled(database_url, size_max=1) as pool:
        return await queries.conversion_table_at(pool, moment)


def refusals(changes: Sequence[RegistryChanged], known: registry.Registry) -> list[str]:
    """Why metering would refuse any of these changes, checked as it will check
    them: in order, against the registry as it stands (`known`), so a tool
    publishes nothing that metering would refuse."""
    received = [registry.read(canonical_json(change)) for change in changes]
    return [reason for _, reason in registry.decide(received, known, answered=()).refused]


async def registry_outcomes(settings: Settings, changes: Sequence[RegistryChanged], wait_s: float) -> list[Outcome]:
    """What metering made of each change (applied, refused with its reason, or
    None), polled until it has answered every one or `wait_s` passed."""
    ids = [change.id for change in changes]
    outcomes: list[Outcome] = [None] * len(changes)
    async with _database(settings) as pool:
        async def answered() -> bool:
            nonlocal outcomes
            outcomes = await queries.registry_outcomes(pool, ids)
            return all(outcome is not None for outcome in outcomes)
        try:
            await wait_until(answered, wait_s, "metering's answer to the registry changes")
        except Timeout:
            pass  # the outcomes say which are still unanswered
    return outcomes


def ended_agreement(row: FundingRow, at: datetime) -> FundingAgreement:
    """A stored funding agreement, ending at `at`."""
    return FundingAgreement(agreement_id=row["agreement_id"], consumer_bu=row["consumer_bu"], app=row["app"],
                            model_pattern=row["model_pattern"], payers=row["payers"],
                            effective_from=row["effective_from"], effective_to=at)


# --- usage in, and metering's answers -----------------------------------------------------------

def usage_lines(lines: Iterable[str]) -> list[Message]:
    """JSON-lines CloudEvents as sent, keyed by their consumer BU where they name one;
    a line that does not parse goes as it is (metering stores and rejects it with its reason)."""
    messages = []
    for line in lines:
        if not line.strip():
            continue
        try:
            consumer = orjson.loads(line).get("data", {}).get("consumer_bu", "")
        except (orjson.JSONDecodeError, AttributeError):
            consumer = ""
        messages.append((str(consumer).encode(), line.strip().encode()))
    return messages


def sent_usage(value: bytes, headers: Sequence[tuple[str, bytes]] = ()) -> SentUsage:
    """How metering will know a message: by its key and content, or by its bytes
    (read with metering's own envelope parser, so the hash is the one it stores)."""
    original = sha256_hex(value)
    try:
        usage = domain.validate_envelope(domain.parse_envelope(domain.RawUsage(value, tuple(headers))))
    except domain.UsageError as error:
        found = error.rejection
        key = (found.usage_source, found.usage_id) if found.usage_source and found.usage_id else None
        return SentUsage(key, None, original)
    return SentUsage((usage.source, usage.id), sha256_hex(canonical_json(usage)), original)


async def answers(pool: asyncpg.Pool, settings: Settings, sent: list[SentUsage], before: Snapshot,
                  offsets: dict[int, int], wait_s: float) -> list[Verdict]:
    """Metering's answers, polled until every message has one, or metering has
    read past everything sent, or `wait_s` passed (None for a message still unanswered)."""
    verdicts: list[Verdict] = []

    async def answered() -> bool:
        nonlocal verdicts
        verdicts = await queries.answers(pool, sent, before)
        if all(verdict is not None for verdict in verdicts):
            return True
        read = await queries.metering_read_through(settings.require_stack()[0], sorted(offsets),
                                                   **client_options(settings))
        if all(read[partition] > offset for partition, offset in offsets.items()):
            verdicts = await queries.answers(pool, sent, before, read_past=True)
            return True
        return False
    try:
        await wait_until(answered, wait_s, "metering's answers")
    except Timeout:
        pass  # the report says how many are still unanswered
    return verdicts


@dataclass(frozen=True)
class EmitReport:
    """What metering made of the usage sent; the figures are None when nobody waited."""

    sent: int
    waited_s: float
    accepted: int | None
    duplicates: int | None
    rejected: int | None
    rejected_by_reason: dict[str, int] | None
    unanswered: int | None


def emit_report(count: int, verdicts: list[Verdict] | None, wait_s: float) -> EmitReport:
    if verdicts is None:
        return EmitReport(count, 0, None, None, None, None, None)
    reasons: dict[str, int] = {}
    for verdict in verdicts:
        if isinstance(verdict, Rejection):
            reasons[verdict.reason_code] = reasons.get(verdict.reason_code, 0) + 1
    return EmitReport(count, wait_s, verdicts.count("accepted"), verdicts.count("duplicate"), sum(reasons.values()),
                      dict(sorted(reasons.items())), verdicts.count(None))


async def emit(settings: Settings, messages: Sequence[Message], wait_s: float,
               progress: Callable[[Sequence[Message]], Iterable[Message]] | None = None) -> EmitReport:
    """Send usage to usage.reported and, unless `wait_s` is 0, wait for
    metering's answer to each message. `progress` wraps the messages as they go."""
    bootstrap_servers, _ = settings.require_stack()
    sent = [sent_usage(value) for _, value in messages]
    async with contextlib.AsyncExitStack() as stack:
        pool = (await stack.enter_async_context(_database(settings))) if wait_s > 0 else None
        before = await queries.snapshot(pool, sent) if pool is not None else None
        async with UsageClient(bootstrap_servers, **usage_client_options()) as client:
            count = await client.send_raw(progress(messages) if progress else messages)
        verdicts = (await answers(pool, settings, sent, before, client.last_offsets, wait_s)
                    if pool is not None and before else None)
    return emit_report(count, verdicts, wait_s)


class NoSuchRejected(LookupError):
    """No rejected usage has this id."""


async def resubmit(settings: Settings, rejected_id: uuid.UUID, corrected: Path | None, by: str,
                   wait_s: float) -> Verdict:
    """Send rejected usage back, as it was (with the headers it came with) or
    corrected from a file (without them), mark it resubmitted `by` someone, and
    wait up to `wait_s` for metering's answer (None: no answer, or not waited for)."""
    bootstrap_servers, _ = settings.require_stack()
    async with _database(settings) as pool:
        original = await queries.rejected_original(pool, rejected_id)
        if original is None:
            raise NoSuchRejected(rejected_id)
        value = corrected.read_bytes().strip() if corrected else original.value
        headers = [] if corrected else original.headers
        sent = [sent_usage(value, headers)]
        before = await queries.snapshot(pool, sent)
        async with UsageClient(bootstrap_servers, **usage_client_options()) as client:
            await client.send_raw([(b"", value)], headers=headers or None)
        await rejected.mark_resubmitted(pool, rejected_id, clock(settings), by)
        if wait_s <= 0:
            return None
        return (await answers(pool, settings, sent, before, client.last_offsets, wait_s))[0]


# --- API keys for HTTP ingest -----------------------------------------------------------------

async def create_key(pool: asyncpg.Pool, sources: list[str], actor: str, reason: str) -> tuple[str, str]:
    """(key id, the key): the key is shown once; only its SHA-256 is stored."""
    async with pool.acquire() as connection:
        return await keys.create(connection, sources, actor, reason)


async def revoke_key(pool: asyncpg.Pool, key_id: str) -> bool:
    """False when no active key has this id."""
    async with pool.acquire() as connection:
        return await keys.revoke(connection, key_id)


def _database(settings: Settings) -> contextlib.AbstractAsyncContextManager[asyncpg.Pool]:
    return pooled(settings.require_stack()[1], size_max=1)
