"""The ledger's core: balanced double entry for charges and reversals, and a
hash chain in which every entry covers its predecessor."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import msgspec
import orjson
import pytest

import tokenhub.contracts
from tokenhub.contracts import codecs
from tokenhub.contracts.canonical import canonical_json
from tokenhub.contracts.events import LedgerPosted, MissingFields, Posting, Priced, decode, unchecked
from tokenhub.contracts.ids import derive_id
from tokenhub.services.ledger.domain import (
    GENESIS_HASH,
    ChainHead,
    UnbalancedEntry,
    balance_deltas,
    check_balanced,
    decide_batch,
    hash_entry,
    hashed_content,
    month_spend,
    post,
    post_batch,
    postings_for,
    rebuild_entry,
    receive,
    transfer,
)
from tests.contract.examples import POSTED, PRICED

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
    deltas = balance_deltas(post_batch([PRICED, reversal.model_copy(update={"id": PRICED.consumed_id})], {}, POSTED_AT).transfers)
    assert all(debit == credit for debit, credit in deltas.values())


def test_unbalanced_legs_are_refused() -> None:
    with pytest.raises(UnbalancedEntry, match="money"):
        check_balanced((Posting(ledger="money", account="a", debit=Decimal(1)),
                        Posting(ledger="money", account="b", credit=Decimal("0.999999999999"))))


def test_each_entry_links_to_its_predecessor() -> None:
    second = PRICED.model_copy(update={"id": PRICED.consumed_id})
    posted, payloads, heads, _ = post_batch([PRICED, second], {}, POSTED_AT)
    assert [entry.sequence for entry in posted] == [1, 2]
    assert payloads == [codecs.encode(entry) for entry in posted]
    assert posted[0].previous_hash == GENESIS_HASH
    assert posted[1].previous_hash == posted[0].entry_hash
    assert heads["taobao-tmall"] == ChainHead("taobao-tmall", 2, posted[1].entry_hash)
    models = [decode(LedgerPosted, payload) for payload in payloads]
    for entry in models:
        assert hash_entry(hashed_content(entry), entry.previous_hash) == entry.entry_hash
    tampered = models[0].model_copy(update={"amount": models[0].amount + 1})
    assert hash_entry(hashed_content(tampered), tampered.previous_hash) != models[0].entry_hash


def test_chains_continue_from_their_stored_heads() -> None:
    head = ChainHead("taobao-tmall", 41, "ab" * 32)
    posted = post_batch([PRICED], {"taobao-tmall": head}, POSTED_AT).posted
    assert (posted[0].sequence, posted[0].previous_hash) == (42, "ab" * 32)


def _validated_entry(priced: Priced, head: ChainHead, posted_at: datetime) -> LedgerPosted:
    """The entry as the full model validation builds it: the reference that the
    ledger's unvalidated fast path must equal byte for byte."""
    unhashed = LedgerPosted(
        id=derive_id("posted", str(priced.id)), event_time=priced.event_time, cause_id=str(priced.id),
        priced_id=priced.id, kind=priced.kind, corrects_id=priced.corrects_id, payer_bu=priced.payer_bu,
        consumer_bu=priced.consumer_bu, provider_bu=priced.provider_bu, app=priced.app, model=priced.model,
        book_id=priced.book_id, book_version=priced.book_version, currency=priced.currency, lines=priced.lines,
        amount=priced.total_amount, tokens=priced.total_tokens,
        postings=tuple(Posting.model_validate(posting.model_dump()) for posting in postings_for(priced)),
        chain=head.chain, sequence=head.sequence + 1, entry_hash="", previous_hash=head.head_hash, posted_at=posted_at,
        invoice_id=priced.invoice_id)
    return unhashed.model_copy(update={"entry_hash": hash_entry(hashed_content(unhashed), head.head_hash)})


GOLDEN_PRICED = sorted((Path(tokenhub.contracts.__file__).parent / "golden").glob("priced*.json"))


@pytest.mark.parametrize("path", GOLDEN_PRICED, ids=lambda path: path.stem)
@pytest.mark.parametrize("posted_at", [POSTED_AT, datetime(2026, 3, 14, 11, 0, 0, 123456, tzinfo=timezone(timedelta(hours=8)))])
def test_entries_equal_the_fully_validated_model_byte_for_byte(path: Path, posted_at: datetime) -> None:
    priced = decode(Priced, path.read_bytes())
    adjustment = priced.model_copy(update={"id": PRICED.consumed_id, "kind": "adjustment", "invoice_id": PRICED.id})
    head = ChainHead(priced.payer_bu, 7, "cd" * 32)
    posted, payloads, _, _ = post_batch([priced, adjustment], {priced.payer_bu: head}, posted_at)
    expected_first = _validated_entry(priced, head, posted_at)
    expected_second = _validated_entry(adjustment, ChainHead(priced.payer_bu, 8, expected_first.entry_hash), posted_at)
    for entry, payload, expected in zip(posted, payloads, (expected_first, expected_second), strict=True):
        assert payload == canonical_json(expected)
        assert decode(LedgerPosted, payload) == expected
        assert codecs.encode(entry) == payload
    assert post(priced, head, posted_at) == expected_first


def test_a_free_reversal_keeps_its_negative_zero_byte_for_byte() -> None:
    """Reversing usage priced at nothing gives amounts of -0 at twelve places,
    which the validated model writes with their sign: the fast path, which
    formats each quantity once, must write them the same."""
    reversal = orjson.loads((Path(tokenhub.contracts.__file__).parent / "golden" / "priced_reversal.json").read_bytes())
    for line in reversal["lines"]:
        line.update(unit_price_per_million="0.000000000000", amount="-0.000000000000")
    priced = decode(Priced, orjson.dumps(reversal | {"total_amount": "-0.000000000000"}))
    head = ChainHead(priced.payer_bu, 3, "ab" * 32)
    (entry,), (payload,), _, _ = post_batch([priced], {priced.payer_bu: head}, POSTED_AT)
    assert payload == canonical_json(_validated_entry(priced, head, POSTED_AT)) == codecs.encode(entry)
    assert orjson.loads(payload)["postings"][0]["debit"] == "-0.000000000000"


def test_a_model_built_unchecked_equals_the_validated_one_and_needs_every_field() -> None:
    values = {name: getattr(POSTED, name) for name in LedgerPosted.model_fields}
    built = unchecked(LedgerPosted, dict(values))
    assert built == POSTED and canonical_json(built) == canonical_json(POSTED)
    assert built.model_fields_set == set(LedgerPosted.model_fields)
    with pytest.raises(MissingFields, match="schema_version"):
        unchecked(LedgerPosted, {name: value for name, value in values.items() if name != "schema_version"})
    with pytest.raises(MissingFields, match="surplus"):
        unchecked(LedgerPosted, values | {"surplus": 1})


def test_a_batch_posts_each_new_id_once_and_names_copies_with_other_bytes() -> None:
    original = canonical_json(PRICED)
    forged = orjson.loads(original)
    forged["lines"][0]["amount"] = f"{Decimal(forged['lines'][0]['amount']) + 1:.12f}"
    forged["total_amount"] = f"{Decimal(forged['total_amount']) + 1:.12f}"
    forged_bytes = canonical_json(forged)
    batch = receive([original, original, forged_bytes, forged_bytes])
    decision = decide_batch(batch, {}, {}, POSTED_AT)
    assert [entry.posted.priced_id for entry in decision.entries] == [PRICED.id]
    assert decision.entries[0].priced == original and decision.entries[0].payload == codecs.encode(decision.entries[0].posted)
    assert (len(decision.conflicts), decision.duplicates) == (2, 1)
    assert len({alert.id for alert in decision.conflicts}) == 1, "one alert per distinct content"
    assert decision.heads == {PRICED.payer_bu: ChainHead(PRICED.payer_bu, 1, decision.entries[0].posted.entry_hash)}

    again = decide_batch(receive([original, forged_bytes]), {PRICED.id: original},
                         decision.heads, POSTED_AT + timedelta(seconds=1))
    assert (again.entries, again.heads, again.duplicates, len(again.conflicts)) == ([], {}, 1, 1)


def test_month_spend_goes_by_event_time_in_the_company_zone() -> None:
    posted = post_batch([PRICED], {}, POSTED_AT).posted
    spend, causes = month_spend(posted, "Asia/Shanghai")
    month = PRICED.event_time.astimezone(ZoneInfo("Asia/Shanghai")).strftime("%Y-%m")
    assert spend == {(PRICED.payer_bu, month, PRICED.consumer_bu): PRICED.total_amount}
    assert causes == {PRICED.payer_bu: str(PRICED.id)}


@pytest.mark.parametrize("path", GOLDEN_PRICED, ids=lambda path: path.stem)
def test_an_entry_is_two_transfers_and_rebuilds_from_its_row_byte_for_byte(path: Path) -> None:
    """What the journal row keeps (the Priced's bytes, the chain place, the
    posting time and the transfers) gives back the published entry exactly."""
    priced = decode(Priced, path.read_bytes())
    head = ChainHead(priced.payer_bu, 41, "ef" * 32)
    decision = decide_batch(receive([path.read_bytes()]), {}, {priced.payer_bu: head}, POSTED_AT)
    (entry,) = decision.entries
    assert entry.priced == canonical_json(priced)
    sides = (entry.transfer.money_debit, entry.transfer.money_credit, entry.transfer.tokens_debit, entry.transfer.tokens_credit)
    if priced.total_amount < 0:
        assert sides[:2] == (f"bu:{priced.provider_bu}:revenue", f"bu:{priced.payer_bu}:spend")
    else:
        assert sides[:2] == (f"bu:{priced.payer_bu}:spend", f"bu:{priced.provider_bu}:revenue")
    if priced.total_tokens < 0:
        assert sides[2:] == (f"bu:{priced.provider_bu}:served", f"bu:{priced.consumer_bu}:consumed")
    else:
        assert sides[2:] == (f"bu:{priced.consumer_bu}:consumed", f"bu:{priced.provider_bu}:served")
    assert (entry.transfer.amount, entry.transfer.tokens) == (abs(priced.total_amount), abs(priced.total_tokens))
    rebuilt, payload = rebuild_entry(entry.priced, head.chain, 42, head.head_hash, entry.posted.posted_at)
    assert payload == entry.payload and rebuilt == entry.posted


def test_a_free_reversal_rebuilds_with_its_negative_zero() -> None:
    reversal = orjson.loads((Path(tokenhub.contracts.__file__).parent / "golden" / "priced_reversal.json").read_bytes())
    for line in reversal["lines"]:
        line.update(unit_price_per_million="0.000000000000", amount="-0.000000000000")
    value = canonical_json(reversal | {"total_amount": "-0.000000000000"})
    (entry,) = decide_batch(receive([value]), {}, {}, POSTED_AT).entries
    assert entry.transfer.amount == 0 and entry.transfer.money_debit.endswith(":spend")
    assert rebuild_entry(entry.priced, entry.posted.chain, 1, GENESIS_HASH, POSTED_AT)[1] == entry.payload


def test_legs_that_are_not_two_transfers_are_refused() -> None:
    batch = post_batch([PRICED], {}, POSTED_AT)
    (entry,) = batch.posted
    assert transfer(entry) == batch.transfers[0] == transfer(post(PRICED, ChainHead(PRICED.payer_bu, 0, GENESIS_HASH), POSTED_AT))
    money_debit, money_credit, tokens_debit, tokens_credit = entry.postings
    skewed = msgspec.structs.replace(money_credit, credit=f"{Decimal(money_credit.credit) + Decimal('0.000000000001')}")
    with pytest.raises(UnbalancedEntry, match=str(PRICED.id)):
        transfer(msgspec.structs.replace(entry, postings=(money_debit, skewed, tokens_debit, tokens_credit)))
