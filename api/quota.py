"""Quota state for gateways, kept in memory from the topics: budgets from
`budgets.configured`, month-to-date spend by event time from `ledger.posted`.
A quota check is a few dictionary look-ups; it never touches the database.

The rule is the ledger's (services.ledger.budgets): a payer's quota for a scope
(the whole payer, or one consumer it funds) is exhausted in a month when that
month's spend in the scope reached the hard limit of the budget in force. The
state follows each payer's chain by sequence, so a record read twice (a
republished topic, a producer retry) counts once, whatever offset reading
started from. Pure: events and the clock are passed in.

The ledger publishes the same state on the compacted topic `quota.state`
(services.ledger.budgets.quota_record), and this book does not read it: it
answers more than a record holds (budgets without a hard limit, an app's spend, the
month of the API's clock, which a payer's record reaches only with the
payer's next posting), and it needs ledger.posted for those anyway. The two
agree because they apply one rule to the same facts: a record is decided
after the entries the ledger published before it, and once the follower has
read those entries its answer for that month has the record's spent, hard
limit, remaining and state (tests/integration/test_quota_state.py holds them
equal)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Final

import msgspec

from tokenhub.contracts.budgets import WHOLE_PAYER, BudgetSet
from tokenhub.contracts.periods import containing

OUT_OF_ORDER_MAX: Final = 10_000
"""Sequences held above a chain's contiguous head. Records of one chain come in
order from one partition; a few arrive early after a producer retry. More than
this means the state cannot be trusted, and the follower says so."""


MONTH_CACHE_MAX: Final = 50_000
"""Minutes whose month is remembered: a month has 44,640; then the cache starts over."""


class PostedFigures(msgspec.Struct, frozen=True):
    """What quota state needs of one LedgerPosted; decoding only these fields
    skips the lines and postings without building them."""

    chain: str
    sequence: int
    payer_bu: str
    consumer_bu: str
    amount: str
    event_time: str
    app: str | None = None


POSTED_DECODER: Final = msgspec.json.Decoder(PostedFigures)


class StateBroken(RuntimeError):
    """A chain's records arrived too far out of order to be followed."""


@dataclass
class ChainProgress:
    head: int = 0
    """Every sequence up to here was applied."""
    above: set[int] = field(default_factory=set)
    """Sequences applied beyond the head (arrived early)."""

    def claim(self, sequence: int) -> bool:
        """True the first time a sequence is seen."""
        if sequence <= self.head or sequence in self.above:
            return False
        self.above.add(sequence)
        while self.head + 1 in self.above:
            self.head += 1
            self.above.discard(self.head)
        if len(self.above) > OUT_OF_ORDER_MAX:
            raise StateBroken(f"{len(self.above)} sequences beyond head {self.head}")
        return True


@dataclass(frozen=True)
class ScopeState:
    scope: str
    consumer_bu: str | None
    budget_id: str
    budget_amount: Decimal
    hard_limit: Decimal | None
    spent: Decimal

    @property
    def exhausted(self) -> bool:
        return self.hard_limit is not None and self.spent >= self.hard_limit

    @property
    def remaining(self) -> Decimal | None:
        return None if self.hard_limit is None else max(self.hard_limit - self.spent, Decimal(0))


@dataclass(frozen=True)
class QuotaAnswer:
    payer_bu: str
    consumer_bu: str | None
    app: str | None
    period: str
    allowed: bool
    binding: ScopeState | None
    """The scope that decides: an exhausted one, else the one with least remaining."""
    scopes: tuple[ScopeState, ...]
    app_spent: Decimal | None
    currency: str | None


class QuotaBook:
    def __init__(self, zone: str) -> None:
        self.zone = zone
        self.budgets: dict[str, list[BudgetSet]] = defaultdict(list)
        self.spend: dict[tuple[str, str], dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
        """(payer, month) -> consumer -> spend"""
        self.app_spend: dict[tuple[str, str, str, str], Decimal] = defaultdict(Decimal)
        """(payer, month, consumer, app) -> spend"""
        self.chains: dict[str, ChainProgress] = defaultdict(ChainProgress)
        self.applied = 0
        self.duplicates = 0
        self._months: dict[str, str] = {}
        """Month names by a UTC event time's minute: every zone's offset is whole
        minutes, so a minute never spans two months."""

    def month_of(self, moment: datetime) -> str:
        return containing(moment, "month", self.zone).name

    def _month_of_text(self, event_time: str) -> str:
        if not event_time.endswith(("Z", "+00:00")):
            return self.month_of(datetime.fromisoformat(event_time))
        minute = event_time[:16]
        month = self._months.get(minute)
        if month is None:
            month = self.month_of(datetime.fromisoformat(event_time.replace("Z", "+00:00")))
            if len(self._months) >= MONTH_CACHE_MAX:
                self._months.clear()
            self._months[minute] = month
        return month

    def apply_budgets(self, budgets: Iterable[BudgetSet]) -> None:
        for budget in budgets:
            known = self.budgets[budget.payer_bu]
            if all(existing.id != budget.id for existing in known):
                known.append(budget)

    def apply_posted(self, postings: Iterable[PostedFigures]) -> None:
        for posted in postings:
            if not self.chains[posted.chain].claim(posted.sequence):
                self.duplicates += 1
                continue
            amount = Decimal(posted.amount)
            month = self._month_of_text(posted.event_time)
            self.spend[(posted.payer_bu, month)][posted.consumer_bu] += amount
            if posted.app is not None:
                self.app_spend[(posted.payer_bu, month, posted.consumer_bu, posted.app)] += amount
            self.applied += 1

    def _in_force(self, payer_bu: str, scope: str, month: str) -> BudgetSet | None:
        candidates = [budget for budget in self.budgets.get(payer_bu, ()) if budget.scope == scope and budget.period_from <= month]
        return max(candidates, key=lambda budget: (budget.set_at, str(budget.id)), default=None)

    def answer(self, payer_bu: str, consumer_bu: str | None, app: str | None, now: datetime) -> QuotaAnswer:
        month = self.month_of(now)
        spend = self.spend.get((payer_bu, month), {})
        scopes = []
        for scope in (WHOLE_PAYER, consumer_bu) if consumer_bu else (WHOLE_PAYER,):
            budget = self._in_force(payer_bu, scope, month)
            if budget is None:
                continue
            spent = sum(spend.values(), Decimal(0)) if scope == WHOLE_PAYER else spend.get(scope, Decimal(0))
            scopes.append(ScopeState(scope, budget.consumer_bu, str(budget.id), budget.amount, budget.hard_limit, spent))
        limited = [state for state in scopes if state.hard_limit is not None]
        binding = min(limited, key=lambda state: (not state.exhausted, state.remaining)) if limited else None
        app_spent = self.app_spend.get((payer_bu, month, consumer_bu, app), Decimal(0)) if consumer_bu and app else None
        currency = next((budget.currency for budget in self.budgets.get(payer_bu, ())), None)
        return QuotaAnswer(payer_bu, consumer_bu, app, month, not any(state.exhausted for state in scopes), binding,
                           tuple(scopes), app_spent, currency)
