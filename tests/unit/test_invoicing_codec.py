"""Invoicing's compiled decoder of ledger.posted reads every field it keeps
totals of exactly as the published model does: for the golden event, for
postings of every kind built by the ledger's own code, and for generated ones."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokenhub.contracts.canonical import canonical_json
from tokenhub.contracts.events import LedgerPosted, decode
from tokenhub.services.invoicing.codec import Posted, PostedError, decode_posted
from tokenhub.services.ledger.domain import GENESIS_HASH, ChainHead, post
from tokenhub.services.pricing.reprice import reverse
from tests.contract.examples import PRICED

GOLDEN = Path(__file__).resolve().parents[2] / "contracts" / "golden" / "ledger_posted.json"
FIELDS = [name for name in Posted.__struct_fields__ if name != "lines"]


def _same(raw: bytes) -> None:
    model, lean = decode(LedgerPosted, raw), decode_posted(raw)
    assert {name: getattr(lean, name) for name in FIELDS} == {name: getattr(model, name) for name in FIELDS}
    assert [(line.token_class, line.tokens, line.unit_price_per_million, line.amount) for line in lean.lines] == [
        (line.token_class, line.tokens, line.unit_price_per_million, line.amount) for line in model.lines]


def test_the_golden_posting_reads_the_same() -> None:
    _same(GOLDEN.read_bytes().strip())


@pytest.mark.parametrize("priced", [PRICED, reverse(PRICED, "internal", 2),
                                    PRICED.model_copy(update={"kind": "correction", "corrects_id": PRICED.id,
                                                              "app": None})])
def test_postings_of_every_kind_read_the_same(priced) -> None:  # noqa: ANN001
    _same(canonical_json(post(priced, ChainHead("taobao-tmall", 41, "f" * 64), datetime(2026, 3, 20, tzinfo=UTC))))


@given(st.integers(1, 10**12), st.integers(0, 27), st.decimals(min_value=0, max_value=10**6, places=12),
       st.integers(1, 10**6))
def test_generated_postings_read_the_same(tokens: int, day: int, unit_price: Decimal, sequence: int) -> None:
    line = PRICED.lines[0].model_copy(update={"tokens": tokens, "unit_price_per_million": unit_price,
                                              "amount": Decimal(tokens) * unit_price / 1_000_000})
    lines = (line.model_copy(update={"amount": line.amount.quantize(Decimal("1e-12"))}),
             *PRICED.lines[1:])
    priced = PRICED.model_copy(update={"lines": lines, "total_tokens": sum(item.tokens for item in lines),
                                       "total_amount": sum((item.amount for item in lines), Decimal(0))})
    priced = priced.model_copy(update={"event_time": datetime(2026, 2, day + 1, 13, tzinfo=UTC)})
    _same(canonical_json(post(priced, ChainHead("taobao-tmall", sequence - 1, GENESIS_HASH),
                              datetime(2026, 3, 20, tzinfo=UTC))))


@pytest.mark.parametrize(("change", "reason"), [
    (b'"sequence":0', "sequence"), (b'"amount":"NaN"', "finite"), (b'"event_time":"2026-03-14T02:30:15"', "timezone")])
def test_what_cannot_be_added_up_is_refused(change: bytes, reason: str) -> None:
    raw = canonical_json(post(PRICED, ChainHead("taobao-tmall", 0, GENESIS_HASH), datetime(2026, 3, 20, tzinfo=UTC)))
    field = change.split(b":")[0]
    start = raw.index(field + b":", raw.index(b'"lines":') if field == b'"amount"' else 0)
    end = raw.index(b",", start)
    with pytest.raises(PostedError, match=reason):
        decode_posted(raw[:start] + change + raw[end:])
