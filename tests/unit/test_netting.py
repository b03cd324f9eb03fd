"""Multilateral netting: transfers clear every position exactly, at most n - 1 of them."""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokenhub.contracts.events import InvoiceLine, LedgerPosted
from tokenhub.contracts.ids import derive_id
from tokenhub.contracts.settlement import GrossFlow
from tokenhub.services.invoicing.netting import (
    NettingError,
    gross_flows,
    positions_from_matrix,
    round_positions,
    transfers,
)
from tests.contract.examples import POSTED

BUS = ["ai-innovation", "cainiao", "dingtalk", "local-services", "qwen-platform", "quark"]


def _flows(cells: list[tuple[int, int, Decimal]]) -> list[GrossFlow]:
    return [GrossFlow(payer_bu=BUS[payer], provider_bu=BUS[provider], amount=amount)
            for payer, provider, amount in cells if payer != provider]


def test_a_hand_worked_example() -> None:
    matrix = _flows([(0, 4, Decimal("100")), (1, 4, Decimal("30")), (4, 3, Decimal("20")), (3, 0, Decimal("5"))])
    positions = positions_from_matrix(matrix)
    assert positions == {"ai-innovation": Decimal("-95"), "cainiao": Decimal("-30"), "local-services": Decimal("15"),
                         "qwen-platform": Decimal("110")}
    rounded, absorber = round_positions(positions, 2, "half_even")
    assert absorber is None
    assert [(t.from_bu, t.to_bu, t.amount) for t in transfers(rounded)] == [
        ("ai-innovation", "qwen-platform", Decimal("95")),
        ("cainiao", "qwen-platform", Decimal("15")),
        ("cainiao", "local-services", Decimal("15")),
    ]


def test_rounding_residue_is_absorbed_by_the_largest_position_and_named() -> None:
    positions = {"a": Decimal("-0.005"), "b": Decimal("-0.005"), "c": Decimal("0.010")}
    rounded, absorber = round_positions(positions, 2, "half_even")
    assert sum(rounded.values()) == 0
    assert absorber == "c"
    assert rounded == {"a": Decimal("0.00"), "b": Decimal("0.00"), "c": Decimal("0.00")}


def test_positions_that_do_not_sum_to_zero_are_refused() -> None:
    with pytest.raises(NettingError, match="out of balance"):
        round_positions({"a": Decimal("1"), "b": Decimal("-0.5")}, 2, "half_even")


amounts = st.decimals(min_value=Decimal("0.000000000001"), max_value=Decimal("100000"), places=12)


@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5), amounts), max_size=40))
def test_transfers_clear_each_rounded_position_with_at_most_n_minus_one(cells) -> None:  # noqa: ANN001
    matrix = _flows(cells)
    positions = positions_from_matrix(matrix)
    rounded, _ = round_positions(positions, 2, "half_even")
    moved: dict[str, Decimal] = defaultdict(Decimal)
    result = transfers(rounded)
    for transfer in result:
        assert transfer.amount > 0
        moved[transfer.from_bu] -= transfer.amount
        moved[transfer.to_bu] += transfer.amount
    assert {bu: amount for bu, amount in moved.items() if amount} == {bu: a for bu, a in rounded.items() if a}
    nonzero = [bu for bu, amount in rounded.items() if amount]
    assert len(result) <= max(0, len(nonzero) - 1)
    # The matrix before netting gives the same exact positions as the flows themselves.
    direct: dict[str, Decimal] = defaultdict(Decimal)
    for flow in matrix:
        direct[flow.provider_bu] += flow.amount
        direct[flow.payer_bu] -= flow.amount
    assert {bu: a for bu, a in direct.items() if a} == {bu: a for bu, a in positions.items() if a}
    assert all(abs(rounded[bu] - positions[bu]) < Decimal("0.01") * len(positions) for bu in positions)


def _posted(index: int, payer: str, provider: str, amount: Decimal, kind: str = "charge") -> LedgerPosted:
    return POSTED.model_copy(update={"id": derive_id("tests", "posted", str(index)), "payer_bu": payer,
                                     "provider_bu": provider, "amount": amount, "kind": kind})


def _tier(provider: str, amount: Decimal) -> InvoiceLine:
    return InvoiceLine(kind="period_tier", period="2026-03", provider_bu=provider, consumer_bu="x", model="qwen-max",
                       tokens=0, amount=amount)


def test_period_tiers_count_from_their_invoice_lines_and_their_ledger_adjustments_are_not_counted_twice() -> None:
    postings = [_posted(1, "quark", "qwen-platform", Decimal("10")),
                _posted(2, "quark", "qwen-platform", Decimal("2.75"), kind="adjustment"),  # the tier, posted back
                _posted(3, "dingtalk", "quark", Decimal("1")),
                _posted(4, "quark", "quark", Decimal("5"))]                                  # own use nets to nothing
    matrix = gross_flows(postings, [("quark", _tier("qwen-platform", Decimal("2.75"))),
                                    ("dingtalk", _tier("dingtalk", Decimal("9")))])
    assert [(flow.payer_bu, flow.provider_bu, flow.amount) for flow in matrix] == [
        ("dingtalk", "quark", Decimal("1")), ("quark", "qwen-platform", Decimal("12.75"))]
    with pytest.raises(NettingError, match="period tier"):
        gross_flows([], [("quark", _tier("qwen-platform", Decimal(1)).model_copy(update={"kind": "usage"}))])


@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5), amounts, st.sampled_from(["charge", "reversal"])),
                max_size=30),
       st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5), amounts), max_size=6))
def test_the_matrix_gives_every_bus_revenue_minus_spend(cells, tiers) -> None:  # noqa: ANN001
    """Positions from the matrix equal each BU's revenue - spend summed straight
    from the postings and the tier lines, self-use included (it nets to zero)."""
    postings = [_posted(index, BUS[payer], BUS[provider], amount if kind == "charge" else -amount, kind)
                for index, (payer, provider, amount, kind) in enumerate(cells)]
    tier_lines = [(BUS[payer], _tier(BUS[provider], amount)) for payer, provider, amount in tiers]
    positions = positions_from_matrix(gross_flows(postings, tier_lines))
    direct: dict[str, Decimal] = defaultdict(Decimal)
    for posted in postings:
        direct[posted.provider_bu] += posted.amount
        direct[posted.payer_bu] -= posted.amount
    for payer, line in tier_lines:
        direct[line.provider_bu] += line.amount
        direct[payer] -= line.amount
    assert {bu: a for bu, a in positions.items() if a} == {bu: a for bu, a in direct.items() if a}
    assert sum(positions.values(), Decimal(0)) == 0
    rounded, _ = round_positions(positions, 2, "half_even")
    assert len(transfers(rounded)) <= max(0, len([bu for bu, amount in rounded.items() if amount]) - 1)
