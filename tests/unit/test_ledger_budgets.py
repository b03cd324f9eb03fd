"""The budget core: which budget is in force, thresholds crossed once each
(the shell keeps the first), quota exhausted and restored, months closed."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from pydantic import ValidationError

from tokenhub.contracts.budgets import BudgetSet, QuotaExhausted, QuotaRestored
from tokenhub.services.ledger.budgets import (
    QuotaState,
    close_month,
    evaluate,
    in_force,
    month_of,
    next_month,
    scope_spend,
    threshold_alert_id,
)

AT = datetime(2026, 3, 14, 3, 0, tzinfo=UTC)


def budget(amount: str = "100", hard_limit: str | None = "120", period_from: str = "2026-03", set_at: datetime = AT,
           consumer: str | None = None, thresholds: tuple[str, ...] = ("50", "80", "100")) -> BudgetSet:
    return BudgetSet(id=uuid.uuid4(), event_time=set_at, cause_id="t", payer_bu="taobao-tmall", consumer_bu=consumer,
                     period_from=period_from, amount=Decimal(amount), thresholds_percent=tuple(map(Decimal, thresholds)),
                     hard_limit=Decimal(hard_limit) if hard_limit else None, currency="CNY", actor="alice", reason="plan",
                     set_at=set_at)


@pytest.mark.parametrize(("spent", "crossed"), [
    ("0", []), ("49.999999999999", []), ("50", ["50"]), ("79.99", ["50"]), ("80", ["50", "80"]),
    ("100", ["50", "80", "100"]), ("1000000", ["50", "80", "100"]),
])
def test_thresholds_crossed_at_exact_amounts(spent: str, crossed: list[str]) -> None:
    evaluation = evaluate(budget(hard_limit=None), "2026-03", Decimal(spent), QuotaState(), at=AT, cause="c")
    assert [f"{alert.threshold_percent:f}" for alert in evaluation.crossed] == crossed
    assert evaluation.quota_alert is None


def test_a_threshold_keeps_one_id_whatever_its_spelling() -> None:
    assert threshold_alert_id("a", "*", "2026-03", Decimal("80")) == threshold_alert_id("a", "*", "2026-03", Decimal("80.00"))
    assert threshold_alert_id("a", "*", "2026-03", Decimal("80")) != threshold_alert_id("a", "*", "2026-04", Decimal("80"))


def test_quota_exhausted_at_the_hard_limit_then_restored_when_raised() -> None:
    first = budget()
    below = evaluate(first, "2026-03", Decimal("119.999999999999"), QuotaState(), at=AT, cause="c")
    assert below.quota_alert is None and below.state == QuotaState()
    hit = evaluate(first, "2026-03", Decimal("120"), QuotaState(), at=AT, cause="c",
                   funded=(("maps", "taobao-tmall"), ("search",)))
    assert isinstance(hit.quota_alert, QuotaExhausted)
    assert (hit.quota_alert.consumers, hit.quota_alert.apps, hit.state) == (("maps", "taobao-tmall"), ("search",), QuotaState(True, 1))
    again = evaluate(first, "2026-03", Decimal("130"), hit.state, at=AT, cause="c")
    assert again.quota_alert is None, "exhausted once until something changes"
    raised = evaluate(budget(hard_limit="200"), "2026-03", Decimal("130"), hit.state, at=AT, cause="c", raised=True)
    assert isinstance(raised.quota_alert, QuotaRestored)
    assert (raised.quota_alert.reason, raised.state) == ("budget_raised", QuotaState(False, 2))
    assert raised.quota_alert.id != hit.quota_alert.id


def test_a_new_month_restores_an_exhausted_quota_and_closes_the_month() -> None:
    alert, state = close_month(budget(), "2026-03", QuotaState(True, 1), new_month="2026-04", new_month_spent=Decimal(3),
                               at=AT, cause="c")
    assert isinstance(alert, QuotaRestored)
    assert (alert.reason, alert.period, alert.exhausted_period, alert.spent, state) == (
        "new_period", "2026-04", "2026-03", Decimal(3), QuotaState(False, 2, True))
    assert close_month(budget(), "2026-03", state, new_month="2026-04", new_month_spent=Decimal(0), at=AT, cause="c") == (None, state)
    late = evaluate(budget(), "2026-03", Decimal(500), state, at=AT, cause="c")
    assert late.quota_alert is None, "late usage of a closed month exhausts nothing"


def test_the_latest_budget_from_an_earlier_month_is_in_force() -> None:
    march = budget(amount="10", period_from="2026-03")
    april = budget(amount="20", period_from="2026-04", set_at=datetime(2026, 3, 1, tzinfo=UTC))
    later_march = budget(amount="30", period_from="2026-03", set_at=datetime(2026, 3, 20, tzinfo=UTC))
    known = [march, april, later_march]
    assert in_force(known, "taobao-tmall", "*", "2026-02") is None
    assert in_force(known, "taobao-tmall", "*", "2026-03") == later_march
    assert in_force(known, "taobao-tmall", "*", "2026-05") == later_march  # set last
    assert in_force(known, "taobao-tmall", "maps", "2026-03") is None


def test_months_follow_the_company_time_zone() -> None:
    assert month_of(datetime(2026, 3, 31, 16, 0, tzinfo=UTC), "Asia/Shanghai") == "2026-04"
    assert month_of(datetime(2026, 3, 31, 15, 59, 59, tzinfo=UTC), "Asia/Shanghai") == "2026-03"
    assert next_month("2026-12", "Asia/Shanghai") == "2027-01"


def test_scope_spend() -> None:
    spend = {"maps": Decimal("1.5"), "shop": Decimal("2.25")}
    assert (scope_spend(spend, "*"), scope_spend(spend, "maps"), scope_spend(spend, "video")) == (Decimal("3.75"), Decimal("1.5"), 0)


@pytest.mark.parametrize("change", [{"amount": Decimal(0)}, {"hard_limit": Decimal("-1")},
                                    {"thresholds_percent": (Decimal(0),)}, {"thresholds_percent": (Decimal(50), Decimal(50))},
                                    {"period_from": "2026-W11"}])
def test_nonsense_budgets_are_refused(change: dict) -> None:
    data = budget().model_dump() | change
    with pytest.raises(ValidationError):
        BudgetSet.model_validate(data)


def test_thresholds_are_kept_in_order() -> None:
    assert budget(thresholds=("100", "50")).thresholds_percent == (Decimal(50), Decimal(100))
