"""Golden `Priced` bytes: fixed consumption priced with fixed book versions must
give, byte for byte, the canonical JSON checked in as `contracts/golden/priced_*.json`
(docs/architecture.md decision 5). The test compares and never writes; regenerate only on
purpose, after a reviewed change of the wire form:
`python -m tests.contract.test_priced_golden --write`."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from tokenhub.contracts.canonical import canonical_json
from tokenhub.contracts.events import (
    BuAdjustment,
    ContextTier,
    ModelPrice,
    Priced,
    PriceBookPublished,
    TokenConsumed,
    decode,
)
from tokenhub.contracts.ids import consumed_id, derive_id, priced_id
from tokenhub.contracts.money import line_amount
from tokenhub.contracts.pricebook import BookIndex
from tokenhub.services.pricing.domain import price, price_in_force
from tokenhub.services.pricing.reprice import correct
from tests.contract.examples import GOLDEN_DIR

D = Decimal
EVENT_TIME = datetime(2026, 3, 14, 2, 30, 15, 250000, tzinfo=UTC)
PUBLISHED = datetime(2026, 2, 27, 1, 0, tzinfo=UTC)
QWEN = ModelPrice(
    model="qwen-max",
    unit_prices_per_million={"input": D("2.4"), "cache_read": D("0.48"), "cache_write": D("3"), "output": D("9.6"),
                             "reasoning": D("9.6")},
    context_tiers=(
        ContextTier(name="above-32k", above_input_tokens=32_000, unit_prices_per_million={"input": D("4"), "output": D("16")}),
        ContextTier(name="above-128k", above_input_tokens=128_000,
                    unit_prices_per_million={"input": D("6.4"), "cache_read": D("1.28"), "output": D("25.6"),
                                             "reasoning": D("25.6")}),
    ),
    bu_adjustments=(BuAdjustment(bu="taobao-tmall", factor=D("0.85")),),
)
WAN = ModelPrice(model="wan-video", unit_prices_per_million={"image": D("144"), "video": D("180")},
                 note="video: 0.1 per video second x rate 7.2 / 4000 Tokens per video second (conversion table v4)")


def _book(version: int, effective_from: datetime, models: tuple[ModelPrice, ...], **extra: object) -> PriceBookPublished:
    return PriceBookPublished(id=derive_id("pricebook", "golden", str(version)), event_time=effective_from,
                              cause_id=f"finance-ops:golden:{version}", book_id="golden", version=version,
                              effective_from=effective_from, currency="CNY", models=models, actor="finance-ops",
                              reason=f"golden version {version}", published_at=PUBLISHED, **extra)


V1 = _book(1, datetime(2026, 2, 28, 16, 0, tzinfo=UTC), (QWEN, WAN))
V2 = _book(2, datetime(2026, 3, 1, 0, 0, tzinfo=UTC), (QWEN.model_copy(update={
    "unit_prices_per_million": {**QWEN.unit_prices_per_million, "input": D("2"), "output": D("8")},
    "context_tiers": (QWEN.context_tiers[0].model_copy(update={"unit_prices_per_million": {"input": D("3.6"),
                                                                                          "output": D("14.4")}}),
                      QWEN.context_tiers[1])}), WAN),
    retroactive=True)


def _consumed(request: str, payer: str, model: str, tokens: dict[str, int], **extra: object) -> TokenConsumed:
    return TokenConsumed(
        id=consumed_id("gateway/golden", request, payer), event_time=EVENT_TIME, cause_id=f"gateway/golden/{request}",
        usage_source="gateway/golden", usage_id=request, payer_bu=payer, consumer_bu="taobao-tmall",
        provider_bu="qwen-platform", app="search-assistant", model=model, tokens=tokens,
        request_input_tokens=sum(tokens.get(name, 0) for name in ("input", "cache_read", "cache_write")), **extra)


AT_THRESHOLD = _consumed("req-1", "quark", "qwen-max", {"input": 120_000, "cache_read": 8_000, "output": 2_345})
ONE_ABOVE = _consumed("req-2", "quark", "qwen-max", {"input": 120_001, "cache_read": 8_000, "output": 2_345})
DISCOUNTED = _consumed("req-3", "taobao-tmall", "qwen-max",
                       {"input": 20_000, "cache_read": 9_000, "cache_write": 3_001, "output": 777, "reasoning": 1_234})
VIDEO = _consumed("req-4", "quark", "wan-video", {"video": 40_000, "image": 3_000},
                  raw_units={"video_seconds": D("10"), "image_count": D("3")}, conversion_version=4)

_CHARGE = price(DISCOUNTED, V1)
_OUTCOME = correct(DISCOUNTED, _CHARGE, BookIndex.of([V1, V2]))
assert _OUTCOME is not None

GOLDEN: dict[str, Priced] = {
    "priced_at_threshold": price(AT_THRESHOLD, V1),
    "priced_one_above_threshold": price(ONE_ABOVE, V1),
    "priced_discounted_all_text_classes": _CHARGE,
    "priced_video_and_image": price(VIDEO, V1),
    "priced_reversal": _OUTCOME.reversal,
    "priced_correction": _OUTCOME.correction,
}


def _golden(name: str) -> bytes:
    return (GOLDEN_DIR / f"{name}.json").read_bytes().rstrip(b"\n")


def test_every_golden_file_is_checked() -> None:
    assert {path.stem for path in GOLDEN_DIR.glob("priced_*.json")} == set(GOLDEN)


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_pricing_gives_the_checked_in_bytes(name: str) -> None:
    assert canonical_json(GOLDEN[name]) == _golden(name), f"the Priced bytes of {name} changed"


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_bytes_parse_and_reencode_byte_for_byte(name: str) -> None:
    assert canonical_json(decode(Priced, _golden(name))) == _golden(name)


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_an_auditor_can_recompute_every_amount_from_the_golden_bytes(name: str) -> None:
    """Invariant 4, from the wire form alone: each line is Tokens x unit price / 1e6
    at twelve places, the total is the sum of the lines."""
    event = decode(Priced, _golden(name))
    assert all(line.amount == line_amount(line.tokens, line.unit_price_per_million) for line in event.lines)
    assert event.total_amount == sum((line.amount for line in event.lines), D(0))
    assert event.total_tokens == sum(line.tokens for line in event.lines)


def test_the_threshold_pair_differs_only_by_the_tier() -> None:
    at, above = decode(Priced, _golden("priced_at_threshold")), decode(Priced, _golden("priced_one_above_threshold"))
    assert (at.context_tier, above.context_tier) == ("above-32k", "above-128k")
    # 128,000 whole input: input 120000 x 4 + cache_read 8000 x 0.48 + output 2345 x 16, per million
    assert at.total_amount == D("0.480000000000") + D("0.003840000000") + D("0.037520000000")
    # 128,001: input 120001 x 6.4 + cache_read 8000 x 1.28 + output 2345 x 25.6, per million
    assert above.total_amount == D("0.768006400000") + D("0.010240000000") + D("0.060032000000")


def test_the_reversal_and_correction_are_linked_to_the_charge() -> None:
    charge = decode(Priced, _golden("priced_discounted_all_text_classes"))
    reversal, correction = decode(Priced, _golden("priced_reversal")), decode(Priced, _golden("priced_correction"))
    assert (reversal.kind, reversal.corrects_id) == ("reversal", charge.id)
    assert reversal.id == priced_id(charge.consumed_id, "golden", 2, kind="reversal")
    assert all(line.tokens < 0 and line.amount < 0 for line in reversal.lines)
    assert reversal.total_amount == -charge.total_amount
    assert (correction.kind, correction.corrects_id, correction.book_version) == ("correction", charge.id, 2)
    assert correction.id == priced_id(charge.consumed_id, "golden", 2, kind="correction")
    assert len({charge.id, reversal.id, correction.id}) == 3
    # v2's tier: input 20000 x 3.6 and output 777 x 14.4 at 0.85; the other classes kept their prices
    assert correction.total_amount - charge.total_amount == (D("-0.4") * 20_000 + D("-1.6") * 777) * D("0.85") / 10**6
    assert correction == price_in_force(DISCOUNTED, BookIndex.of([V1, V2])).model_copy(update={
        "id": correction.id, "kind": "correction", "corrects_id": charge.id})


def write() -> None:
    for name, event in GOLDEN.items():
        (GOLDEN_DIR / f"{name}.json").write_bytes(canonical_json(event) + b"\n")


if __name__ == "__main__":
    if "--write" in sys.argv:
        write()
