"""The budget core: which budget is in force, thresholds crossed once each
(the shell keeps the first), quota exhausted and restored, months closed."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import NamedTuple

import pytest
from pydantic import ValidationError

from tokenhub.contracts.budgets import BudgetSet, QuotaExhausted, QuotaRestored
from tokenhub.services.ledger.budgets import (
    BudgetView,
    QuotaState,
    close_month,
    decide,
    funding_wanted,
    months_to_redecide,
    evaluate,
    in_force,
    month_of,
    next_month,
    overage_marks,
    quota_record,
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


# --- the decision over a batch, from what the shell loaded ---------------------------------

def _view(known: tuple[BudgetSet, ...], *, spend: dict, states: dict | None = None, open_states: dict | None = None,
          current: dict | None = None, funded: dict | None = None) -> BudgetView:
    return BudgetView(known, current or {"taobao-tmall": "2026-03"}, open_states or {}, spend, states or {}, funded or {})


def test_decide_exhausts_the_quota_naming_what_the_payer_funds_and_crosses_each_threshold() -> None:
    known = (budget(),)
    spend = {("taobao-tmall", "2026-03"): {"taobao-tmall": Decimal("100"), "maps": Decimal("20")}}
    pairs = {("taobao-tmall", "2026-03")}
    assert funding_wanted(known, pairs, {"taobao-tmall": "2026-03"}, spend, {}) == [("taobao-tmall", "*", "2026-03")]
    decision = decide(_view(known, spend=spend, funded={("taobao-tmall", "*", "2026-03"): (("maps", "taobao-tmall"), ("search",))}),
                      pairs, at=AT, causes={"taobao-tmall": "priced-1"})
    crossed = [alert for alert in decision.alerts if not isinstance(alert, QuotaExhausted)]
    exhausted = [alert for alert in decision.alerts if isinstance(alert, QuotaExhausted)]
    assert [f"{alert.threshold_percent:f}" for alert in crossed] == ["50", "80", "100"]
    assert [(alert.spent, alert.consumers, alert.apps, alert.cause_id) for alert in exhausted] == [
        (Decimal(120), ("maps", "taobao-tmall"), ("search",), "priced-1")]
    assert decision.states == {("taobao-tmall", "*", "2026-03"): QuotaState(True, 1)}


def test_decide_below_the_hard_limit_wants_no_funding_and_changes_no_state() -> None:
    known = (budget(),)
    spend = {("taobao-tmall", "2026-03"): {"taobao-tmall": Decimal("119.999999999999")}}
    pairs = {("taobao-tmall", "2026-03")}
    assert funding_wanted(known, pairs, {"taobao-tmall": "2026-03"}, spend, {}) == []
    decision = decide(_view(known, spend=spend), pairs, at=AT, causes={})
    assert decision.states == {} and len(decision.alerts) == 3


def test_decide_late_usage_of_an_earlier_month_changes_no_quota() -> None:
    known = (budget(),)
    spend = {("taobao-tmall", "2026-03"): {"taobao-tmall": Decimal("500")}}
    pairs = {("taobao-tmall", "2026-03")}
    current = {"taobao-tmall": "2026-04"}
    assert funding_wanted(known, pairs, current, spend, {}) == []
    decision = decide(_view(known, spend=spend, current=current), pairs, at=AT, causes={})
    assert decision.states == {} and not any(isinstance(alert, QuotaExhausted) for alert in decision.alerts)


def test_decide_closes_an_exhausted_earlier_month_and_restores_its_quota() -> None:
    known = (budget(),)
    open_states = {("taobao-tmall", "*", "2026-03"): QuotaState(True, 1)}
    spend = {("taobao-tmall", "2026-04"): {"taobao-tmall": Decimal("3")}}
    decision = decide(_view(known, spend=spend, open_states=open_states, current={"taobao-tmall": "2026-04"}), set(),
                      at=AT, causes={})
    assert [(type(alert), alert.period, alert.spent) for alert in decision.alerts] == [(QuotaRestored, "2026-04", Decimal(3))]
    assert decision.states == {("taobao-tmall", "*", "2026-03"): QuotaState(False, 2, True)}


def test_new_budgets_redecide_their_months_with_spend_and_the_current_one() -> None:
    march = budget(period_from="2026-03")
    months = {("taobao-tmall", "2026-02"), ("taobao-tmall", "2026-03"), ("taobao-tmall", "2026-04"), ("other", "2026-03")}
    assert months_to_redecide([march], months, "2026-05") == {
        ("taobao-tmall", "2026-03"), ("taobao-tmall", "2026-04"), ("taobao-tmall", "2026-05")}
    assert months_to_redecide([budget(period_from="2026-07")], months, "2026-05") == {("taobao-tmall", "2026-07")}


# --- usage over quota, and the quota state gateways read ----------------------------------

class _Charge(NamedTuple):
    payer_bu: str
    consumer_bu: str
    total_amount: Decimal
    kind: str = "charge"
    event_time: datetime = AT


def _charges(*amounts: str, consumer: str = "taobao-tmall", kind: str = "charge") -> list[_Charge]:
    return [_Charge("taobao-tmall", consumer, Decimal(amount), kind) for amount in amounts]


@pytest.mark.parametrize(("before", "amounts", "marks"), [
    ("0", ["60", "60", "0.01"], [False, False, True]),      # the one that reaches 120 was allowed; the next is over
    ("0", ["119.99", "0.01", "5"], [False, False, True]),   # 120 reached exactly: exhausted
    ("0", ["119.99", "0.009", "5"], [False, False, False]),  # 119.999 is not 120
    ("120", ["1"], [True]),                                  # exhausted before the batch
    ("500", ["0"], [True]),                                  # a zero charge over quota is still usage over quota
])
def test_overage_marks_charges_that_arrive_after_the_hard_limit_is_reached(before: str, amounts: list[str],
                                                                          marks: list[bool]) -> None:
    spend = {("taobao-tmall", "2026-03"): {"taobao-tmall": Decimal(before)}}
    assert overage_marks(_charges(*amounts), [budget()], spend, "Asia/Shanghai") == marks


def test_overage_never_marks_reversals_and_they_move_the_spend_back() -> None:
    events = _charges("130") + _charges("-130", kind="reversal") + _charges("10") + _charges("1", kind="correction")
    assert overage_marks(events, [budget()], {}, "Asia/Shanghai") == [False, False, False, False]


def test_overage_without_a_hard_limit_or_budget_marks_nothing() -> None:
    spend = {("taobao-tmall", "2026-03"): {"taobao-tmall": Decimal(1000)}}
    assert overage_marks(_charges("1"), [budget(hard_limit=None)], spend, "Asia/Shanghai") == [False]
    assert overage_marks(_charges("1"), [], spend, "Asia/Shanghai") == [False]


def test_overage_of_a_consumer_scope_marks_only_that_consumer() -> None:
    known = [budget(hard_limit=None), budget(amount="10", hard_limit="10", consumer="maps")]
    spend = {("taobao-tmall", "2026-03"): {"maps": Decimal(10), "taobao-tmall": Decimal(5)}}
    events = _charges("1", consumer="maps") + _charges("1")
    assert overage_marks(events, known, spend, "Asia/Shanghai") == [True, False]


def test_overage_goes_by_the_month_of_the_event_time() -> None:
    spend = {("taobao-tmall", "2026-03"): {"taobao-tmall": Decimal(200)}}
    april = _Charge("taobao-tmall", "taobao-tmall", Decimal(1), event_time=datetime(2026, 3, 31, 16, 0, tzinfo=UTC))
    assert overage_marks([*_charges("1"), april], [budget()], spend, "Asia/Shanghai") == [True, False]


def test_quota_record_exhausted_with_exact_figures_then_none_while_nothing_changes() -> None:
    known = [budget(hard_limit="120"), budget(amount="10", hard_limit="10", consumer="maps")]
    spend = {"taobao-tmall": Decimal("100.5"), "maps": Decimal("20")}
    record = quota_record("taobao-tmall", "2026-03", known, spend, None, at=AT, cause="c")
    assert record is not None
    assert (record.state, record.limit, record.spent, record.remaining, record.sequence, record.budget_id) == (
        "exhausted", Decimal(120), Decimal("120.5"), Decimal(0), 1, known[0].id)
    assert [(quota.consumer_bu, quota.state, quota.spent, quota.remaining) for quota in record.consumers] == [
        ("maps", "exhausted", Decimal(20), Decimal(0))]
    assert record.exhausted_for == {"maps"}
    assert quota_record("taobao-tmall", "2026-03", known, spend, record, at=AT, cause="c") is None
    restored = quota_record("taobao-tmall", "2026-03", [*known, budget(hard_limit="200", set_at=datetime(2026, 3, 15, tzinfo=UTC))],
                            spend, record, at=AT, cause="c")
    assert restored is not None
    assert (restored.state, restored.remaining, restored.sequence) == ("allowed", Decimal("79.5"), 2)


def test_quota_record_for_a_payer_without_a_budget_in_force_is_none() -> None:
    assert quota_record("taobao-tmall", "2026-02", [budget()], {}, None, at=AT, cause="c") is None
