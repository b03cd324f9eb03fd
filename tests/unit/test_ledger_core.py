"""The ledger's core: balanced double entry for charges and reversals, and a
hash chain in which every entry covers its predecessor."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from tokenhub.contracts.canonical import canonical_json
from tokenhub.contracts.events import Posting
from tokenhub.services.ledger.domain import (
    GENESIS_HASH,
    ChainHead,
    UnbalancedEntry,
    balance_deltas,
    check_balanced,
    hash_entry,
    hashed_content,
    post_batch,
    postings_for,
)
from tests.contract.examples import PRICED

POSTED_AT = datetime(2026, 3, 14, 3, 0, tzinfo=UTC)


def test_a_charge_debits_payer_spend_and_consumer_tokens() -> None:
    legs = {(posting.ledger, posting.account): (posting.debit, posting.credit) for posting in postings_for(PRICED)}
    assert legs == {
        ("money", "bu:taobao-tmall:spend"): (PRICED.total_amount, Decimal(0)),
        ("money", "bu:qwen-platform:revenue"): (Decimal(0), PRICED.total_amount),
        ("tokens", "bu:taobao-tmall:consumed"): (Decimal(172011), Decimal(0)),
        ("tokens", "bu:qwen-platform:served"): (Decimal(0), Decimal(172011)),
    }


def test_a_reversal_posts_the_opposite_sides_with_positive_figures() -> None:
    lines = tuple(line.model_copy(update={"tokens": -line.tokens, "amount": -line.amount}) for line in PRICED.lines)
    reversal = PRICED.model_copy(update={"kind": "reversal", "lines": lines, "total_amount": -PRICED.total_amount,
                                         "total_tokens": -PRICED.total_tokens})
    legs = postings_for(reversal)
    assert all(posting.debit >= 0 and posting.credit >= 0 for posting in legs)
    spend = next(posting for posting in legs if posting.account == "bu:taobao-tmall:spend")
    assert spend.credit == PRICED.total_amount
    deltas = balance_deltas(post_batch([PRICED, reversal.model_copy(update={"id": PRICED.consumed_id})], {}, POSTED_AT)[0])
    assert all(debit == credit for debit, credit in deltas.values())


def test_unbalanced_legs_are_refused() -> None:
    with pytest.raises(UnbalancedEntry, match="money"):
        check_balanced((Posting(ledger="money", account="a", debit=Decimal(1)),
                        Posting(ledger="money", account="b", credit=Decimal("0.999999999999"))))


def test_each_entry_links_to_its_predecessor() -> None:
    second = PRICED.model_copy(update={"id": PRICED.consumed_id})
    posted, payloads, heads = post_batch([PRICED, second], {}, POSTED_AT)
    assert [entry.sequence for entry in posted] == [1, 2]
    assert payloads == [canonical_json(entry) for entry in posted]
    assert posted[0].previous_hash == GENESIS_HASH
    assert posted[1].previous_hash == posted[0].entry_hash
    assert heads["taobao-tmall"] == ChainHead("taobao-tmall", 2, posted[1].entry_hash)
    for entry in posted:
        assert hash_entry(hashed_content(entry), entry.previous_hash) == entry.entry_hash
    tampered = posted[0].model_copy(update={"amount": posted[0].amount + 1})
    assert hash_entry(hashed_content(tampered), tampered.previous_hash) != posted[0].entry_hash


def test_chains_continue_from_their_stored_heads() -> None:
    head = ChainHead("taobao-tmall", 41, "ab" * 32)
    posted, _, _ = post_batch([PRICED], {"taobao-tmall": head}, POSTED_AT)
    assert (posted[0].sequence, posted[0].previous_hash) == (42, "ab" * 32)
