"""A price book is refused before publishing, with a message naming the fault:
overlapping or unordered tiers, negative prices, a foreign currency, a version
effective in the past without `--retroactive`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from tokenhub.contracts.events import BuAdjustment, ContextTier, PeriodTier, PeriodTiers, PriceBookPublished
from tokenhub.services.pricing.validation import PriceBookInvalid, validate_book
from tests.contract.examples import BOOK

D = Decimal
NOW = BOOK.effective_from - timedelta(hours=1)


def _with(**model: object) -> PriceBookPublished:
    return BOOK.model_copy(update={"models": (BOOK.models[0].model_copy(update=model),)})


def _tiers(*bounds: int | None) -> PeriodTiers:
    return PeriodTiers(mode="graduated", tiers=tuple(PeriodTier(up_to_tokens=bound, unit_price_per_million=D(1))
                                                    for bound in bounds))


def test_a_valid_book_passes_and_a_past_one_needs_retroactive() -> None:
    validate_book(BOOK, "CNY", NOW, retroactive=False)
    later = BOOK.effective_from + timedelta(microseconds=1)
    with pytest.raises(PriceBookInvalid, match="in the past; pass --retroactive"):
        validate_book(BOOK, "CNY", later, retroactive=False)
    validate_book(BOOK, "CNY", later, retroactive=True)


@pytest.mark.parametrize(("book", "message"), [
    (BOOK.model_copy(update={"currency": "USD"}), "not the settlement currency CNY"),
    (BOOK.model_copy(update={"models": ()}), "prices no model"),
    (BOOK.model_copy(update={"models": BOOK.models * 2}), "priced twice"),
    (_with(unit_prices_per_million={"input": D("-0.1")}), "negative price for input"),
    (_with(context_tiers=(ContextTier(name="x", above_input_tokens=1, unit_prices_per_million={"output": D(-1)}),)),
     "negative price for x.output"),
    (_with(context_tiers=(ContextTier(name="a", above_input_tokens=256_000, unit_prices_per_million={"input": D(1)}),
                          ContextTier(name="b", above_input_tokens=128_000, unit_prices_per_million={"input": D(1)}))),
     "increasing, distinct thresholds"),
    (_with(context_tiers=(ContextTier(name="a", above_input_tokens=1, unit_prices_per_million={"input": D(1)}),
                          ContextTier(name="a", above_input_tokens=2, unit_prices_per_million={"input": D(1)}))),
     "names must be distinct"),
    (_with(context_tiers=(ContextTier(name="a", above_input_tokens=1, unit_prices_per_million={}),)), "sets no price"),
    (_with(bu_adjustments=(BuAdjustment(bu="quark", factor=D("-0.5")),)), "negative price factor for quark"),
    (_with(bu_adjustments=(BuAdjustment(bu="quark", factor=D("0.5")), BuAdjustment(bu="quark", factor=D("0.6")))),
     "two price adjustments"),
    (_with(period_tiers=_tiers(100, 100, None)), "overlap or are out of order"),
    (_with(period_tiers=_tiers(200, 100, None)), "overlap or are out of order"),
    (_with(period_tiers=_tiers(100, 200)), "last period tier must be open-ended"),
    (_with(period_tiers=_tiers(None, 100, None)), "only the last period tier"),
    (_with(period_tiers=PeriodTiers(mode="volume", tiers=())), "period tiers are empty"),
    (_with(period_tiers=PeriodTiers(mode="volume", tiers=(PeriodTier(unit_price_per_million=D(1), flat_fee=D(-1)),))),
     "negative period tier price or fee"),
])
def test_faulty_books_are_refused_with_the_reason(book: PriceBookPublished, message: str) -> None:
    with pytest.raises(PriceBookInvalid, match=message):
        validate_book(book, "CNY", NOW, retroactive=False)


def test_a_negative_period_tier_unit_price_is_refused() -> None:
    tiers = PeriodTiers(mode="graduated", tiers=(PeriodTier(up_to_tokens=10, unit_price_per_million=D(1)),
                                                 PeriodTier(unit_price_per_million=D("-0.5"))))
    with pytest.raises(PriceBookInvalid, match="negative period tier price"):
        validate_book(_with(period_tiers=tiers), "CNY", NOW, retroactive=False)


def _document(**changes: object) -> dict:
    document = {"book_id": "internal", "version": 7, "currency": "CNY", "effective_from": "2026-03-01T00:00:00+08:00",
                "models": [{"model": "qwen-max", "unit_prices_per_million": {"input": "2.4", "output": "9.6"}}]}
    return {**document, **changes}


@pytest.mark.parametrize(("document", "retroactive", "message"), [
    (_document(), False, "in the past; pass --retroactive"),
    (_document(currency="USD"), True, "USD is not the settlement currency CNY"),
    (_document(models=[{"model": "qwen-max", "unit_prices_per_million": {"input": "-1"}}]), True,
     "negative price for input"),
    (_document(models=[{"model": "qwen-max", "unit_prices_per_million": {"input": "1"}, "period_tiers": {
        "mode": "volume", "tiers": [{"up_to_tokens": 500, "unit_price_per_million": "1"},
                                    {"up_to_tokens": 100, "unit_price_per_million": "1"},
                                    {"up_to_tokens": None, "unit_price_per_million": "1"}]}}]), True,
     "overlap or are out of order"),
])
def test_pricebook_publish_refuses_before_it_reaches_the_stack(document: dict, retroactive: bool, message: str,
                                                               tmp_path: Path) -> None:
    """The command validates first: no broker or database is configured here, and the
    refusal names the fault rather than the missing stack."""
    environment = {name: value for name, value in os.environ.items() if not name.startswith("TOKENHUB_")}
    environment.update({"TOKENHUB_STATE_DIR": str(tmp_path / "no-stack"), "TOKENHUB_NOW": "2026-03-10T00:00:00+08:00"})
    path = tmp_path / "book.json"
    path.write_text(json.dumps(document))
    command = ["pricebook", "publish", str(path), "--actor", "tests", "--reason", "test book",
               *(["--retroactive"] if retroactive else [])]
    result = subprocess.run([sys.executable, "-m", "tokenhub.cli.main", *command], env=environment, cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and result.stdout == "", result
    assert result.stderr.startswith("tokenhub pricebook publish: ") and message in result.stderr, result.stderr
