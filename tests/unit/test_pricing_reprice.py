"""Retroactive corrections (pure): a reversal that is the exact negative of the
Priced it replaces, a correction named by the new version, nothing to do
against the same version, and a later version correcting the correction."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokenhub.contracts.canonical import canonical_json
from tokenhub.contracts.ids import priced_id
from tokenhub.contracts.pricebook import BookIndex
from tokenhub.services.pricing.domain import Unpriceable, price_in_force
from tokenhub.services.pricing.reprice import correct
from tests.contract.examples import BOOK, CONSUMED

D = Decimal
V2 = BOOK.model_copy(update={"version": 2, "retroactive": True, "models": (BOOK.models[0].model_copy(update={
    "unit_prices_per_million": {"input": D("2"), "cache_read": D("0.4"), "output": D("8"), "reasoning": D("8")},
    "context_tiers": ()}),)})
V3 = V2.model_copy(update={"version": 3, "effective_from": BOOK.effective_from + timedelta(days=1), "models": (
    V2.models[0].model_copy(update={"unit_prices_per_million": {"input": D("1"), "cache_read": D("0.2"),
                                                                  "output": D("4"), "reasoning": D("4")}}),)})
ORIGINAL = price_in_force(CONSUMED, BookIndex.of([BOOK]))


def test_a_retroactive_version_gives_a_linked_reversal_and_a_correction_named_by_that_version() -> None:
    outcome = correct(CONSUMED, ORIGINAL, BookIndex.of([BOOK, V2]))
    assert outcome is not None
    reversal, correction = outcome.reversal, outcome.correction
    assert (reversal.kind, reversal.corrects_id, reversal.cause_id) == ("reversal", ORIGINAL.id, str(ORIGINAL.id))
    assert reversal.id == priced_id(CONSUMED.id, "internal", 2, kind="reversal")
    assert [(line.token_class, line.tokens, line.amount) for line in reversal.lines] == [
        (line.token_class, -line.tokens, -line.amount) for line in ORIGINAL.lines]
    assert (reversal.total_tokens, reversal.total_amount) == (-172_011, D("-0.684676800000"))
    assert (reversal.book_id, reversal.book_version) == (ORIGINAL.book_id, ORIGINAL.book_version)  # what it undoes
    assert (correction.kind, correction.corrects_id, correction.book_version) == ("correction", ORIGINAL.id, 2)
    assert correction.id == priced_id(CONSUMED.id, "internal", 2, kind="correction")
    assert correction.id not in (ORIGINAL.id, reversal.id)
    # v2 for the discounted payer: (150000 x 2 + 20000 x 0.4 + 1234 x 8 + 777 x 8) x 0.9 / 1e6
    assert correction.total_amount == D("0.291679200000")
    assert outcome.difference == D("0.291679200000") - D("0.684676800000")


def test_repricing_against_the_same_version_does_nothing_and_a_later_version_corrects_again() -> None:
    first = correct(CONSUMED, ORIGINAL, BookIndex.of([BOOK, V2]))
    assert first is not None
    assert correct(CONSUMED, first.correction, BookIndex.of([BOOK, V2])) is None
    assert correct(CONSUMED, ORIGINAL, BookIndex.of([BOOK])) is None
    second = correct(CONSUMED, first.correction, BookIndex.of([BOOK, V2, V3]))
    assert second is not None
    assert second.reversal.corrects_id == first.correction.id
    assert second.reversal.total_amount == -first.correction.total_amount
    assert second.correction.id == priced_id(CONSUMED.id, "internal", 3, kind="correction")
    assert second.correction.total_amount == D("0.145839600000")


def test_corrections_are_deterministic_to_the_byte() -> None:
    one, two = correct(CONSUMED, ORIGINAL, BookIndex.of([BOOK, V2])), correct(CONSUMED, ORIGINAL, BookIndex.of([V2, BOOK]))
    assert one is not None and two is not None
    assert canonical_json(one.reversal) == canonical_json(two.reversal)
    assert canonical_json(one.correction) == canonical_json(two.correction)


def test_a_book_that_no_longer_prices_the_model_leaves_the_charge_standing() -> None:
    dropped = V2.model_copy(update={"models": (V2.models[0].model_copy(update={"model": "qwen-other"}),)})
    assert correct(CONSUMED, ORIGINAL, BookIndex.of([BOOK, dropped])) is None  # v1 still prices it
    no_output = V2.model_copy(update={"models": (V2.models[0].model_copy(update={
        "unit_prices_per_million": {"input": D("2")}}),)})
    with pytest.raises(Unpriceable, match="no cache_read price"):
        correct(CONSUMED, ORIGINAL, BookIndex.of([BOOK, no_output]))


@given(st.integers(0, 10**9), st.integers(0, 10**9), st.integers(0, 10**9))
def test_reversal_plus_correction_moves_spend_by_exactly_the_price_difference(input_tokens: int, cache_read: int,
                                                                             output: int) -> None:
    tokens = {name: count for name, count in {"input": input_tokens, "cache_read": cache_read, "output": output}.items() if count}
    if not tokens:
        return
    consumed = CONSUMED.model_copy(update={"tokens": tokens, "request_input_tokens": input_tokens + cache_read})
    original = price_in_force(consumed, BookIndex.of([BOOK]))
    outcome = correct(consumed, original, BookIndex.of([BOOK, V2]))
    assert outcome is not None
    assert original.total_amount + outcome.reversal.total_amount == 0
    assert original.total_tokens + outcome.reversal.total_tokens == 0
    assert outcome.correction.total_tokens == original.total_tokens
    assert original.total_amount + outcome.difference == outcome.correction.total_amount
