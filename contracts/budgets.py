"""Budgets per payer BU and month, and the alerts the ledger raises.

`BudgetSet` is configuration (who set it and why, docs/architecture.md decision 12) on
`budgets.configured`; the ledger consumes it. The alerts travel on
`budget.alerts`, keyed by payer BU, one event type per fact; consumers
dispatch on `type`. Budgets go by event time, months in the company time
zone (decision 8). The ledger's other alert, a conflicting duplicate, uses
the same topic: it is the ledger's one alerts channel."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import ClassVar, Final, Literal

from pydantic import Field, model_validator

from tokenhub.contracts.events import Event, Frozen, Name, UtcDatetime
from tokenhub.contracts.ids import BuId, derive_id
from tokenhub.contracts.money import Amount, ExactDecimal

DEFAULT_THRESHOLDS_PERCENT: Final = (Decimal(50), Decimal(80), Decimal(100))
THRESHOLDS_MAX: Final = 10  # more soft thresholds than this is noise, not warning
THRESHOLD_PERCENT_MAX: Final = Decimal(1000)  # a warning at ten times the budget is as late as one can be useful
WHOLE_PAYER: Final = "*"
"""The scope of a budget over all of a payer's spend, whoever consumed."""

MONTH_PATTERN: Final = r"^\d{4}-\d{2}$"


class BudgetSet(Event):
    """A payer's monthly budget in money from `period_from` on, until replaced.
    `consumer_bu` narrows it to the spend the payer funds for one consumer."""

    TYPE: ClassVar[str] = "budget.set"
    type: Literal["budget.set"] = "budget.set"
    payer_bu: BuId
    consumer_bu: BuId | None = Field(None, description="only the spend of this consumer; none: all of the payer's spend")
    period_from: str = Field(pattern=MONTH_PATTERN, description="first month it applies to, for example 2026-03")
    amount: Amount = Field(description="the monthly budget")
    thresholds_percent: tuple[ExactDecimal, ...] = Field(DEFAULT_THRESHOLDS_PERCENT, min_length=1, max_length=THRESHOLDS_MAX)
    hard_limit: Amount | None = Field(None, description="spend at which the payer's quota is exhausted")
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    actor: Name
    reason: str = Field(min_length=1, max_length=1000)
    set_at: UtcDatetime

    @model_validator(mode="after")
    def _sane(self) -> BudgetSet:
        if self.amount <= 0:
            raise ValueError("a budget must be positive")
        if self.hard_limit is not None and self.hard_limit <= 0:
            raise ValueError("a hard limit must be positive")
        if any(not 0 < threshold <= THRESHOLD_PERCENT_MAX for threshold in self.thresholds_percent):
            raise ValueError(f"thresholds must be above 0 and at most {THRESHOLD_PERCENT_MAX} %")
        if len(set(self.thresholds_percent)) != len(self.thresholds_percent):
            raise ValueError("thresholds must differ")
        ordered = tuple(sorted(self.thresholds_percent))
        if ordered != self.thresholds_percent:
            object.__setattr__(self, "thresholds_percent", ordered)
        return self

    @property
    def scope(self) -> str:
        return self.consumer_bu or WHOLE_PAYER


def budget_set_id(payer_bu: str, consumer_bu: str | None, period_from: str, set_at: str) -> uuid.UUID:
    return derive_id("budget", payer_bu, consumer_bu or WHOLE_PAYER, period_from, set_at)


class BudgetAlert(Event):
    """What every budget alert names: whose budget, which scope and month."""

    payer_bu: BuId
    consumer_bu: BuId | None = Field(None, description="the budget's consumer scope; none: the whole payer")
    period: str = Field(pattern=MONTH_PATTERN)
    budget_id: uuid.UUID
    currency: str


class BudgetThresholdCrossed(BudgetAlert):
    """Month-to-date spend reached a soft threshold: once per BU, scope, month and threshold."""

    TYPE: ClassVar[str] = "budget.threshold_crossed"
    type: Literal["budget.threshold_crossed"] = "budget.threshold_crossed"
    threshold_percent: ExactDecimal
    threshold_amount: Amount
    budget_amount: Amount
    spent: Amount = Field(description="month-to-date spend when the crossing was seen")


class QuotaExhausted(BudgetAlert):
    """Spend reached the hard limit; names the consumers and apps the payer funds this month."""

    TYPE: ClassVar[str] = "budget.quota_exhausted"
    type: Literal["budget.quota_exhausted"] = "budget.quota_exhausted"
    hard_limit: Amount
    spent: Amount
    consumers: tuple[BuId, ...]
    apps: tuple[Name, ...]


class QuotaRestored(BudgetAlert):
    """An exhausted quota is available again: a new month began or the budget was raised."""

    TYPE: ClassVar[str] = "budget.quota_restored"
    type: Literal["budget.quota_restored"] = "budget.quota_restored"
    reason: Literal["new_period", "budget_raised", "spend_reversed"]
    exhausted_period: str = Field(pattern=MONTH_PATTERN)
    hard_limit: Amount | None
    spent: Amount = Field(description="spend of `period` when restored")


QuotaStateName = Literal["allowed", "exhausted"]


class ConsumerQuota(Frozen):
    """The quota of a budget scoped to one consumer the payer funds."""

    consumer_bu: BuId
    budget_id: uuid.UUID
    limit: Amount = Field(description="the budget's hard limit")
    spent: Amount = Field(description="this consumer's spend of the period, funded by the payer")
    remaining: Amount = Field(description="limit minus spent, never below zero")
    state: QuotaStateName


class QuotaStateChanged(Event):
    """A payer's current quota, on the compacted topic `quota.state` keyed by
    payer: the latest record per payer is its state, which gateways read to
    refuse calls before they happen. Published by the ledger when the state or
    a figure changes (once per batch per payer). `sequence` grows by one with
    each record of a payer: a reader keeps the highest and drops older ones
    (a republish, a producer retry). The top-level figures are the whole
    payer's budget; `consumers` the budgets scoped to one consumer."""

    TYPE: ClassVar[str] = "quota.state"
    type: Literal["quota.state"] = "quota.state"
    payer_bu: BuId
    period: str = Field(pattern=MONTH_PATTERN, description="the payer's current month")
    sequence: int = Field(ge=1, description="per payer, +1 per record: a reader drops a record at or below the one it holds")
    as_of: UtcDatetime = Field(description="when the ledger decided this state")
    state: QuotaStateName = Field(description="exhausted: the whole payer's spend reached its hard limit")
    budget_id: uuid.UUID | None = Field(None, description="the whole payer's budget in force; none: only consumer budgets")
    limit: Amount | None = Field(None, description="its hard limit; none: no hard limit")
    spent: Amount = Field(description="the payer's spend of the period, every consumer")
    remaining: Amount | None = Field(None, description="limit minus spent, never below zero; none without a limit")
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    consumers: tuple[ConsumerQuota, ...] = Field((), description="budgets with a hard limit scoped to one consumer")

    @property
    def exhausted_for(self) -> frozenset[str]:
        """Consumers whose own quota is exhausted."""
        return frozenset(quota.consumer_bu for quota in self.consumers if quota.state == "exhausted")


def quota_state_id(payer_bu: str, sequence: int) -> uuid.UUID:
    return derive_id("quota.state", payer_bu, str(sequence))


class ConflictingDuplicate(Event):
    """A Priced arrived again with the id of one already posted but other content:
    nothing was posted for it. Raised once per distinct content."""

    TYPE: ClassVar[str] = "ledger.conflicting_duplicate"
    type: Literal["ledger.conflicting_duplicate"] = "ledger.conflicting_duplicate"
    priced_id: uuid.UUID
    payer_bu: str = Field(description="as the conflicting copy names it; may not be a valid slug")
    stored_sha256: str
    received_sha256: str
    detected_at: UtcDatetime


BUDGET_EVENT_MODELS: Final = (BudgetSet, BudgetThresholdCrossed, QuotaExhausted, QuotaRestored, ConflictingDuplicate,
                              QuotaStateChanged)


def budget_set(*, payer_bu: str, consumer_bu: str | None, month: str, amount: object, thresholds_percent: tuple[Decimal, ...],
               hard_limit: object, currency: str, actor: str, reason: str, now: datetime) -> BudgetSet:
    """A payer's monthly budget (for one consumer's spend, or all of it) from
    `month` on, set by `actor` at `now`; invalid values raise pydantic's ValidationError."""
    return BudgetSet.model_validate({
        "id": budget_set_id(payer_bu, consumer_bu, month, now.isoformat()), "event_time": now,
        "cause_id": f"{actor}:budget:{payer_bu}", "payer_bu": payer_bu, "consumer_bu": consumer_bu, "period_from": month,
        "amount": amount, "thresholds_percent": thresholds_percent, "hard_limit": hard_limit, "currency": currency,
        "actor": actor, "reason": reason, "set_at": now,
    })
