"""The ledger's shell: a batch of Priced becomes journal entries, balance and
month-to-date spend updates, budget alerts and outbox rows in ONE transaction;
offsets follow. Budget changes and the start of a new month are handled the
same way. Each handler loads through the store, decides in the core and writes
through the store; SQL lives in `adapters.store` only."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import structlog
from aiokafka.structs import ConsumerRecord

from tokenhub.contracts.budgets import BudgetAlert, BudgetSet
from tokenhub.contracts.canonical import canonical_json
from tokenhub.contracts.codecs import PostedWire, PricedWire
from tokenhub.contracts.events import decode
from tokenhub.contracts.topics import BUDGET_ALERTS, LEDGER_POSTED, QUOTA_STATE
from tokenhub.services.common.outbox import OutboxRow
from tokenhub.services.common.runtime import Runtime, maybe_crash
from tokenhub.services.ledger import budgets, domain
from tokenhub.services.ledger.adapters import store
from tokenhub.services.ledger.adapters.store import LedgerUnit

SCHEMA = store.SCHEMA
log = structlog.get_logger()

Fault = Callable[[str], None]


def _no_fault(point: str) -> None:
    return None


@dataclass
class BatchOutcome:
    received: int = 0
    posted: list[PostedWire] = field(default_factory=list)
    conflicts: list[uuid.UUID] = field(default_factory=list)
    alerts: list[BudgetAlert] = field(default_factory=list)

    @property
    def duplicates(self) -> int:
        return self.received - len(self.posted) - len(self.conflicts)


async def post_records(runtime: Runtime, records: Sequence[ConsumerRecord]) -> None:
    async with store.unit(runtime.db()) as unit:
        outcome = await post_values(unit, [record.value for record in records], now=runtime.now(),
                                    zone=runtime.settings.timezone,
                                    fault=lambda point: maybe_crash(runtime.settings, point))
    maybe_crash(runtime.settings, "ledger.after_db_commit")
    if outcome.conflicts:
        log.error("conflicting_duplicates", priced_ids=[str(priced_id) for priced_id in outcome.conflicts])
    log.info("priced_posted", received=outcome.received, posted=len(outcome.posted), duplicates=outcome.duplicates,
             conflicts=len(outcome.conflicts), budget_alerts=len(outcome.alerts),
             over_quota=sum(1 for entry in outcome.posted if entry.overage))


async def post_values(unit: LedgerUnit, values: Sequence[bytes], *, now: datetime, zone: str,
                      fault: Fault = _no_fault, overage: set[str] | None = None) -> BatchOutcome:
    """Post a batch of Priced payloads inside the unit's transaction. Exactly
    once by Priced id: ids already in the journal are duplicates (or conflicts).
    `overage`: the ids of the Priced to mark as posted over quota, as a ledger
    being restored marked them; none: decided from budgets and spend."""
    batch = domain.receive(values)
    payers = {event.payer_bu for event in batch.events}
    heads = await unit.lock_chain_heads(payers)
    stored = await unit.posted_priced(event.id for event in batch.events)
    await unit.lock_payers(payers)
    known = await unit.budgets_of(payers)
    marks = ((lambda fresh: [str(event.id) in overage for event in fresh]) if overage is not None
             else await _overage_marks(unit, batch.events, known, zone))
    decision = domain.decide_batch(batch, stored, heads, now, marks)
    posted = [entry.posted for entry in decision.entries]
    await unit.write_entries(decision.entries)
    await unit.add_to_balances(domain.balance_deltas([entry.transfer for entry in decision.entries]))
    await unit.save_chain_heads(decision.heads.values())
    raised = await unit.raise_conflicts(decision.conflicts)
    alerted = {alert.id: alert for alert in decision.conflicts if alert.id in raised}  # two copies alike: one alert
    await unit.stage([OutboxRow(BUDGET_ALERTS.name, alert.payer_bu.encode(), canonical_json(alert))
                      for alert in alerted.values()])
    await unit.stage([OutboxRow(LEDGER_POSTED.name, entry.posted.payer_bu.encode(), entry.payload)
                      for entry in decision.entries])
    outcome = BatchOutcome(decision.received, posted, [alert.priced_id for alert in decision.conflicts])
    outcome.alerts = await _budgets_after_posting(unit, posted, known, now, zone)
    fault("ledger.mid_batch")
    await unit.count({"posted": len(outcome.posted), "duplicates": outcome.duplicates,
                      "conflicts": len(outcome.conflicts), "budget_alerts": len(outcome.alerts)})
    return outcome


# --- budgets -----------------------------------------------------------------------

async def _overage_marks(unit: LedgerUnit, events: Sequence[PricedWire], known: tuple[BudgetSet, ...],
                         zone: str) -> Callable[[list[PricedWire]], list[bool]] | None:
    """How the batch's new entries are marked over quota: from the month-to-date
    spend before the batch of the payers with a hard limit. None when no payer
    of the batch has one (most batches: nothing more is read)."""
    limited = budgets.hard_limited(known)
    if not limited:
        return None
    months = {(event.payer_bu, budgets.month_of(event.event_time, zone)) for event in events if event.payer_bu in limited}
    spend = await unit.period_spend(months)
    return lambda fresh: budgets.overage_marks(domain.charges(fresh), known, spend, zone)


async def _budgets_after_posting(unit: LedgerUnit, posted: list[PostedWire], known: tuple[BudgetSet, ...],
                                 now: datetime, zone: str) -> list[BudgetAlert]:
    """Month-to-date spend, then the budget alerts it causes: thresholds crossed,
    quotas exhausted, and quotas of earlier months restored as a later one begins.
    `known`: the payers' budgets, read under their locks."""
    if not posted:
        return []
    spend, causes = domain.month_spend(posted, zone)
    await unit.add_period_spend(spend)
    if not known:
        return []
    with_budgets = {budget.payer_bu for budget in known}
    pairs = {(payer, month) for payer, month, _ in spend if payer in with_budgets}
    return await _decide(unit, known, sorted({payer for payer, _ in pairs}), pairs, now, zone, causes)


async def apply_budget_records(runtime: Runtime, records: Sequence[ConsumerRecord]) -> None:
    async with store.unit(runtime.db()) as unit:
        stored, alerts = await apply_budget_values(unit, [record.value for record in records], now=runtime.now(),
                                                   zone=runtime.settings.timezone)
        await unit.count({"budgets_set": len(stored), "budget_alerts": len(alerts)})
    log.info("budgets_applied", received=len(records), stored=len(stored), budget_alerts=len(alerts),
             budget_ids=[str(budget.id) for budget in stored])


async def apply_budget_values(unit: LedgerUnit, values: Sequence[bytes], *, now: datetime,
                              zone: str) -> tuple[list[BudgetSet], list[BudgetAlert]]:
    """Store new budgets, then re-decide every month they apply to that has spend
    or a quota state: a raised budget restores an exhausted quota."""
    received: dict[uuid.UUID, BudgetSet] = {}
    for value in values:
        budget = decode(BudgetSet, value)
        received.setdefault(budget.id, budget)
    if not received:
        return [], []
    await unit.lock_payers(budget.payer_bu for budget in received.values())
    known_ids = await unit.known_budget_ids(received)
    stored = [budget for budget in received.values() if budget.id not in known_ids]
    if not stored:
        return [], []
    await unit.save_budgets(stored)
    payers = sorted({budget.payer_bu for budget in stored})
    known = await unit.budgets_of(payers)
    months = await unit.months_with_spend_or_quota(payers, min(budget.period_from for budget in stored))
    pairs = budgets.months_to_redecide(stored, months, budgets.month_of(now, zone))
    causes = {budget.payer_bu: str(budget.id) for budget in stored}
    return stored, await _decide(unit, known, payers, pairs, now, zone, causes, raised=True)


async def close_past_months(runtime: Runtime) -> int:
    """Restore quotas exhausted in a month that is over by the clock, even for a
    payer that has not consumed since (its gateway would otherwise wait forever)."""
    zone = runtime.settings.timezone
    now = runtime.now()
    async with store.unit(runtime.db()) as unit:
        payers = await unit.payers_exhausted_before(budgets.month_of(now, zone))
        if not payers:
            return 0
        await unit.lock_payers(payers)
        known = await unit.budgets_of(payers)
        alerts = await _decide(unit, known, payers, set(), now, zone, {})
        await unit.count({"budget_alerts": len(alerts)})
    log.info("quota_months_closed", payers=payers, budget_alerts=len(alerts))
    return len(alerts)


async def _decide(unit: LedgerUnit, known: tuple[BudgetSet, ...], payers: list[str], pairs: set[tuple[str, str]],
                  now: datetime, zone: str, causes: dict[str, str], *, raised: bool = False) -> list[BudgetAlert]:
    """Load what the budget decision reads, decide, store the changed quota
    states and the alerts not raised before, and stage those; then each payer's
    quota state for gateways (`quota.state`), where a figure changed. Callers
    hold the payer locks."""
    view = await unit.budget_view(known, payers, pairs, budgets.month_of(now, zone), zone)
    decision = budgets.decide(view, pairs, at=now, causes=causes, raised=raised)
    await unit.save_quota_states(decision.states)
    records = budgets.quota_records(view, payers, await unit.quota_published(payers), at=now, causes=causes)
    if records:
        published = [(record, canonical_json(record)) for record in records]
        await unit.save_quota_published(published)
        await unit.stage([OutboxRow(QUOTA_STATE.name, record.payer_bu.encode(), payload) for record, payload in published])
        log.info("quota_state_changed", payers=[record.payer_bu for record in records],
                 exhausted=[record.payer_bu for record in records if record.state == "exhausted"])
    alerts = [(alert, canonical_json(alert)) for alert in decision.alerts]
    fresh_ids = await unit.raise_budget_alerts(alerts)
    fresh = [(alert, payload) for alert, payload in alerts if alert.id in fresh_ids]
    await unit.stage([OutboxRow(BUDGET_ALERTS.name, alert.payer_bu.encode(), payload) for alert, payload in fresh])
    for alert, _ in fresh:
        log.warning("budget_alert", type=alert.type, bu=alert.payer_bu, scope=alert.consumer_bu or "*", period=alert.period,
                    alert_id=str(alert.id))
    return [alert for alert, _ in fresh]
