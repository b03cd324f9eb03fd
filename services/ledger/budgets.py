"""Budgets' functional core: which budget is in force for a month, which
thresholds a month-to-date spend has crossed, and when a payer's quota is
exhausted or restored. Pure: the shell passes spend, states and times, and
stores each alert under a unique key so that it is raised once."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Protocol

from tokenhub.contracts.budgets import (
    WHOLE_PAYER,
    BudgetAlert,
    BudgetSet,
    BudgetThresholdCrossed,
    ConsumerQuota,
    QuotaExhausted,
    QuotaRestored,
    QuotaStateChanged,
    quota_state_id,
)
from tokenhub.contracts.ids import derive_id
from tokenhub.contracts.money import quantize
from tokenhub.contracts.periods import containing, parse

HUNDRED = Decimal(100)


def month_of(moment: datetime, zone: str) -> str:
    return containing(moment, "month", zone).name


def next_month(month: str, zone: str) -> str:
    return parse(month, zone).next(zone).name


def in_force(budgets: Iterable[BudgetSet], payer_bu: str, scope: str, month: str) -> BudgetSet | None:
    """The latest budget set for the payer and scope that applies from `month` or earlier."""
    candidates = [budget for budget in budgets
                  if budget.payer_bu == payer_bu and budget.scope == scope and budget.period_from <= month]
    return max(candidates, key=lambda budget: (budget.set_at, str(budget.id)), default=None)


def threshold_amount(budget: BudgetSet, percent: Decimal) -> Decimal:
    return quantize(budget.amount * percent / HUNDRED)


def _percent_text(percent: Decimal) -> str:
    """One spelling per threshold (80 and 80.0 are the same), for its id."""
    normalized = percent.normalize()
    return f"{normalized:f}"


def threshold_alert_id(payer_bu: str, scope: str, month: str, percent: Decimal) -> uuid.UUID:
    return derive_id("budget.threshold", payer_bu, scope, month, _percent_text(percent))


def quota_alert_id(payer_bu: str, scope: str, month: str, transition: int) -> uuid.UUID:
    return derive_id("budget.quota", payer_bu, scope, month, str(transition))


@dataclass(frozen=True)
class QuotaState:
    exhausted: bool = False
    transitions: int = 0
    closed: bool = False


@dataclass(frozen=True)
class Evaluation:
    crossed: tuple[BudgetThresholdCrossed, ...]
    quota_alert: QuotaExhausted | QuotaRestored | None
    state: QuotaState


def _header(budget: BudgetSet, month: str, alert_id: uuid.UUID, at: datetime, cause: str) -> dict[str, object]:
    return {"id": alert_id, "event_time": at, "cause_id": cause, "payer_bu": budget.payer_bu,
            "consumer_bu": budget.consumer_bu, "period": month, "budget_id": budget.id, "currency": budget.currency}


def evaluate(budget: BudgetSet, month: str, spent: Decimal, state: QuotaState, *, at: datetime, cause: str,
             funded: tuple[tuple[str, ...], tuple[str, ...]] = ((), ()), raised: bool = False) -> Evaluation:
    """Every threshold `spent` has reached (the shell keeps the first of each),
    and the quota transition, if any. `raised`: evaluated because the budget
    changed, so a quota that comes back names that reason."""
    crossed = tuple(
        BudgetThresholdCrossed(**_header(budget, month, threshold_alert_id(budget.payer_bu, budget.scope, month, percent), at, cause),
                               threshold_percent=percent, threshold_amount=threshold_amount(budget, percent),
                               budget_amount=budget.amount, spent=spent)
        for percent in budget.thresholds_percent
        if spent >= threshold_amount(budget, percent)
    )
    if state.closed:
        return Evaluation(crossed, None, state)
    exhausted_now = budget.hard_limit is not None and spent >= budget.hard_limit
    if exhausted_now == state.exhausted:
        return Evaluation(crossed, None, state)
    transition = state.transitions + 1
    alert_id = quota_alert_id(budget.payer_bu, budget.scope, month, transition)
    alert: QuotaExhausted | QuotaRestored
    if exhausted_now:
        consumers, apps = funded
        alert = QuotaExhausted(**_header(budget, month, alert_id, at, cause), hard_limit=budget.hard_limit,  # type: ignore[arg-type]
                               spent=spent, consumers=consumers, apps=apps)
    else:
        alert = QuotaRestored(**_header(budget, month, alert_id, at, cause),
                              reason="budget_raised" if raised else "spend_reversed", exhausted_period=month,
                              hard_limit=budget.hard_limit, spent=spent)
    return Evaluation(crossed, alert, QuotaState(exhausted_now, transition, False))


def close_month(budget: BudgetSet, month: str, state: QuotaState, *, new_month: str, new_month_spent: Decimal,
                at: datetime, cause: str) -> tuple[QuotaRestored | None, QuotaState]:
    """A later month began: the month is closed, and an exhausted quota comes back."""
    if state.closed:
        return None, state
    if not state.exhausted:
        return None, QuotaState(False, state.transitions, True)
    transition = state.transitions + 1
    alert = QuotaRestored(**_header(budget, new_month, quota_alert_id(budget.payer_bu, budget.scope, month, transition), at, cause),
                          reason="new_period", exhausted_period=month, hard_limit=budget.hard_limit, spent=new_month_spent)
    return alert, QuotaState(False, transition, True)


def scope_spend(spend_by_consumer: dict[str, Decimal], scope: str) -> Decimal:
    """A month's spend of a payer within a budget's scope."""
    if scope == WHOLE_PAYER:
        return sum(spend_by_consumer.values(), Decimal(0))
    return spend_by_consumer.get(scope, Decimal(0))


def alert_kind(alert: BudgetAlert) -> str:
    if isinstance(alert, BudgetThresholdCrossed):
        return "threshold"
    return "exhausted" if isinstance(alert, QuotaExhausted) else "restored"


# --- the decision over a batch of payers and months ------------------------------------

QuotaKey = tuple[str, str, str]
"""(payer, scope, month)"""
Funded = tuple[tuple[str, ...], tuple[str, ...]]
"""(consumers, apps) a payer funded in a month: what a gateway refuses once its quota is exhausted."""


@dataclass(frozen=True)
class BudgetView:
    """What the decision reads, loaded by the shell in one transaction under
    the payers' locks."""

    budgets: tuple[BudgetSet, ...]
    current: dict[str, str]
    """Each payer's current month: the later of the clock's and its latest month with spend."""
    open_states: dict[QuotaKey, QuotaState]
    """Quota states of months before their payer's current one that are not closed yet."""
    spend: dict[tuple[str, str], dict[str, Decimal]]
    """(payer, month) -> consumer -> month-to-date spend."""
    states: dict[QuotaKey, QuotaState]
    funded: dict[QuotaKey, Funded]
    """Loaded for the keys `funding_wanted` names, and only those."""


@dataclass(frozen=True)
class BudgetDecision:
    states: dict[QuotaKey, QuotaState]
    """Quota states that changed."""
    alerts: tuple[BudgetAlert, ...]
    """Every alert the spend causes; the shell raises those not raised before."""


def current_months(payers: Iterable[str], latest: dict[str, str], clock_month: str) -> dict[str, str]:
    """A payer's current month: the clock's, or a later one its usage reached."""
    return {payer: max(clock_month, latest.get(payer, clock_month)) for payer in payers}


def months_to_read(pairs: Iterable[tuple[str, str]], open_states: Iterable[QuotaKey], current: dict[str, str]) -> list[str]:
    return sorted({month for _, month in pairs} | {month for _, _, month in open_states} | set(current.values()))


def months_to_redecide(stored: Iterable[BudgetSet], months: set[tuple[str, str]], clock_month: str) -> set[tuple[str, str]]:
    """(payer, month) pairs new budgets apply to: each month from the budget's
    first on with spend or a quota state (`months`), and the month it starts
    in or the clock's, whichever is later."""
    pairs: set[tuple[str, str]] = set()
    for budget in stored:
        pairs |= {(payer, month) for payer, month in months if payer == budget.payer_bu and month >= budget.period_from}
        pairs.add((budget.payer_bu, max(budget.period_from, clock_month)))
    return pairs


def _scopes(known: Iterable[BudgetSet]) -> dict[str, set[str]]:
    scopes: dict[str, set[str]] = {}
    for budget in known:
        scopes.setdefault(budget.payer_bu, set()).add(budget.scope)
    return scopes


def funding_wanted(known: tuple[BudgetSet, ...], pairs: Iterable[tuple[str, str]], current: dict[str, str],
                   spend: dict[tuple[str, str], dict[str, Decimal]], states: dict[QuotaKey, QuotaState]) -> list[QuotaKey]:
    """The quotas that this decision may exhaust: only those need the consumers
    and apps their payer funded, which the shell reads from the journal."""
    wanted: list[QuotaKey] = []
    scopes = _scopes(known)
    for payer, month in sorted(pairs):
        if month < current[payer]:
            continue  # late usage: no quota change
        for scope in sorted(scopes.get(payer, ())):
            budget = in_force(known, payer, scope, month)
            state = states.get((payer, scope, month)) or QuotaState()
            if (budget is not None and budget.hard_limit is not None and not state.closed and not state.exhausted
                    and scope_spend(spend.get((payer, month), {}), scope) >= budget.hard_limit):
                wanted.append((payer, scope, month))
    return wanted


def decide(view: BudgetView, pairs: Iterable[tuple[str, str]], *, at: datetime, causes: dict[str, str],
           raised: bool = False) -> BudgetDecision:
    """Close the months before each payer's current one (an exhausted quota
    comes back), then evaluate each (payer, month) of `pairs` under every
    budget scope of its payer. `raised`: decided because budgets changed."""
    changed: dict[QuotaKey, QuotaState] = {}
    alerts: list[BudgetAlert] = []
    for key in sorted(view.open_states):
        payer, scope, month = key
        state = view.open_states[key]
        budget = in_force(view.budgets, payer, scope, month)
        if budget is None:
            changed[key] = QuotaState(False, state.transitions, True)
            continue
        new_month = view.current[payer]
        restored, state = close_month(
            budget, month, state, new_month=new_month,
            new_month_spent=scope_spend(view.spend.get((payer, new_month), {}), scope),
            at=at, cause=causes.get(payer, f"period:{new_month}"))
        changed[key] = state
        if restored is not None:
            alerts.append(restored)
    scopes = _scopes(view.budgets)
    for payer, month in sorted(pairs):
        for scope in sorted(scopes.get(payer, ())):
            budget = in_force(view.budgets, payer, scope, month)
            if budget is None:
                continue
            key = (payer, scope, month)
            spent = scope_spend(view.spend.get((payer, month), {}), scope)
            state = changed.get(key) or view.states.get(key) or QuotaState()
            if month < view.current[payer]:
                state = QuotaState(state.exhausted, state.transitions, True)  # late usage: no quota change
            evaluation = evaluate(budget, month, spent, state, at=at, cause=causes.get(payer, str(budget.id)),
                                  funded=view.funded.get(key, ((), ())), raised=raised)
            alerts.extend(evaluation.crossed)
            if evaluation.quota_alert is not None:
                alerts.append(evaluation.quota_alert)
                changed[key] = evaluation.state
    return BudgetDecision(changed, tuple(alerts))


# --- the quota state a gateway reads, and usage posted over quota -------------------------

def _remaining(limit: Decimal, spent: Decimal) -> Decimal:
    return max(limit - spent, Decimal(0))


def quota_record(payer: str, month: str, known: Iterable[BudgetSet], spend_by_consumer: dict[str, Decimal],
                 previous: QuotaStateChanged | None, *, at: datetime, cause: str) -> QuotaStateChanged | None:
    """The payer's quota state for its current month, or None when it is what
    `previous` (the last one published) says already, or the payer has no
    budget in force. Exhausted follows `evaluate`'s rule: spend reached the
    hard limit."""
    known = tuple(known)
    whole = in_force(known, payer, WHOLE_PAYER, month)
    consumers = []
    for scope in sorted({budget.scope for budget in known if budget.payer_bu == payer} - {WHOLE_PAYER}):
        budget = in_force(known, payer, scope, month)
        if budget is None or budget.hard_limit is None:
            continue
        spent = spend_by_consumer.get(scope, Decimal(0))
        consumers.append(ConsumerQuota(consumer_bu=scope, budget_id=budget.id, limit=budget.hard_limit, spent=spent,
                                       remaining=_remaining(budget.hard_limit, spent),
                                       state="exhausted" if spent >= budget.hard_limit else "allowed"))
    if whole is None and not consumers:
        return None
    spent = scope_spend(spend_by_consumer, WHOLE_PAYER)
    limit = whole.hard_limit if whole is not None else None
    currency = whole.currency if whole is not None else next(budget.currency for budget in known if budget.payer_bu == payer)
    figures = {
        "payer_bu": payer, "period": month, "state": "exhausted" if limit is not None and spent >= limit else "allowed",
        "budget_id": whole.id if whole is not None else None, "limit": limit, "spent": spent,
        "remaining": None if limit is None else _remaining(limit, spent), "currency": currency,
        "consumers": tuple(consumers),
    }
    if previous is not None and all(getattr(previous, name) == value for name, value in figures.items()):
        return None
    sequence = (previous.sequence if previous is not None else 0) + 1
    return QuotaStateChanged(id=quota_state_id(payer, sequence), event_time=at, cause_id=cause, sequence=sequence,
                             as_of=at, **figures)  # type: ignore[arg-type]


def quota_records(view: BudgetView, payers: Iterable[str], previous: dict[str, QuotaStateChanged], *, at: datetime,
                  causes: dict[str, str]) -> list[QuotaStateChanged]:
    """Each payer's quota state whose figures changed, for its current month."""
    records = []
    for payer in sorted(set(payers)):
        month = view.current[payer]
        record = quota_record(payer, month, view.budgets, view.spend.get((payer, month), {}), previous.get(payer),
                              at=at, cause=causes.get(payer, f"period:{month}"))
        if record is not None:
            records.append(record)
    return records


class Charge(Protocol):
    """What the overage mark reads of a Priced."""

    @property
    def kind(self) -> str: ...
    @property
    def payer_bu(self) -> str: ...
    @property
    def consumer_bu(self) -> str: ...
    @property
    def event_time(self) -> datetime: ...
    @property
    def total_amount(self) -> Decimal: ...


def hard_limited(known: Iterable[BudgetSet]) -> set[str]:
    """Payers with a hard limit in some budget: only their usage can be over quota."""
    return {budget.payer_bu for budget in known if budget.hard_limit is not None}


def overage_marks(events: Sequence[Charge], known: Iterable[BudgetSet], spend: dict[tuple[str, str], dict[str, Decimal]],
                  zone: str) -> list[bool]:
    """For each Priced about to be posted, in posting order: whether it is a
    charge that arrives while its payer's quota for its month is exhausted,
    that is, while spend before it (`spend`: (payer, month) -> consumer ->
    posted before this batch, then each entry as it is posted) reached the hard
    limit of a budget in force for the whole payer or for its consumer. The
    charge that reaches the limit was allowed when it came; those after it are
    overage. Reversals, corrections and period-tier adjustments re-price or
    add fees to usage counted already: never marked, but they move the spend."""
    known = tuple(known)
    limited = hard_limited(known)
    running: dict[tuple[str, str], dict[str, Decimal]] = {}
    limits: dict[tuple[str, str, str], Decimal | None] = {}
    marks = []
    for event in events:
        if event.payer_bu not in limited:
            marks.append(False)
            continue
        month = month_of(event.event_time, zone)
        by_consumer = running.get((event.payer_bu, month))
        if by_consumer is None:
            by_consumer = running[(event.payer_bu, month)] = dict(spend.get((event.payer_bu, month), {}))
        over = False
        if event.kind == "charge":
            for scope in (WHOLE_PAYER, event.consumer_bu):
                key = (event.payer_bu, scope, month)
                if key not in limits:
                    budget = in_force(known, event.payer_bu, scope, month)
                    limits[key] = budget.hard_limit if budget is not None else None
                limit = limits[key]
                if limit is not None and scope_spend(by_consumer, scope) >= limit:
                    over = True
                    break
        marks.append(over)
        by_consumer[event.consumer_bu] = by_consumer.get(event.consumer_bu, Decimal(0)) + event.total_amount
    return marks
