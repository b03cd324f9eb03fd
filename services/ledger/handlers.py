"""The ledger's shell: a batch of Priced becomes journal entries, archive rows,
balance and month-to-date spend updates, budget alerts and outbox rows in ONE
transaction; offsets follow. Budget changes and the start of a new month are
handled the same way: load, decide in the core, write in one transaction."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg
import structlog
from aiokafka.structs import ConsumerRecord

from tokenhub.contracts.budgets import BudgetAlert, BudgetSet, ConflictingDuplicate
from tokenhub.contracts.canonical import canonical_json, sha256_hex
from tokenhub.contracts.events import LedgerPosted, Priced, decode
from tokenhub.contracts.ids import derive_id
from tokenhub.contracts.periods import parse
from tokenhub.contracts.topics import BUDGET_ALERTS, LEDGER_POSTED
from tokenhub.services.common.outbox import OutboxRow, bump_counters, stage
from tokenhub.services.common.runtime import Runtime, maybe_crash
from tokenhub.services.ledger import budgets, domain
from tokenhub.services.ledger.adapters import store

SCHEMA = "ledger"
log = structlog.get_logger()

Fault = Callable[[str], None]


def _no_fault(point: str) -> None:
    return None


@dataclass
class BatchOutcome:
    received: int = 0
    posted: list[LedgerPosted] = field(default_factory=list)
    conflicts: list[uuid.UUID] = field(default_factory=list)
    alerts: list[BudgetAlert] = field(default_factory=list)

    @property
    def duplicates(self) -> int:
        return self.received - len(self.posted) - len(self.conflicts)


async def post_records(runtime: Runtime, records: Sequence[ConsumerRecord]) -> None:
    async with runtime.db().acquire() as connection, connection.transaction():
        outcome = await post_values(connection, [record.value for record in records], now=runtime.now(),
                                    zone=runtime.settings.timezone,
                                    fault=lambda point: maybe_crash(runtime.settings, point))
    maybe_crash(runtime.settings, "ledger.after_db_commit")
    if outcome.conflicts:
        log.error("conflicting_duplicates", priced_ids=[str(priced_id) for priced_id in outcome.conflicts])
    log.info("priced_posted", received=outcome.received, posted=len(outcome.posted), duplicates=outcome.duplicates,
             conflicts=len(outcome.conflicts), budget_alerts=len(outcome.alerts))


async def post_values(connection: asyncpg.Connection, values: Sequence[bytes], *, now: datetime, zone: str,
                      fault: Fault = _no_fault) -> BatchOutcome:
    """Post a batch of Priced payloads inside the caller's transaction. Exactly
    once by id: the archive's primary key decides which copy is new."""
    events = [decode(Priced, value) for value in values]
    contents = [domain.priced_content(event) for event in events]  # dumped once: archive bytes and entry content
    payloads = [canonical_json(content) for content in contents]
    hashes = [sha256_hex(payload) for payload in payloads]
    first: dict[uuid.UUID, int] = {}
    for index, event in enumerate(events):
        first.setdefault(event.id, index)
    unique = sorted(first.values())
    new_ids = await store.archive_priced(connection, [(events[index].id, hashes[index], payloads[index]) for index in unique])
    fresh_indexes = [index for index in unique if events[index].id in new_ids]
    fresh = [events[index] for index in fresh_indexes]
    outcome = BatchOutcome(received=len(events))
    outcome.conflicts = await _conflicting(connection, events, hashes, first, new_ids, now)
    outcome.posted = await _post(connection, fresh, [contents[index] for index in fresh_indexes], now)
    outcome.alerts = await _budgets_after_posting(connection, outcome.posted, now, zone)
    fault("ledger.mid_batch")
    await bump_counters(connection, SCHEMA, {
        "posted": len(outcome.posted), "duplicates": outcome.duplicates, "conflicts": len(outcome.conflicts),
        "budget_alerts": len(outcome.alerts),
    })
    return outcome


async def _conflicting(connection: asyncpg.Connection, events: list[Priced], hashes: list[str],
                       first: dict[uuid.UUID, int], new_ids: set[uuid.UUID], now: datetime) -> list[uuid.UUID]:
    """Same id, other content: post nothing, raise an alert once per distinct content."""
    suspects = [index for index, event in enumerate(events) if not (event.id in new_ids and first[event.id] == index)]
    if not suspects:
        return []
    rows = await connection.fetch(store.SELECT_ARCHIVE_HASHES, list({events[index].id for index in suspects}))
    kept = {row["priced_id"]: row["payload_sha256"] for row in rows}
    conflicts: list[uuid.UUID] = []
    staged: list[OutboxRow] = []
    for index in suspects:
        event, received = events[index], hashes[index]
        if received == kept[event.id]:
            continue
        conflicts.append(event.id)
        alert = ConflictingDuplicate(
            id=derive_id("alert", "conflicting_duplicate", str(event.id), received), event_time=now,
            cause_id=str(event.id), priced_id=event.id, payer_bu=event.payer_bu, stored_sha256=kept[event.id],
            received_sha256=received, detected_at=now,
        )
        raised = await connection.fetchval(store.INSERT_ALERT, alert.id, "conflicting_duplicate", {
            "priced_id": str(event.id), "stored_sha256": kept[event.id], "received_sha256": received})
        if raised is not None:
            staged.append(OutboxRow(BUDGET_ALERTS.name, event.payer_bu.encode(), canonical_json(alert)))
    await stage(connection, SCHEMA, staged)
    return conflicts


async def _post(connection: asyncpg.Connection, fresh: list[Priced], contents: list[dict[str, Any]],
                now: datetime) -> list[LedgerPosted]:
    if not fresh:
        return []
    heads = await store.lock_chain_heads(connection, [event.payer_bu for event in fresh])
    posted, payloads, new_heads = domain.post_batch(fresh, heads, now, contents)
    await store.write_entries(connection, posted, payloads)
    await store.update_balances(connection, domain.balance_deltas(posted))
    await store.save_chain_heads(connection, list(new_heads.values()))
    await stage(connection, SCHEMA, [
        OutboxRow(LEDGER_POSTED.name, entry.payer_bu.encode(), payload) for entry, payload in zip(posted, payloads, strict=True)
    ])
    return posted


# --- budgets -----------------------------------------------------------------------

async def _budgets_after_posting(connection: asyncpg.Connection, posted: list[LedgerPosted], now: datetime,
                                 zone: str) -> list[BudgetAlert]:
    """Month-to-date spend, then the budget alerts it causes: thresholds crossed,
    quotas exhausted, and quotas of earlier months restored as a later one begins."""
    if not posted:
        return []
    spend: dict[tuple[str, str, str], Decimal] = defaultdict(Decimal)
    causes: dict[str, str] = {}
    for entry in posted:
        spend[(entry.payer_bu, budgets.month_of(entry.event_time, zone), entry.consumer_bu)] += entry.amount
        causes[entry.payer_bu] = str(entry.priced_id)
    keys = sorted(spend)
    await connection.execute(store.UPSERT_PERIOD_SPEND, [key[0] for key in keys], [key[1] for key in keys],
                             [key[2] for key in keys], [spend[key] for key in keys])
    payers = sorted({key[0] for key in keys})
    await connection.execute(store.LOCK_PAYERS, payers)
    known = await _load_budgets(connection, payers)
    if not known:
        return []
    pairs = {(payer, month) for payer, month, _ in keys if any(budget.payer_bu == payer for budget in known)}
    return await _decide(connection, known, sorted({payer for payer, _ in pairs}), pairs, now, zone, causes)


async def apply_budget_records(runtime: Runtime, records: Sequence[ConsumerRecord]) -> None:
    async with runtime.db().acquire() as connection, connection.transaction():
        stored, alerts = await apply_budget_values(connection, [record.value for record in records], now=runtime.now(),
                                                   zone=runtime.settings.timezone)
        await bump_counters(connection, SCHEMA, {"budgets_set": len(stored), "budget_alerts": len(alerts)})
    log.info("budgets_applied", received=len(records), stored=len(stored), budget_alerts=len(alerts),
             budget_ids=[str(budget.id) for budget in stored])


async def apply_budget_values(connection: asyncpg.Connection, values: Sequence[bytes], *, now: datetime,
                              zone: str) -> tuple[list[BudgetSet], list[BudgetAlert]]:
    """Store new budgets, then re-decide every month they apply to that has spend
    or a quota state: a raised budget restores an exhausted quota."""
    stored: list[BudgetSet] = []
    for value in values:
        budget = decode(BudgetSet, value)
        created = await connection.fetchval(
            store.INSERT_BUDGET, budget.id, budget.payer_bu, budget.scope, budget.period_from, budget.amount,
            list(budget.thresholds_percent), budget.hard_limit, budget.currency, budget.actor, budget.reason,
            budget.set_at, canonical_json(budget))
        if created is not None:
            stored.append(budget)
    if not stored:
        return [], []
    payers = sorted({budget.payer_bu for budget in stored})
    await connection.execute(store.LOCK_PAYERS, payers)
    known = await _load_budgets(connection, payers)
    pairs: set[tuple[str, str]] = set()
    for budget in stored:
        months = {row["period"] for row in await connection.fetch(store.SELECT_SPEND_MONTHS, budget.payer_bu, budget.period_from)}
        months.add(max(budget.period_from, budgets.month_of(now, zone)))
        pairs |= {(budget.payer_bu, month) for month in months}
    causes = {budget.payer_bu: str(budget.id) for budget in stored}
    alerts = await _decide(connection, known, payers, pairs, now, zone, causes, raised=True)
    return stored, alerts


async def close_past_months(runtime: Runtime) -> int:
    """Restore quotas exhausted in a month that is over by the clock, even for a
    payer that has not consumed since (its gateway would otherwise wait forever)."""
    zone = runtime.settings.timezone
    now = runtime.now()
    async with runtime.db().acquire() as connection, connection.transaction():
        payers = sorted(row["payer_bu"] for row in await connection.fetch(
            store.SELECT_EXHAUSTED_PAYERS_BEFORE, budgets.month_of(now, zone)))
        if not payers:
            return 0
        await connection.execute(store.LOCK_PAYERS, payers)
        known = await _load_budgets(connection, payers)
        alerts = await _decide(connection, known, payers, set(), now, zone, {})
        await bump_counters(connection, SCHEMA, {"budget_alerts": len(alerts)})
    log.info("quota_months_closed", payers=payers, budget_alerts=len(alerts))
    return len(alerts)


async def _load_budgets(connection: asyncpg.Connection, payers: list[str]) -> list[BudgetSet]:
    return [decode(BudgetSet, row["payload"]) for row in await connection.fetch(store.SELECT_BUDGETS_OF, payers)]


async def _decide(connection: asyncpg.Connection, known: list[BudgetSet], payers: list[str], pairs: set[tuple[str, str]],
                  now: datetime, zone: str, causes: dict[str, str], *, raised: bool = False) -> list[BudgetAlert]:
    """Close the months before each payer's current one, then evaluate `pairs`
    (payer, month); stage every alert not raised before. Callers hold the payer locks."""
    latest = {row["payer_bu"]: row["period"] for row in await connection.fetch(store.SELECT_LATEST_SPEND_MONTHS, payers)}
    clock_month = budgets.month_of(now, zone)
    current = {payer: max(clock_month, latest.get(payer, clock_month)) for payer in payers}
    open_states = [row for row in await connection.fetch(store.SELECT_OPEN_STATES_BEFORE, payers, max(current.values()))
                   if row["period"] < current[row["payer_bu"]]]
    months = sorted({month for _, month in pairs} | {row["period"] for row in open_states} | set(current.values()))
    spend: dict[tuple[str, str], dict[str, Decimal]] = defaultdict(dict)
    for row in await connection.fetch(store.SELECT_PERIOD_SPEND, payers, months):
        spend[(row["payer_bu"], row["period"])][row["consumer_bu"]] = row["amount"]
    states = {(row["payer_bu"], row["scope"], row["period"]): budgets.QuotaState(row["exhausted"], row["transitions"], row["closed"])
              for row in await connection.fetch(store.SELECT_QUOTA_STATES, payers, months)}
    changed: dict[tuple[str, str, str], budgets.QuotaState] = {}
    alerts: list[BudgetAlert] = []
    for row in open_states:
        payer, scope, month = row["payer_bu"], row["scope"], row["period"]
        budget = budgets.in_force(known, payer, scope, month)
        state = states[(payer, scope, month)]
        if budget is None:
            changed[(payer, scope, month)] = budgets.QuotaState(False, state.transitions, True)
            continue
        restored, state = budgets.close_month(
            budget, month, state, new_month=current[payer],
            new_month_spent=budgets.scope_spend(spend[(payer, current[payer])], scope),
            at=now, cause=causes.get(payer, f"period:{current[payer]}"))
        changed[(payer, scope, month)] = state
        if restored is not None:
            alerts.append(restored)
    scopes = defaultdict(set)
    for budget in known:
        scopes[budget.payer_bu].add(budget.scope)
    for payer, month in sorted(pairs):
        for scope in sorted(scopes[payer]):
            budget = budgets.in_force(known, payer, scope, month)
            if budget is None:
                continue
            spent = budgets.scope_spend(spend[(payer, month)], scope)
            key = (payer, scope, month)
            state = changed.get(key) or states.get(key) or budgets.QuotaState()
            if month < current[payer]:
                state = budgets.QuotaState(state.exhausted, state.transitions, True)  # late usage: no quota change
            funded: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())
            if not state.closed and not state.exhausted and budget.hard_limit is not None and spent >= budget.hard_limit:
                funded = await _funded(connection, payer, scope, month, zone)
            evaluation = budgets.evaluate(budget, month, spent, state, at=now, cause=causes.get(payer, str(budget.id)),
                                          funded=funded, raised=raised)
            alerts.extend(evaluation.crossed)
            if evaluation.quota_alert is not None:
                alerts.append(evaluation.quota_alert)
                changed[key] = evaluation.state
    if changed:
        keys = sorted(changed)
        await connection.execute(store.UPSERT_QUOTA_STATES, [key[0] for key in keys], [key[1] for key in keys],
                                 [key[2] for key in keys], [changed[key].exhausted for key in keys],
                                 [changed[key].transitions for key in keys], [changed[key].closed for key in keys])
    return await _stage_alerts(connection, alerts)


async def _funded(connection: asyncpg.Connection, payer: str, scope: str, month: str, zone: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    period = parse(month, zone)
    row = await connection.fetchrow(store.SELECT_FUNDED, payer, period.start, period.end, scope)
    return tuple(row["consumers"] or ()), tuple(row["apps"] or ())


async def _stage_alerts(connection: asyncpg.Connection, alerts: list[BudgetAlert]) -> list[BudgetAlert]:
    """Insert each alert under its unique key; stage only those raised now."""
    if not alerts:
        return []
    payloads = [canonical_json(alert) for alert in alerts]
    inserted = {row["alert_id"] for row in await connection.fetch(
        store.INSERT_BUDGET_ALERTS,
        [alert.id for alert in alerts],
        [budgets.alert_kind(alert) for alert in alerts],
        [alert.payer_bu for alert in alerts],
        [alert.consumer_bu or "*" for alert in alerts],
        [alert.period for alert in alerts],
        [getattr(alert, "threshold_percent", None) for alert in alerts],
        [alert.budget_id for alert in alerts],
        payloads,
    )}
    fresh = [(alert, payload) for alert, payload in zip(alerts, payloads, strict=True) if alert.id in inserted]
    await stage(connection, SCHEMA, [OutboxRow(BUDGET_ALERTS.name, alert.payer_bu.encode(), payload) for alert, payload in fresh])
    for alert, _ in fresh:
        log.warning("budget_alert", type=alert.type, bu=alert.payer_bu, scope=alert.consumer_bu or "*", period=alert.period,
                    alert_id=str(alert.id))
    return [alert for alert, _ in fresh]
