"""The auditor's own arithmetic agrees with the services' on what they got
right and disagrees where they would be wrong: hashes, canonical JSON,
repricing, shares, rebuilt balances."""

from __future__ import annotations

import multiprocessing
import os
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import msgspec
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tokenhub.contracts
from tests.contract.examples import BOOK, CONSUMED, POSTED, PRICED
from tokenhub.audit import balances, log, replay, reprice, restore, verify
from tokenhub.contracts.canonical import canonical_json
from tokenhub.contracts.events import Priced, decode
from tokenhub.contracts.money import line_amount, split_largest_remainder
from tokenhub.services.ledger.domain import ChainHead, decide_batch, hash_entry, hashed_content, rebuild_entry, receive


def _json(model) -> dict:  # noqa: ANN001
    return log.loads(canonical_json(model))


def _facts(priced: dict) -> balances.PricedFacts:  # noqa: ANN001
    return balances.PRICED_DECODER.decode(orjson.dumps(priced, option=orjson.OPT_SORT_KEYS))


def _consumed(event: dict) -> reprice.ConsumedFacts:  # noqa: ANN001
    return reprice.CONSUMED_DECODER.decode(orjson.dumps(event | {"id": event.get("id", "c")}))


def test_the_auditor_recomputes_the_ledger_hash_from_the_payload() -> None:
    content = _json(POSTED)
    assert verify.entry_hash(content, POSTED.previous_hash) == POSTED.entry_hash
    assert hash_entry(hashed_content(POSTED), POSTED.previous_hash) == POSTED.entry_hash
    content["amount"] = "0.000000000001"
    assert verify.entry_hash(content, POSTED.previous_hash) != POSTED.entry_hash


@given(st.recursive(st.none() | st.booleans() | st.integers(-10**15, 10**15) | st.text(),
                    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
                    max_leaves=20))
def test_canonical_form_written_out_equals_the_contracts_one(value) -> None:  # noqa: ANN001
    wrapped = {"value": value}
    assert verify.canonical(wrapped) == orjson.dumps(wrapped, option=orjson.OPT_SORT_KEYS)


def test_repricing_recomputes_the_golden_priced_with_context_tier_and_factor() -> None:
    lines = reprice.recompute_lines(_consumed(_json(CONSUMED)), _json(BOOK))
    assert sorted(lines) == sorted(
        (line.token_class, line.tokens, line.unit_price_per_million, line.amount) for line in PRICED.lines)
    assert len(lines) == 4 and PRICED.context_tier == "long-context" and PRICED.price_factor == Decimal("0.9")
    assert sum((line[3] for line in lines), Decimal(0)) == PRICED.total_amount
    result = reprice.reprice([_facts(_json(PRICED))], {str(CONSUMED.id): _consumed(_json(CONSUMED))}, {(BOOK.book_id, BOOK.version): _json(BOOK)})
    assert (result.mismatches, result.unrecomputable, result.amounts) == ([], [], {str(PRICED.id): PRICED.total_amount})


def test_repricing_names_a_wrong_amount_and_a_missing_book() -> None:
    wrong = _json(PRICED) | {"total_amount": f"{PRICED.total_amount + Decimal('0.000000000001'):f}"}
    result = reprice.reprice([_facts(wrong)], {str(CONSUMED.id): _consumed(_json(CONSUMED))}, {(BOOK.book_id, BOOK.version): _json(BOOK)})
    assert result.mismatches == [(str(PRICED.id), "charge", PRICED.total_amount + Decimal("0.000000000001"), PRICED.total_amount)]
    missing = reprice.reprice([_facts(_json(PRICED))], {str(CONSUMED.id): _consumed(_json(CONSUMED))}, {})
    assert missing.unrecomputable == [(str(PRICED.id), f"no price book {BOOK.book_id} v{BOOK.version}")]


def test_a_reversal_reprices_as_the_negative_of_what_it_reverses() -> None:
    reversal = _json(PRICED) | {"id": "r", "kind": "reversal", "corrects_id": str(PRICED.id),
                                "total_amount": f"{-PRICED.total_amount:f}", "total_tokens": -PRICED.total_tokens}
    result = reprice.reprice([_facts(_json(PRICED)), _facts(reversal)], {str(CONSUMED.id): _consumed(_json(CONSUMED))}, {(BOOK.book_id, BOOK.version): _json(BOOK)})
    assert result.amounts["r"] == -PRICED.total_amount and result.mismatches == []
    assert balances.rebuild([_json(PRICED), reversal])["taobao-tmall"]["spend"] == 0


@given(st.integers(0, 10**12), st.lists(st.decimals(min_value=Decimal("0.1"), max_value=100, places=1), min_size=1, max_size=6))
def test_the_auditors_split_equals_meterings(total: int, weights: list[Decimal]) -> None:
    assert verify.largest_remainder(total, weights) == split_largest_remainder(total, weights)


def test_shares_that_do_not_add_up_are_named() -> None:
    parts = {}
    for index, (payer, share, tokens) in enumerate((("a", "60", 601), ("b", "40", 400))):
        parts[payer] = {"id": f"c-{payer}", "usage_source": "s", "usage_id": "1", "payer_bu": payer, "consumer_bu": "c",
                        "model": "m", "payer_index": index, "payer_count": 2, "share_percent": share,
                        "request_input_tokens": 1001, "tokens": {"input": tokens}}
    check = verify.Check("invariant-6", "")
    verify.check_shares({payer: _consumed(part) for payer, part in parts.items()}, None, check)
    assert check.ok
    parts["a"]["tokens"] = {"input": 602}
    verify.check_shares({payer: _consumed(part) for payer, part in parts.items()}, None, check)
    assert [violation.subject for violation in check.violations] == ["usage s 1", "usage s 1"]
    assert "input Tokens sum to 1002" in check.violations[0].detail


def test_rebuild_at_an_as_of_time_and_diff_names_the_projection_row() -> None:
    event = _json(PRICED)
    assert balances.rebuild([event], as_of=PRICED.event_time)["taobao-tmall"]["spend"] == PRICED.total_amount
    assert balances.rebuild([event], as_of=PRICED.event_time.replace(year=2025)) == {}
    projected = {"taobao-tmall": dict.fromkeys(balances.FIGURES, Decimal(0))}
    differences = balances.diff(balances.rebuild([event]), projected, "taobao-tmall")
    assert [(difference.figure, difference.row(None)) for difference in differences] == [
        ("spend", "ledger.balances (money, bu:taobao-tmall:spend)"),
        ("tokens_consumed", "ledger.balances (tokens, bu:taobao-tmall:consumed)")]


def test_restore_posts_in_the_original_batches_and_chain_order_even_when_clocks_disagreed() -> None:
    t0 = datetime(2026, 3, 14, 3, 0, tzinfo=UTC)
    later = t0 + timedelta(seconds=5)
    now = t0 + timedelta(days=1)
    placed = [
        (b"b2", restore.Placement("b", 2, t0)),  # another instance's clock ran behind: b2 still follows b1
        (b"a2", restore.Placement("a", 2, later)),
        (b"lost", None),
        (b"b1", restore.Placement("b", 1, later)),
        (b"a1", restore.Placement("a", 1, t0)),
        (b"a1-copy", restore.Placement("a", 1, t0)),
    ]
    groups = restore.posting_groups(placed, now, size_max=10)
    assert groups == [(t0, [b"a1", b"a1-copy"]), (later, [b"a2", b"b1"]), (t0, [b"b2"]), (now, [b"lost"])]
    assert [len(values) for _, values in restore.posting_groups(placed, now, size_max=1)] == [1] * 6


async def test_a_published_entry_missing_from_the_journal_is_named_by_its_sequence() -> None:
    published = [{"chain": "a", "sequence": sequence, "priced_id": f"p{sequence}", "entry_hash": f"h{sequence}"}
                 for sequence in (1, 2, 3)]
    records = [log.TopicRecord(0, offset, b"a", orjson.dumps(event)) for offset, event in enumerate(published)]
    stored = {"a": [verify.StoredEntry("a", event["sequence"], event["priced_id"], event["entry_hash"])
                    for event in published if event["sequence"] != 2]}  # entry 2 deleted, the others untouched
    check = verify.Check("published", "")
    await verify.check_published(None, stored, records, check)
    assert [(violation.subject, violation.detail) for violation in check.violations] == [
        ("chain a sequence 2 (Priced p2)", "published on ledger.posted but missing from the journal (deleted?)")]


def test_figures_decoded_alone_rebuild_what_whole_events_rebuild() -> None:
    reversal = _json(PRICED) | {"id": "r", "kind": "reversal", "total_amount": f"{-PRICED.total_amount:f}",
                                "total_tokens": -PRICED.total_tokens, "payer_bu": "cainiao"}
    whole = [_json(PRICED), reversal]
    decoded = [balances.FIGURES_DECODER.decode(orjson.dumps(event)) for event in whole]
    assert decoded[0] == balances.PricedFigures(str(PRICED.id), whole[0]["event_time"], "taobao-tmall", PRICED.provider_bu,
                                             PRICED.consumer_bu, f"{PRICED.total_amount:f}", PRICED.total_tokens)
    rebuilt = balances.rebuild(decoded)
    assert rebuilt == balances.rebuild(whole)
    assert rebuilt["cainiao"]["spend"] == -PRICED.total_amount and rebuilt["taobao-tmall"]["spend"] == PRICED.total_amount


@pytest.mark.parametrize("change", [{"total_amount": 1.5}, {"total_tokens": 1.0}, {"total_tokens": "12"},
                                    {"payer_bu": None}, {"total_amount": None}])
def test_figures_of_the_wrong_type_are_refused_while_decoding(change: dict) -> None:
    with pytest.raises(msgspec.ValidationError):
        balances.FIGURES_DECODER.decode(orjson.dumps(_json(PRICED) | change))


def test_a_float_amount_is_refused_whichever_way_the_event_was_read() -> None:
    with pytest.raises(log.NotExact):
        balances.rebuild([_json(PRICED) | {"total_amount": 1.5}])


GOLDEN_PRICED = sorted((Path(tokenhub.contracts.__file__).parent / "golden").glob("priced*.json"))


def _free_reversal() -> bytes:
    reversal = orjson.loads((Path(tokenhub.contracts.__file__).parent / "golden" / "priced_reversal.json").read_bytes())
    for line in reversal["lines"]:
        line.update(unit_price_per_million="0.000000000000", amount="-0.000000000000")
    return canonical_json(reversal | {"total_amount": "-0.000000000000"})


@pytest.mark.parametrize("value", [path.read_bytes() for path in GOLDEN_PRICED] + [_free_reversal()],
                         ids=[path.stem for path in GOLDEN_PRICED] + ["free_reversal"])
def test_the_auditor_rebuilds_each_entry_from_its_priced_as_the_ledger_published_it(value: bytes) -> None:
    """verify's own chart of accounts and entry layout, from a journal row's
    Priced and chain place, give the bytes and hash the ledger published."""
    priced = decode(Priced, value)
    head = ChainHead(priced.payer_bu, 6, "9a" * 32)
    posted_at = datetime(2026, 3, 14, 3, 0, 0, 250000, tzinfo=UTC)
    (entry,) = decide_batch(receive([value]), {}, {priced.payer_bu: head}, posted_at).entries
    facts = balances.PRICED_DECODER.decode(entry.priced)
    unhashed = verify.entry_bytes(facts, priced.payer_bu, 7, head.head_hash, verify.posted_at_text(posted_at))
    assert unhashed == canonical_json({key: value for key, value in orjson.loads(entry.payload).items() if key != "entry_hash"})
    assert verify.entry_hash_of(unhashed, head.head_hash) == entry.posted.entry_hash
    content = verify.entry_content(entry.priced, priced.payer_bu, 7, head.head_hash, posted_at)
    assert verify.canonical(content | {"entry_hash": entry.posted.entry_hash}) == entry.payload
    assert verify.entry_hash(content, head.head_hash) == entry.posted.entry_hash
    money, tokens = verify.expected_transfers(facts)
    assert (money[0], money[1], Decimal(money[2])) == entry.transfer[:3]
    assert (tokens[0], tokens[1], int(Decimal(tokens[2]))) == entry.transfer[3:]


def test_the_auditor_rebuilds_an_entry_marked_over_quota_as_the_ledger_published_it() -> None:
    """The overage mark is part of the hashed entry: the auditor writes it from
    the row's mark; without it the hash differs (a mark removed is detected)."""
    value = GOLDEN_PRICED[0].read_bytes()
    priced = decode(Priced, value)
    head = ChainHead(priced.payer_bu, 6, "9a" * 32)
    posted_at = datetime(2026, 3, 14, 3, 0, 0, 250000, tzinfo=UTC)
    (entry,) = decide_batch(receive([value]), {}, {priced.payer_bu: head}, posted_at, lambda events: [True] * len(events)).entries
    assert entry.posted.overage is True and orjson.loads(entry.payload)["overage"] is True
    facts = balances.PRICED_DECODER.decode(entry.priced)
    marked = verify.entry_bytes(facts, priced.payer_bu, 7, head.head_hash, verify.posted_at_text(posted_at), overage=True)
    assert verify.entry_hash_of(marked, head.head_hash) == entry.posted.entry_hash
    unmarked = verify.entry_bytes(facts, priced.payer_bu, 7, head.head_hash, verify.posted_at_text(posted_at))
    assert verify.entry_hash_of(unmarked, head.head_hash) != entry.posted.entry_hash
    rebuilt, payload = rebuild_entry(entry.priced, priced.payer_bu, 7, head.head_hash, posted_at, True)
    assert (rebuilt.entry_hash, payload) == (entry.posted.entry_hash, entry.payload)


@given(st.integers(0, 10**12), st.decimals(min_value=0, max_value=10**6, places=12, allow_nan=False, allow_infinity=False))
def test_the_auditors_integer_line_amount_equals_pricings(tokens: int, unit_price: Decimal) -> None:
    """Repricing counts in 10^-12 units with integers; the services' arithmetic is Decimal at 12 places half-even."""
    unit = reprice._units(f"{unit_price:.12f}")
    assert reprice._amount(reprice._per_million_half_even(tokens * unit)) == line_amount(tokens, unit_price)


@pytest.mark.parametrize("text", ["0.000000000000", "-0.000000000000", "12.345678901234", "-3.000000000001", "7", "0.5"])
def test_amounts_as_integer_units_and_back(text: str) -> None:
    assert reprice._amount(reprice._units(text)) == Decimal(text)
    with pytest.raises(reprice.NotRecomputable):
        reprice._units("0.0000000000001")


_BUS = st.sampled_from(["taobao-tmall", "cainiao", "qwen-platform", "amap"])
_AMOUNT_TEXTS = st.one_of(
    st.decimals(min_value=Decimal("-1e9"), max_value=Decimal("1e9"), places=12, allow_nan=False).map(lambda value: f"{value:.12f}"),
    st.sampled_from(["-0.000000000000", "0.000000000000", "1.5", "2", "-3.25", "1E-12"]))


@given(st.lists(st.tuples(_BUS, _BUS, _BUS, _AMOUNT_TEXTS, st.integers(-10**15, 10**15), st.booleans()), max_size=30))
def test_a_whole_rebuild_counted_in_integers_equals_the_decimal_one(events: list) -> None:  # noqa: ANN001
    """`rebuild` without an as-of time adds amounts at the fixed scale as integers;
    with one it adds Decimals. Both give the same figures, written the same way, BUs in the same order."""
    rows = [(balances.PricedFigures(f"p{index}", "2026-03-01T00:00:00Z", payer, provider, consumer, amount, tokens)
             if as_struct else {"id": f"p{index}", "event_time": "2026-03-01T00:00:00Z", "payer_bu": payer,
                                "provider_bu": provider, "consumer_bu": consumer, "total_amount": amount, "total_tokens": tokens})
            for index, (payer, provider, consumer, amount, tokens, as_struct) in enumerate(events)]
    counted = balances.rebuild(rows)
    added = balances.rebuild(rows, as_of=datetime(2026, 4, 1, tzinfo=UTC))
    assert list(counted) == list(added)
    assert {bu: {figure: f"{value:f}" for figure, value in values.items()} for bu, values in counted.items()} == {
        bu: {figure: f"{value:f}" for figure, value in values.items()} for bu, values in added.items()}


@given(st.lists(st.tuples(_BUS, _BUS, _BUS, _AMOUNT_TEXTS, st.integers(-10**15, 10**15)), max_size=30),
       st.lists(st.integers(0, 30), max_size=4))
def test_parts_counted_apart_and_added_equal_the_whole_rebuild(events: list, cuts: list[int]) -> None:
    """What replay's worker processes do: each part of the events counted on its
    own (`count_in_units`), the counts added in the parts' order; the same figures,
    written the same way, BUs in the same order as the whole counted at once."""
    rows = [balances.PricedFigures(f"p{index}", "2026-03-01T00:00:00Z", payer, provider, consumer, amount, tokens)
            for index, (payer, provider, consumer, amount, tokens) in enumerate(events)]
    bounds = [0, *sorted(min(cut, len(rows)) for cut in cuts), len(rows)]
    counted: balances.Counts = {}
    others: list[balances.PricedFigures] = []
    for start, end in zip(bounds, bounds[1:], strict=False):
        part: balances.Counts = {}
        part_others: list[balances.PricedFigures] = []
        balances.count_in_units(rows[start:end], part, part_others)
        balances.add_counts(counted, part)
        others += part_others
    merged = balances.balances_in_units(counted, others)
    for whole in (balances.rebuild(rows), balances.rebuild(rows, as_of=datetime(2026, 4, 1, tzinfo=UTC))):
        assert list(merged) == list(whole)
        assert {bu: {figure: str(value) for figure, value in values.items()} for bu, values in merged.items()} == {
            bu: {figure: str(value) for figure, value in values.items()} for bu, values in whole.items()}


@pytest.mark.parametrize(("target", "arguments", "deadline_s", "reason"), [
    (os._exit, (3,), 60.0, "ended with exit code 3 before sending its part"),
    (time.sleep, (60,), 0.2, "1 of its readers were not done after"),
])
def test_a_replay_worker_that_dies_or_hangs_fails_the_replay_instead_of_being_waited_for(
        target, arguments, deadline_s: float, reason: str) -> None:  # noqa: ANN001
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=target, args=arguments, daemon=True)
    process.start()
    sender.close()
    try:
        with pytest.raises(replay.NotReadable, match=reason):
            replay._collect([process], [receiver], time.monotonic() + deadline_s)
    finally:
        process.kill()
        process.join()
        receiver.close()


@given(st.datetimes(min_value=datetime(1969, 12, 1), max_value=datetime(2100, 1, 1)),
       st.sampled_from(["Asia/Shanghai", "Asia/Kolkata", "America/St_Johns", "Pacific/Chatham", "UTC"]))
def test_the_month_of_an_event_time_looked_up_by_its_minute_is_the_month_it_parses_to(moment: datetime, zone: str) -> None:
    text = moment.isoformat() + "Z"
    expected = datetime.fromisoformat(text).astimezone(ZoneInfo(zone)).strftime("%Y-%m")
    assert verify._month_of(text, ZoneInfo(zone)) == expected
    assert verify._month_of(text, ZoneInfo(zone)) == expected  # and again, from what was remembered
