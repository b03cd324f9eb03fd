"""One realistic example of each event, with fixed times and deterministic ids.
Their canonical bytes are the golden files in `contracts/golden/`.
Regenerate only on purpose: `python -m tests.contract.examples --write`."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from pydantic import BaseModel

from tokenhub.client import usage_event
from tokenhub.contracts import codecs
from tokenhub.contracts.budgets import BudgetSet, budget_set_id
from tokenhub.contracts.canonical import canonical_json
from tokenhub.contracts.events import (
    BuAdjustment,
    ContextTier,
    ModelPrice,
    PriceBookPublished,
    TokenConsumed,
    UsageRejected,
    decode,
)
from tokenhub.contracts.ids import consumed_id, derive_id
from tokenhub.contracts.periods import parse
from tokenhub.contracts.registry import BusinessUnit, ModelEntry, registry_change
from tokenhub.services.invoicing.domain import build_invoice, build_settlement, totals_of
from tokenhub.services.ledger.budgets import quota_record
from tokenhub.services.ledger.domain import GENESIS_HASH, ChainHead, post
from tokenhub.services.metering.domain import Catalogue, Limits, RawUsage, meter
from tokenhub.services.pricing.domain import price

GOLDEN_DIR = Path(__file__).resolve().parents[2] / "contracts" / "golden"
TIME = datetime(2026, 3, 14, 2, 30, 15, 250000, tzinfo=UTC)
PUBLISHED = datetime(2026, 2, 27, 1, 0, tzinfo=UTC)

USAGE = usage_event("gateway/taobao", "req-000123", TIME, {
    "consumer_bu": "taobao-tmall", "app": "search-assistant", "model": "qwen-max",
    "input_tokens": 150_000, "cache_read_tokens": 20_000, "output_tokens": 1_234, "reasoning_tokens": 777,
})

BOOK = PriceBookPublished(
    id=derive_id("pricebook", "internal", "1"),
    event_time=datetime(2026, 2, 28, 16, 0, tzinfo=UTC),
    cause_id="finance-ops:internal:1",
    book_id="internal",
    version=1,
    effective_from=datetime(2026, 2, 28, 16, 0, tzinfo=UTC),
    currency="CNY",
    models=(ModelPrice(
        model="qwen-max",
        unit_prices_per_million={"input": Decimal("2.4"), "cache_read": Decimal("0.48"), "output": Decimal("9.6"),
                                 "reasoning": Decimal("9.6")},
        context_tiers=(ContextTier(name="long-context", above_input_tokens=128_000,
                                   unit_prices_per_million={"input": Decimal("4.8"), "output": Decimal("19.2")}),),
        bu_adjustments=(BuAdjustment(bu="taobao-tmall", factor=Decimal("0.9")),),
    ),),
    actor="finance-ops",
    reason="March internal transfer prices",
    published_at=PUBLISHED,
)

CATALOGUE = Catalogue(
    business_units=frozenset({"taobao-tmall", "qwen-platform"}),
    models={"qwen-max": ModelEntry(model_id="qwen-max", provider_bu="qwen-platform", modality="text",
                                   token_classes=("input", "cache_read", "cache_write", "output", "reasoning"))},
)
LIMITS = Limits(now=datetime(2026, 3, 14, 3, 0, tzinfo=UTC), accepted_window=timedelta(days=35),
                future_skew=timedelta(minutes=5), message_bytes_max=65536)

# Metering builds it in the wire form; the example is the contract's model of the same bytes.
CONSUMED = decode(TokenConsumed, codecs.encode(meter(RawUsage(canonical_json(USAGE)), CATALOGUE, LIMITS).consumed[0]))
PRICED = price(CONSUMED, BOOK)
POSTED = post(PRICED, ChainHead("taobao-tmall", 0, GENESIS_HASH), datetime(2026, 3, 14, 2, 30, 16, tzinfo=UTC))
REJECTED = UsageRejected(
    id=derive_id("usage.rejected", "example"),
    event_time=TIME,
    cause_id="example",
    reason_code="unknown_bu",
    message="unknown business unit taobao-tmal",
    rejected_ref=str(derive_id("rejected", "example")),
    usage_source="gateway/taobao",
    usage_id="req-000124",
    original_sha256="0" * 64,
)
REGISTRY = registry_change("business_unit", BusinessUnit(bu_id="taobao-tmall", display_name="Taobao & Tmall",
                                                         parent_group="China E-commerce", cost_centre="CC-1001"),
                           "taobao-tmall", "finance-ops", "company registry", PUBLISHED)
INVOICE = build_invoice("taobao-tmall", parse("2026-03", "Asia/Shanghai"), totals_of([("2026-03", POSTED)]), number=1,
                        currency="CNY", minor_units=2, rounding_mode="half_even", status="issued",
                        issued_at=datetime(2026, 4, 2, 1, 0, tzinfo=UTC))

POSTED_OVER_QUOTA = post(PRICED, ChainHead("taobao-tmall", 0, GENESIS_HASH), datetime(2026, 3, 14, 2, 30, 16, tzinfo=UTC),
                         overage=True)
BUDGET = BudgetSet(id=budget_set_id("taobao-tmall", None, "2026-03", "2026-03-01T00:00:00Z"), event_time=PUBLISHED,
                   cause_id="finance-ops", payer_bu="taobao-tmall", period_from="2026-03", amount=Decimal("1.5"),
                   hard_limit=Decimal("2"), currency="CNY", actor="finance-ops", reason="March AI budget",
                   set_at=PUBLISHED)
QUOTA_STATE = quota_record("taobao-tmall", "2026-03", [BUDGET], {"taobao-tmall": Decimal("2.25"), "taobao-search": Decimal("0.5")},
                           None, at=datetime(2026, 3, 14, 2, 30, 16, tzinfo=UTC), cause=str(PRICED.id))

SETTLEMENT = build_settlement(parse("2026-03", "Asia/Shanghai"), [POSTED], currency="CNY", minor_units=2,
                              invoices=[INVOICE.invoice_id])

EXAMPLES: dict[str, BaseModel] = {
    "usage_reported": USAGE,
    "registry_changed": REGISTRY,
    "pricebook_published": BOOK,
    "token_consumed": CONSUMED,
    "usage_rejected": REJECTED,
    "priced": PRICED,
    "ledger_posted": POSTED,
    "ledger_posted_over_quota": POSTED_OVER_QUOTA,
    "quota_state": QUOTA_STATE,
    "invoice_issued": INVOICE,
    "settlement_netted": SETTLEMENT,
}

assert CONSUMED.id == consumed_id("gateway/taobao", "req-000123", "taobao-tmall")


def write() -> None:
    for name, example in EXAMPLES.items():
        (GOLDEN_DIR / f"{name}.json").write_bytes(canonical_json(example) + b"\n")


if __name__ == "__main__":
    if "--write" in sys.argv:
        write()
