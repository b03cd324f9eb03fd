"""The API's pure cores: keys and roles, quota state from postings, webhook
signing, matching and bursts, cursors."""

from __future__ import annotations

import hashlib
import hmac
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokenhub.api import webhooks
from tokenhub.api.access import KeyRecord, KeyRefused, KeyRing, Principal, Role, digest, new_key
from tokenhub.api.paging import BadCursor, decode_cursor, encode_cursor, page
from tokenhub.api.quota import OUT_OF_ORDER_MAX, ChainProgress, PostedFigures, QuotaBook, StateBroken
from tokenhub.contracts.budgets import BudgetSet, budget_set_id

NOW = datetime(2026, 3, 14, 4, 0, tzinfo=UTC)  # 12:00 in Shanghai
ZONE = "Asia/Shanghai"


# --- keys and roles -------------------------------------------------------------------

def _ring(**changes: object) -> tuple[KeyRing, str]:
    key_id, key = new_key()
    values = {"key_id": key_id, "key_sha256": digest(key), "role": Role.BU_READER, "bu": "shop", "owner": "ana",
              "expires_at": None, "revoked_at": None, **changes}
    ring = KeyRing()
    ring.update([KeyRecord(**values)])  # type: ignore[arg-type]
    return ring, key


def test_a_valid_key_gives_its_role_and_business_unit() -> None:
    ring, key = _ring()
    who = ring.verify(key, NOW)
    assert (who.role, who.bu, who.owner, who.reads_all, who.may_audit, who.may_change) == (Role.BU_READER, "shop", "ana",
                                                                                             False, False, False)


@pytest.mark.parametrize(("changes", "presented", "message"), [
    ({}, None, "missing API key"),
    ({}, "", "missing API key"),
    ({}, "thapi_000000000000_wrong", "unknown API key"),
    ({}, "not-even-our-prefix", "unknown API key"),
    ({}, "thapi_" + "x" * 300, "unknown API key"),
    ({"expires_at": NOW}, "KEY", "expired"),
    ({"expires_at": NOW - timedelta(seconds=1)}, "KEY", "expired"),
    ({"revoked_at": NOW + timedelta(days=1)}, "KEY", "revoked"),  # revoked is revoked, whatever the clocks say
])
def test_refused_keys_say_why(changes: dict, presented: str | None, message: str) -> None:
    ring, key = _ring(**changes)
    with pytest.raises(KeyRefused, match=message):
        ring.verify(key if presented == "KEY" else presented, NOW)


def test_a_key_expiring_later_is_accepted_and_stored_as_its_digest_only() -> None:
    ring, key = _ring(expires_at=NOW + timedelta(seconds=1))
    assert ring.verify(key, NOW).key_id in key
    assert key not in repr(ring._by_digest)  # noqa: SLF001 - the ring holds digests, never keys
    assert digest(key) == hashlib.sha256(key.encode()).hexdigest()


@pytest.mark.parametrize(("role", "bu", "asked", "sees"), [
    (Role.BU_READER, "shop", ("shop",), True),
    (Role.BU_READER, "shop", ("maps", "shop"), True),
    (Role.BU_READER, "shop", ("maps",), False),
    (Role.BU_READER, "shop", (None,), False),
    (Role.BU_READER, "shop", (), False),
    (Role.FINANCE, None, ("maps",), True),
    (Role.AUDITOR, None, (None,), True),
])
def test_a_business_unit_reader_sees_only_what_names_its_unit(role: Role, bu: str | None, asked: tuple, sees: bool) -> None:
    assert Principal("k", role, bu, "o").sees(*asked) is sees


def test_roles_grant_audit_and_changes_as_documented() -> None:
    assert [(Principal("k", role, None, "o").may_audit, Principal("k", role, None, "o").may_change) for role in Role] == [
        (False, False), (False, False), (True, False), (True, True)]


# --- quota state -----------------------------------------------------------------------

def _budget(payer: str, amount: str, hard_limit: str | None, *, consumer: str | None = None, month: str = "2026-03",
            set_at: datetime = NOW - timedelta(days=1)) -> BudgetSet:
    return BudgetSet(id=budget_set_id(payer, consumer, month, set_at.isoformat()), event_time=set_at, cause_id="t",
                     payer_bu=payer, consumer_bu=consumer, period_from=month, amount=Decimal(amount),
                     hard_limit=Decimal(hard_limit) if hard_limit else None, currency="CNY", actor="t", reason="t", set_at=set_at)


def _posted(payer: str, sequence: int, amount: str, *, consumer: str | None = None, at: datetime = NOW,
            app: str | None = "chat") -> PostedFigures:
    return PostedFigures(payer, sequence, payer, consumer or payer, amount, at.isoformat().replace("+00:00", "Z"), app)


def test_quota_is_exhausted_at_the_hard_limit_and_names_the_deciding_scope() -> None:
    book = QuotaBook(ZONE)
    book.apply_budgets([_budget("shop", "10", "12"), _budget("shop", "5", "3", consumer="maps")])
    book.apply_posted([_posted("shop", 1, "7.5"), _posted("shop", 2, "2.5", consumer="maps")])
    whole = book.answer("shop", None, None, NOW)
    assert (whole.period, whole.allowed, whole.binding.spent, whole.binding.remaining) == ("2026-03", True, Decimal("10.0"),
                                                                                          Decimal("2.0"))
    maps = book.answer("shop", "maps", "chat", NOW)
    assert maps.allowed is True and maps.binding.scope == "maps" and maps.binding.remaining == Decimal("0.5")
    assert maps.app_spent == Decimal("2.5")
    book.apply_posted([_posted("shop", 3, "0.5", consumer="maps")])
    maps = book.answer("shop", "maps", None, NOW)
    assert (maps.allowed, maps.binding.scope, maps.binding.spent, maps.binding.remaining) == (False, "maps", Decimal("3.0"),
                                                                                             Decimal(0))
    assert book.answer("shop", None, None, NOW).allowed is True  # the whole payer is at 10.5 of 12


def test_a_posting_read_twice_or_out_of_order_counts_once() -> None:
    book = QuotaBook(ZONE)
    book.apply_budgets([_budget("shop", "10", "10")])
    book.apply_posted([_posted("shop", 2, "1"), _posted("shop", 1, "1"), _posted("shop", 2, "1"), _posted("shop", 1, "1"),
                       _posted("shop", 3, "1")])
    assert (book.applied, book.duplicates, book.answer("shop", None, None, NOW).binding.spent) == (3, 2, Decimal(3))


def test_spend_goes_to_the_month_of_its_event_time_in_the_company_zone() -> None:
    book = QuotaBook(ZONE)
    book.apply_budgets([_budget("shop", "10", "1", month="2026-02")])
    # 2026-02-28T16:30Z is 2026-03-01 00:30 in Shanghai: March, not February.
    book.apply_posted([_posted("shop", 1, "5", at=datetime(2026, 2, 28, 16, 30, tzinfo=UTC)),
                       _posted("shop", 2, "0.25", at=datetime(2026, 2, 28, 15, 59, tzinfo=UTC))])
    assert book.answer("shop", None, None, datetime(2026, 2, 28, 12, tzinfo=UTC)).binding.spent == Decimal("0.25")
    march = book.answer("shop", None, None, NOW)
    assert (march.allowed, march.binding.spent) == (False, Decimal(5))


def test_without_a_hard_limit_usage_is_allowed_and_no_limit_is_named() -> None:
    book = QuotaBook(ZONE)
    book.apply_budgets([_budget("shop", "10", None)])
    book.apply_posted([_posted("shop", 1, "100")])
    answer = book.answer("shop", None, None, NOW)
    assert (answer.allowed, answer.binding, [scope.spent for scope in answer.scopes]) == (True, None, [Decimal(100)])
    assert book.answer("nobody", None, None, NOW).scopes == ()


def test_the_latest_budget_set_for_a_month_decides() -> None:
    book = QuotaBook(ZONE)
    book.apply_budgets([_budget("shop", "10", "5", set_at=NOW - timedelta(days=2)),
                        _budget("shop", "10", "50", set_at=NOW - timedelta(days=1)),
                        _budget("shop", "10", "1", month="2026-04", set_at=NOW)])
    book.apply_posted([_posted("shop", 1, "6")])
    answer = book.answer("shop", None, None, NOW)
    assert (answer.allowed, answer.binding.hard_limit) == (True, Decimal(50))


def test_a_chain_too_far_out_of_order_is_refused_loudly() -> None:
    progress = ChainProgress()
    for sequence in range(2, OUT_OF_ORDER_MAX + 2):
        progress.claim(sequence)
    with pytest.raises(StateBroken):
        progress.claim(OUT_OF_ORDER_MAX + 2)


@given(st.permutations(list(range(1, 40))), st.lists(st.integers(1, 39), max_size=30))
def test_every_sequence_is_claimed_exactly_once_in_any_order(order: list[int], repeats: list[int]) -> None:
    progress = ChainProgress()
    claimed = [sequence for sequence in [*order[:20], *repeats, *order[20:], *repeats] if progress.claim(sequence)]
    assert sorted(claimed) == list(range(1, 40)) and progress.head == 39 and not progress.above


# --- webhooks ----------------------------------------------------------------------------

def test_a_signature_is_hmac_sha256_over_the_timestamp_and_body() -> None:
    body = b'{"id":"e1"}'
    expected = hmac.new(b"whsec_s", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert webhooks.sign("whsec_s", 1700000000, body) == f"t=1700000000,v1={expected}"


def test_backoff_grows_then_gives_up() -> None:
    waits = [webhooks.next_attempt(attempt, NOW) for attempt in range(1, len(webhooks.BACKOFF_S) + 2)]
    assert [wait - NOW for wait in waits[:-1]] == [timedelta(seconds=seconds) for seconds in webhooks.BACKOFF_S]
    assert waits[-1] is None


def _subscription(bu: str | None, *kinds: str) -> webhooks.Subscription:
    return webhooks.Subscription(uuid.uuid4(), "http://x", frozenset(kinds), bu, "whsec_s")


SETTLEMENT = {"id": "s1", "type": "settlement.netted", "period": "2026-03", "matrix": [
    {"payer_bu": "shop", "provider_bu": "cloud", "amount": "5"}, {"payer_bu": "maps", "provider_bu": "cloud", "amount": "3"}],
    "positions": {"shop": "-5", "maps": "-3", "cloud": "8"}, "rounded_positions": {"shop": "-5", "maps": "-3", "cloud": "8"},
    "rounding_residue_bu": "cloud",
    "transfers": [{"from_bu": "shop", "to_bu": "cloud", "amount": "5"}, {"from_bu": "maps", "to_bu": "cloud", "amount": "3"}]}


def test_a_business_unit_hears_only_of_its_own_events_and_its_own_part_of_a_settlement() -> None:
    alert = webhooks.notice_of("budget.quota_exhausted", {"id": "a1", "payer_bu": "shop", "consumer_bu": None})
    settlement = webhooks.notice_of("settlement.netted", SETTLEMENT)
    shop, maps, finance = (_subscription("shop", *webhooks.KINDS), _subscription("maps", "budget.quota_exhausted"),
                           _subscription(None, *webhooks.KINDS))
    matched = webhooks.deliveries([shop, maps, finance], [alert, settlement])
    assert [(subscription.bu, notice.event_id) for subscription, notice, _ in matched] == [
        ("shop", "a1"), (None, "a1"), ("shop", "s1"), (None, "s1")]
    import orjson

    shop_view = orjson.loads(matched[2][2])["data"]
    assert shop_view["matrix"] == [SETTLEMENT["matrix"][0]] and shop_view["positions"] == {"shop": "-5"}
    assert shop_view["transfers"] == [SETTLEMENT["transfers"][0]] and shop_view["rounding_residue_bu"] is None
    assert "maps" not in matched[2][2].decode()
    assert orjson.loads(matched[3][2])["data"] == SETTLEMENT


def test_rejections_become_one_burst_per_window_and_scope() -> None:
    counter = webhooks.BurstCounter(count=3, window_s=60)
    start = datetime(2026, 3, 14, 4, 0, 0, tzinfo=UTC)
    rejections = [webhooks.Rejection(f"r{index}", start + timedelta(seconds=index), "schema", "shop" if index % 2 else None)
                  for index in range(8)]
    bursts = counter.add(rejections[:5]) + counter.add(rejections)  # read twice: no second burst
    assert [(notice.data["consumer_bu"], notice.data["rejected"]) for notice in bursts] == [(None, 3), ("shop", 3)]
    assert counter.add([webhooks.Rejection("late", start + timedelta(seconds=61), "schema", None)]) == []
    finance, shop = _subscription(None, "usage.rejected_burst"), _subscription("shop", "usage.rejected_burst")
    assert [(subscription.bu, notice.data["consumer_bu"]) for subscription, notice, _ in webhooks.deliveries([finance, shop], bursts)] == [
        (None, None), ("shop", "shop")]


# --- cursors -----------------------------------------------------------------------------

def test_pages_follow_a_stable_order_to_the_end() -> None:
    items = [{"bu": name} for name in ("d", "a", "c", "b", "e")]
    seen, cursor = [], None
    while True:
        chosen, cursor = page(items, lambda item: [item["bu"]], decode_cursor(cursor), 2)
        seen += [item["bu"] for item in chosen]
        if cursor is None:
            break
    assert seen == ["a", "b", "c", "d", "e"]


@pytest.mark.parametrize("cursor", ["!!", "e30", encode_cursor([]) + "x", "W3RydWVd", "x" * 3000])
def test_a_cursor_not_given_by_the_api_is_refused(cursor: str) -> None:
    with pytest.raises(BadCursor):
        decode_cursor(cursor)
