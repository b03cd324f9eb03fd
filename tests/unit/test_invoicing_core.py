"""Invoicing's pure core: lines per provider x consumer x model x class, kinds
naming earlier periods, subtotals per consumer BU, one rounding as its own
figure in the mode the price books name, and the chain heads the invoice covers."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokenhub.contracts.events import InvoiceLine, LedgerPosted, PeriodTier, PeriodTiers, Priced, TokenConsumed
from tokenhub.contracts.ids import derive_id
from tokenhub.contracts.money import round_to_minor
from tokenhub.contracts.periods import parse
from tokenhub.contracts.pricebook import BookIndex
from tokenhub.services.invoicing.domain import (
    Flow,
    Gap,
    PeriodNotEnded,
    Plan,
    PlanError,
    TierState,
    assign_plan,
    build_invoice,
    build_settlement,
    carrier_period,
    chain_heads,
    check_close,
    close_horizon,
    drafts_of,
    due_periods,
    issue_invoice,
    period_tier_lines,
    plan_periods,
    receive,
    rounding_mode_for,
    tier_adjustment,
    tier_adjustments,
    totals_of,
)
from tokenhub.services.ledger.domain import GENESIS_HASH, ChainHead, post
from tokenhub.services.pricing.domain import price
from tokenhub.services.pricing.reprice import reverse
from tests.contract.examples import BOOK, CONSUMED

D = Decimal
MARCH = parse("2026-03", "Asia/Shanghai")
POSTED_AT = datetime(2026, 3, 20, tzinfo=UTC)


def _consumed(index: int, consumer: str, tokens: dict[str, int]) -> TokenConsumed:
    return CONSUMED.model_copy(update={"id": derive_id("tests", "consumed", str(index)), "consumer_bu": consumer,
                                       "tokens": tokens, "request_input_tokens": tokens.get("input", 0)})


def _chain(priced: list[Priced]) -> list[LedgerPosted]:
    head = ChainHead("taobao-tmall", 0, GENESIS_HASH)
    posted = []
    for event in priced:
        entry = post(event, head, POSTED_AT)
        head = ChainHead(entry.chain, entry.sequence, entry.entry_hash)
        posted.append(entry)
    return posted


# Paid by taobao-tmall (factor 0.9): its own use, and quark's use that it funds.
OWN = price(_consumed(1, "taobao-tmall", {"input": 1_000, "output": 100}), BOOK)        # 0.00216 + 0.000864
FUNDED = price(_consumed(2, "quark", {"input": 3_333, "output": 7}), BOOK)              # 0.00719928 + 0.00006048
OWN_AGAIN = price(_consumed(3, "taobao-tmall", {"input": 2_000}), BOOK)                  # 0.00432
FEBRUARY = price(_consumed(4, "quark", {"input": 50_000}), BOOK)                         # late: 0.108
POSTED = _chain([OWN, FUNDED, OWN_AGAIN, FEBRUARY, reverse(FEBRUARY, "internal", 2)])
ASSIGNED = [("2026-03", POSTED[0]), ("2026-03", POSTED[1]), ("2026-03", POSTED[2]), ("2026-02", POSTED[3]),
            ("2026-02", POSTED[4])]


def _invoice(postings=ASSIGNED, mode: str = "half_even", extra: tuple[InvoiceLine, ...] = ()):  # noqa: ANN001, ANN202
    return build_invoice("taobao-tmall", MARCH, totals_of(postings), number=3, currency="CNY", minor_units=2, rounding_mode=mode,
                         status="issued", issued_at=MARCH.end + timedelta(days=2), extra_lines=extra)


def test_lines_group_by_provider_consumer_model_class_and_name_earlier_periods() -> None:
    invoice = _invoice()
    assert [(line.kind, line.period, line.consumer_bu, line.token_class, line.tokens, line.amount)
            for line in invoice.lines] == [
        ("adjustment", "2026-02", "quark", "input", 50_000, D("0.108")),
        ("credit", "2026-02", "quark", "input", -50_000, D("-0.108")),
        ("usage", "2026-03", "quark", "input", 3_333, D("0.00719928")),
        ("usage", "2026-03", "quark", "output", 7, D("0.00006048")),
        ("usage", "2026-03", "taobao-tmall", "input", 3_000, D("0.00648")),     # two postings, one unit price
        ("usage", "2026-03", "taobao-tmall", "output", 100, D("0.000864")),
    ]
    assert {line.provider_bu for line in invoice.lines} == {"qwen-platform"}
    assert {line.model for line in invoice.lines} == {"qwen-max"}
    assert all(line.unit_price_per_million is not None and line.amount == line.tokens
               * line.unit_price_per_million / 1_000_000 for line in invoice.lines)


def test_subtotals_per_consumer_bu_add_up_to_the_lines_and_the_rounding_is_one_figure() -> None:
    tier = InvoiceLine(kind="period_tier", period="2026-03", provider_bu="qwen-platform", consumer_bu="taobao-tmall",
                       model="qwen-max", tokens=6_440, amount=D("1.005"))
    invoice = _invoice(extra=(tier,))
    assert invoice.consumer_subtotals == {"quark": D("0.00725976"), "taobao-tmall": D("0.007344") + D("1.005")}
    assert invoice.subtotal == sum(invoice.consumer_subtotals.values(), D(0)) == D("1.01960376")
    assert invoice.subtotal == sum((line.amount for line in invoice.lines), D(0))
    assert (invoice.total, invoice.rounding, invoice.rounding_mode) == (D("1.02"), D("0.00039624"), "half_even")
    assert invoice.subtotal + invoice.rounding == invoice.total
    assert invoice.postings_count == 5


@pytest.mark.parametrize(("mode", "total"), [("half_even", "0.12"), ("half_up", "0.13"), ("down", "0.12"),
                                             ("up", "0.13")])
def test_the_total_is_rounded_once_in_the_named_mode(mode: str, total: str) -> None:
    exact = InvoiceLine(kind="period_tier", period="2026-03", provider_bu="qwen-platform", consumer_bu="taobao-tmall",
                        model="qwen-max", tokens=0, amount=D("0.125"))
    invoice = _invoice([], mode, (exact,))
    assert (invoice.total, invoice.rounding, invoice.rounding_mode) == (D(total), D(total) - D("0.125"), mode)


def test_chain_heads_are_the_last_entry_of_each_chain_whatever_the_order() -> None:
    other = post(FUNDED.model_copy(update={"payer_bu": "quark"}), ChainHead("quark", 41, "f" * 64), POSTED_AT)
    postings = [*reversed(ASSIGNED), ("2026-03", other)]
    heads = chain_heads(totals_of(postings).chains)
    assert [(head.chain, head.sequence, head.entry_hash) for head in heads] == [
        ("quark", 42, other.entry_hash), ("taobao-tmall", 5, POSTED[4].entry_hash)]
    assert _invoice(postings).chain_heads == heads


def test_the_books_rounding_mode_applies_and_disagreeing_books_fall_back_to_half_even() -> None:
    up = BOOK.model_copy(update={"rounding": "up"})
    other = BOOK.model_copy(update={"book_id": "other", "rounding": "down"})
    assert rounding_mode_for(totals_of(ASSIGNED).lines, [BOOK]) == "half_even"
    assert rounding_mode_for(totals_of(ASSIGNED).lines, [up]) == "up"
    assert rounding_mode_for((), [up]) == "half_even"
    mixed = [*ASSIGNED, ("2026-03", POSTED[0].model_copy(update={"book_id": "other"}))]
    assert rounding_mode_for(totals_of(mixed).lines, [up, other]) == "half_even"
    assert rounding_mode_for(totals_of(mixed).lines, [up, other.model_copy(update={"rounding": "up"})]) == "up"


@given(st.lists(st.tuples(st.sampled_from(["taobao-tmall", "quark", "dingtalk"]), st.integers(0, 10**8),
                          st.integers(0, 10**7)), min_size=1, max_size=12),
       st.sampled_from(["half_even", "half_up", "down", "up"]))
def test_the_total_is_the_postings_rounded_once(usage: list[tuple[str, int, int]], mode: str) -> None:
    priced = [price(_consumed(index, consumer, {name: count for name, count in
                                                (("input", input_tokens), ("output", output_tokens)) if count}), BOOK)
              for index, (consumer, input_tokens, output_tokens) in enumerate(usage) if input_tokens or output_tokens]
    postings = [("2026-03", posted) for posted in _chain(priced)]
    invoice = _invoice(postings, mode)
    exact = sum((posted.amount for _, posted in postings), D(0))
    assert invoice.subtotal == exact
    assert invoice.total == round_to_minor(exact, 2, mode)
    assert invoice.rounding == invoice.total - exact
    assert sum(invoice.consumer_subtotals.values(), D(0)) == exact


# --- running totals: each chain in order, duplicates by sequence, gaps wait ---------------------

def _batch(postings: list[LedgerPosted]) -> list[tuple[LedgerPosted, bytes]]:
    return [(posted, posted.model_dump_json().encode()) for posted in postings]


def _receive(postings: list[LedgerPosted], watermarks: dict[str, int] | None = None, waiting=(),  # noqa: ANN001
             invoiced: set[tuple[str, str]] | None = None):  # noqa: ANN202
    return receive(_batch(postings), watermarks=watermarks or {}, waiting=list(waiting), invoiced=invoiced or set(),
                   cycles={}, zone="Asia/Shanghai")


def test_a_batch_adds_into_totals_per_line_key_and_counts_postings_per_chain() -> None:
    received = _receive(POSTED[:3])
    assert (received.applied, received.duplicates, received.watermarks, received.gaps) == (3, 0, {"taobao-tmall": 3}, ())
    lines = {(total.key.consumer_bu, total.key.token_class): (total.tokens, total.amount) for total in received.open_lines}
    assert lines == {("taobao-tmall", "input"): (3_000, D("0.00648")), ("taobao-tmall", "output"): (100, D("0.000864")),
                     ("quark", "input"): (3_333, D("0.00719928")), ("quark", "output"): (7, D("0.00006048"))}
    assert [(c.period, c.postings, c.head_sequence, c.head_hash) for c in received.chains] == [
        ("2026-03", 3, 3, POSTED[2].entry_hash)]


def test_sequences_at_or_below_the_watermark_or_twice_in_a_batch_are_duplicates() -> None:
    received = _receive([POSTED[1], POSTED[2], POSTED[2], POSTED[3]], watermarks={"taobao-tmall": 2})
    assert (received.applied, received.duplicates, received.watermarks) == (2, 2, {"taobao-tmall": 4})
    assert _receive(POSTED[:3], watermarks={"taobao-tmall": 3}).open_lines == ()


def test_a_posting_ahead_of_a_missing_sequence_waits_and_is_applied_when_the_gap_closes() -> None:
    first = _receive([POSTED[0], POSTED[2], POSTED[4]])
    assert (first.applied, first.watermarks) == (1, {"taobao-tmall": 1})
    assert [(w.posted.sequence) for w in first.to_wait] == [3, 5]
    assert first.gaps == (Gap("taobao-tmall", 2, 3, 2),)
    again = _receive([POSTED[2]], watermarks={"taobao-tmall": 1}, waiting=first.to_wait)
    assert (again.applied, again.duplicates, again.to_wait, again.released) == (0, 1, (), ())
    assert again.gaps == (Gap("taobao-tmall", 2, 3, 2),)
    filled = _receive([POSTED[1]], watermarks={"taobao-tmall": 1}, waiting=first.to_wait)
    assert (filled.applied, filled.watermarks, filled.gaps) == (2, {"taobao-tmall": 3}, (Gap("taobao-tmall", 4, 5, 1),))
    assert filled.released == (("taobao-tmall", 3),) and filled.to_wait == ()


def test_charges_of_an_invoiced_period_are_late_and_reversals_name_the_charge_they_reverse() -> None:
    received = _receive(POSTED, invoiced={("taobao-tmall", "2026-03")})
    assert [late.priced_id for late in received.late] == [posted.priced_id for posted in POSTED[:4]]
    assert [(ref.priced_id, ref.corrects_id) for ref in received.reversals] == [(POSTED[4].priced_id, FEBRUARY.id)]
    assert {total.key.kind for total in received.open_lines} == {"charge", "reversal"}


def test_a_period_tier_adjustment_belongs_to_its_invoice_and_is_neither_counted_nor_a_head() -> None:
    adjustment = tier_adjustment(_invoice(), InvoiceLine(
        kind="period_tier", period="2026-03", provider_bu="qwen-platform", consumer_bu="taobao-tmall", model="qwen-max",
        tokens=6_440, amount=D("1.005")), "CNY")
    posted = post(adjustment, ChainHead("taobao-tmall", 5, POSTED[4].entry_hash), POSTED_AT)
    received = _receive([posted], watermarks={"taobao-tmall": 5})
    assert received.open_lines == () and received.chains == ()
    assert [(invoice_id, total.key.kind, total.amount) for invoice_id, total in received.tier_lines] == [
        (_invoice().invoice_id, "period_tier", D("1.005"))]
    assert received.watermarks == {"taobao-tmall": 6}


@given(st.permutations(range(5)), st.integers(1, 5))
def test_whatever_the_arrival_order_and_batching_the_totals_are_those_of_the_chain(order, batch_size) -> None:  # noqa: ANN001
    arrivals = [POSTED[index] for index in order]
    watermarks: dict[str, int] = {}
    waiting: list = []
    sums: dict = {}
    for start in range(0, len(arrivals), batch_size):
        received = _receive(arrivals[start:start + batch_size], watermarks=dict(watermarks), waiting=waiting)
        watermarks.update(received.watermarks)
        released = set(received.released)
        waiting = [w for w in waiting if (w.posted.chain, w.posted.sequence) not in released] + list(received.to_wait)
        for total in received.open_lines:
            tokens, amount = sums.get(total.key, (0, D(0)))
            sums[total.key] = (tokens + total.tokens, amount + total.amount)
    assert watermarks == {"taobao-tmall": 5} and waiting == []
    assert sums == {total.key: (total.tokens, total.amount) for total in _receive(POSTED).open_lines}


# --- final means final: early closes, drafts numbered once, settlement revisions --------------

ZONE = "Asia/Shanghai"


def test_a_period_closes_before_it_ends_only_when_meant() -> None:
    check_close(MARCH, MARCH.end, early=False)
    check_close(MARCH, MARCH.end - timedelta(days=3), early=True)
    with pytest.raises(PeriodNotEnded, match="^2026-03 has not ended: it ends at 2026-03-31T16:00:00"):
        check_close(MARCH, MARCH.end - timedelta(microseconds=1), early=False)


def test_each_draft_has_its_own_number_and_late_usage_rides_on_the_last() -> None:
    days = {name: parse(name, ZONE) for name in ("2026-03-01", "2026-03-02", "2026-03-03")}
    drafts = drafts_of(days, {"2026-03-01"}, parse("2026-03-04", ZONE))
    assert [(draft.period.name, draft.place, sorted(draft.periods)) for draft in drafts] == [
        ("2026-03-02", 0, ["2026-03-02"]), ("2026-03-03", 1, ["2026-03-01", "2026-03-03"])]
    only_late = drafts_of({"2026-03-01": days["2026-03-01"]}, {"2026-03-01"}, parse("2026-03-04", ZONE))
    assert [(draft.period.name, draft.place, sorted(draft.periods)) for draft in only_late] == [
        ("2026-03-04", 0, ["2026-03-01"])]
    assert drafts_of({}, {"2026-03-01"}, parse("2026-03-04", ZONE)) == []
    assert carrier_period(MARCH, {"2026-03", "2026-04"}, ZONE).name == "2026-05"
    assert carrier_period(MARCH, set(), ZONE) == MARCH


def test_a_revised_settlement_names_its_revision_and_the_invoices_it_covers() -> None:
    flows = [Flow("taobao-tmall", "qwen-platform", D("1.005"))]
    first = build_settlement(MARCH, flows, currency="CNY", minor_units=2, invoices=[_invoice().invoice_id])
    second = build_settlement(MARCH, flows, currency="CNY", minor_units=2, revision=2,
                              invoices=[_invoice().invoice_id, derive_id("tests", "other")])
    assert (first.id, first.cause_id, first.revision) == (derive_id("settlement", "2026-03"), "settlement:2026-03", 1)
    assert (second.id, second.cause_id, second.revision) == (
        derive_id("settlement", "2026-03", "revision-2"), "settlement:2026-03:revision-2", 2)
    assert second.invoices == tuple(sorted([_invoice().invoice_id, derive_id("tests", "other")]))
    assert second.transfers == first.transfers


# --- plans with fees, and a closed period's tier re-evaluated --------------------------------

TIERS = PeriodTiers(mode="graduated", tiers=(
    PeriodTier(up_to_tokens=100_000, unit_price_per_million=D("10"), flat_fee=D("1")),
    PeriodTier(up_to_tokens=None, unit_price_per_million=D("5"), flat_fee=D("0.5"))))
TIERED = BOOK.model_copy(update={"book_id": "tiers", "effective_from": datetime(2026, 1, 1, tzinfo=UTC), "models": (
    BOOK.models[0].model_copy(update={"period_tiers": TIERS}),)})
BOOKS = BookIndex.of([BOOK, TIERED])
NOW = datetime(2026, 3, 10, tzinfo=UTC)


def _plan(payer: str = "quark", first: str = "2026-03", last: str | None = None) -> Plan:
    return assign_plan([], payer_bu=payer, book_id="tiers", model="qwen-max", provider_bu="qwen-platform",
                       first=parse(first, ZONE), last=parse(last, ZONE) if last else None, books=BOOKS,
                       actor="finance-ops", reason="fee", now=NOW, zone=ZONE)


@pytest.mark.parametrize(("change", "refused"), [
    ({"first": parse("2026-02", ZONE)}, "2026-02 has ended"),
    ({"first": parse("2026-03-14", ZONE)}, "whole months"),
    ({"last": parse("2026-02", ZONE)}, "cannot end (2026-02) before it starts (2026-03)"),
    ({"book_id": "internal"}, "price book internal has no period tiers for qwen-max"),
    ({"last": parse("2036-04", ZONE)}, "at most 120 months"),
])
def test_a_plan_that_cannot_be_is_refused_with_its_reason(change: dict, refused: str) -> None:
    arguments = {"payer_bu": "quark", "book_id": "tiers", "model": "qwen-max", "provider_bu": "qwen-platform",
                 "first": parse("2026-03", ZONE), "last": None, "books": BOOKS, "actor": "finance-ops",
                 "reason": "fee", "now": NOW, "zone": ZONE, **change}
    with pytest.raises(PlanError, match=re.escape(refused)):
        assign_plan([], **arguments)
    with pytest.raises(PlanError, match="already has a plan for qwen-max from 2026-03 to open end"):
        assign_plan([_plan()], **{**arguments, "first": parse("2026-05", ZONE), "last": None, "book_id": "tiers"})


def test_a_plan_charges_the_first_tier_fee_without_usage_and_its_book_with_usage() -> None:
    plan = _plan()
    assert period_tier_lines(MARCH, "quark", (), BOOKS, [plan], ZONE) == [InvoiceLine(
        kind="period_tier", period="2026-03", provider_bu="qwen-platform", consumer_bu="quark", model="qwen-max",
        tokens=0, amount=D("1"))]
    usage = totals_of([("2026-03", POSTED[1])]).lines  # quark's 3,340 Tokens, paid by taobao-tmall here
    lines = period_tier_lines(MARCH, "taobao-tmall", usage, BOOKS, [_plan("taobao-tmall")], ZONE)
    assert [(line.tokens, line.amount) for line in lines] == [(3_340, D("1.0334"))]  # 3,340 x 10 / 1e6 + 1
    assert period_tier_lines(MARCH, "taobao-tmall", usage, BookIndex.of([BOOK]), [], ZONE) == []
    assert period_tier_lines(parse("2026-04", ZONE), "quark", (), BOOKS, [_plan(last="2026-03")], ZONE) == []


def test_plan_periods_are_every_billing_period_of_its_months_not_invoiced_by_the_end() -> None:
    plans = [_plan("quark", "2026-03", "2026-04"), _plan("dingtalk", "2026-03")]
    due = plan_periods(plans, {"dingtalk": "week"}, {("quark", "2026-03")}, parse("2026-04", ZONE).end, ZONE)
    assert [(payer, period.name) for payer, period in due] == [
        ("dingtalk", "2026-03-W09"), ("dingtalk", "2026-W10"), ("dingtalk", "2026-W11"), ("dingtalk", "2026-W12"),
        ("dingtalk", "2026-W13"), ("dingtalk", "2026-03-W14"), ("dingtalk", "2026-04-W14"), ("dingtalk", "2026-W15"),
        ("dingtalk", "2026-W16"), ("dingtalk", "2026-W17"), ("dingtalk", "2026-04-W18"), ("quark", "2026-04")]
    recent = plan_periods(plans, {"dingtalk": "week"}, set(), parse("2026-04", ZONE).end, ZONE,
                          since=parse("2026-04-02", ZONE).start)
    assert [(payer, period.name) for payer, period in recent] == [
        ("dingtalk", "2026-04-W14"), ("dingtalk", "2026-W15"), ("dingtalk", "2026-W16"), ("dingtalk", "2026-W17"),
        ("dingtalk", "2026-04-W18"), ("quark", "2026-04")]


def test_late_usage_of_a_closed_period_re_evaluates_its_tier_charge_on_the_next_invoice() -> None:
    february = parse("2026-02", ZONE)
    late = totals_of([("2026-02", POSTED[3])]).lines  # quark's 50,000 Tokens of February, late
    state = {"2026-02": TierState({("qwen-max", "qwen-platform"): 150_000}, {("qwen-max", "qwen-platform"): D("2")})}
    lines = period_tier_lines(MARCH, "taobao-tmall", late, BOOKS, [], ZONE, state, {"2026-02": february})
    # 150,000 graduated: 100,000 x 10 / 1e6 + 1 + 50,000 x 5 / 1e6 + 0.5 = 2.75, of which 2 was charged.
    assert [(line.period, line.tokens, line.amount) for line in lines] == [("2026-02", 150_000, D("0.75"))]
    invoice = issue_invoice("taobao-tmall", MARCH, totals_of([("2026-02", POSTED[3])]), BOOKS, number=4,
                            currency="CNY", minor_units=2, status="issued", issued_at=MARCH.end, zone=ZONE,
                            late=state, late_periods={"2026-02": february})
    (adjustment,) = tier_adjustments(invoice, "CNY")
    assert adjustment.id == derive_id("period_tier", str(invoice.invoice_id), "qwen-max", "2026-02")
    assert adjustment.total_amount == D("0.75")
    same = {"2026-02": TierState(state["2026-02"].tokens, {("qwen-max", "qwen-platform"): D("2.75")})}
    assert period_tier_lines(MARCH, "taobao-tmall", late, BOOKS, [], ZONE, same, {"2026-02": february}) == []


def test_the_lateness_runs_from_the_earlier_of_the_watermark_and_the_clock() -> None:
    now = datetime(2026, 3, 14, 12, tzinfo=UTC)
    # The usual case: the watermark behind the clock.
    assert close_horizon(now - timedelta(hours=1), now, 48) == now - timedelta(hours=49)
    # An event time two days ahead of the clock does not cut the lateness short.
    assert close_horizon(now + timedelta(days=2), now, 48) == now - timedelta(hours=48)


def test_a_period_is_due_only_while_a_payer_with_open_totals_has_no_invoice_for_it() -> None:
    """Late usage of a period its payer was invoiced for waits for the payer's next
    invoice: the period is not due again for it, so no close after every batch."""
    open_totals = [("shop", "2026-11"), ("shop", "2026-10"), ("games", "2026-11"), ("games", "2026-W44")]
    assert due_periods(open_totals, set(), ZONE) == ["2026-10", "2026-W44", "2026-11"]
    assert due_periods(open_totals, {("shop", "2026-11")}, ZONE) == ["2026-10", "2026-W44", "2026-11"]
    assert due_periods(open_totals, {("shop", "2026-11"), ("games", "2026-11"), ("shop", "2026-10")},
                       ZONE) == ["2026-W44"]
    assert due_periods([], set(), ZONE) == []
