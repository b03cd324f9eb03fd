"""Periods in the company time zone with ISO names; deterministic ids; slugs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokenhub.contracts.ids import NAMESPACE, check_slug, consumed_id, derive_id
from tokenhub.contracts.periods import PeriodError, containing, parse

SHANGHAI = "Asia/Shanghai"


def test_a_month_in_shanghai_starts_at_local_midnight() -> None:
    march = parse("2026-03", SHANGHAI)
    assert march.start == datetime(2026, 2, 28, 16, 0, tzinfo=UTC)
    assert march.end == datetime(2026, 3, 31, 16, 0, tzinfo=UTC)


@pytest.mark.parametrize(("moment", "name"), [
    (datetime(2026, 2, 28, 15, 59, 59, 999999, tzinfo=UTC), "2026-02"),
    (datetime(2026, 2, 28, 16, 0, tzinfo=UTC), "2026-03"),
    (datetime(2026, 12, 31, 16, 0, tzinfo=UTC), "2027-01"),
])
def test_the_boundary_instant_belongs_to_the_next_month(moment: datetime, name: str) -> None:
    assert containing(moment, "month", SHANGHAI).name == name


def test_iso_weeks_across_the_year_boundary() -> None:
    week = containing(datetime(2026, 12, 31, 20, 0, tzinfo=UTC), "week", SHANGHAI)  # 2027-01-01 local
    assert week.name == "2026-W53"
    assert week.end - week.start == timedelta(days=7)
    assert parse("2026-W53", SHANGHAI) == week
    assert parse("2027-W01", SHANGHAI).start == week.end


def test_days_and_parse_agree_with_containing() -> None:
    moment = datetime(2026, 3, 14, 2, 30, tzinfo=UTC)
    for kind in ("month", "week", "day"):
        period = containing(moment, kind, SHANGHAI)
        assert parse(period.name, SHANGHAI) == period
        assert moment in period
        assert period.next(SHANGHAI).start == period.end


@pytest.mark.parametrize("name", ["2026-3", "2026-13", "2026-W60", "2026-02-30", "March", ""])
def test_bad_period_names_are_refused(name: str) -> None:
    with pytest.raises(PeriodError):
        parse(name, SHANGHAI)


def test_a_naive_time_is_refused() -> None:
    with pytest.raises(PeriodError, match="no time zone"):
        containing(datetime(2026, 3, 14), "month", SHANGHAI)


def test_derived_ids_are_deterministic_and_depend_on_every_part() -> None:
    assert derive_id("usage", "a", "b") == derive_id("usage", "a", "b")
    assert derive_id("usage", "a", "b") != derive_id("usage", "a", "c")
    assert derive_id("usage", "ab", "c") != derive_id("usage", "a", "bc")
    assert consumed_id("s", "1", "quark") != consumed_id("s", "1", "dingtalk")
    assert derive_id("x").version == 5
    # The namespace is fixed forever: every stored id depends on it.
    assert str(derive_id("usage", "gateway/taobao", "req-1")) == "8ae103b2-e170-5b97-8f45-2eaf34a1caa8"


@given(st.lists(st.text(alphabet=st.characters(blacklist_characters="\x1f", blacklist_categories=("Cs",))),
                min_size=1, max_size=5))
def test_derived_ids_equal_the_standard_uuid5(parts: list[str]) -> None:
    derived = derive_id(*parts)
    expected = uuid.uuid5(NAMESPACE, "\x1f".join(parts))
    assert derived == expected
    assert (str(derived), derived.bytes, derived.version, derived.variant, hash(derived)) == (
        str(expected), expected.bytes, expected.version, expected.variant, hash(expected))


@pytest.mark.parametrize("parts", [("a\x1fb",), ("a", "\x1f"), ("\x1f", "")])
def test_an_id_part_with_the_unit_separator_is_refused(parts: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match="unit separator"):
        derive_id(*parts)


@pytest.mark.parametrize("slug", ["taobao-tmall", "cainiao", "a1"])
def test_valid_slugs(slug: str) -> None:
    assert check_slug(slug) == slug


@pytest.mark.parametrize("slug", ["Taobao", "taobao_tmall", "-x", "x-", "a--b", "", "x" * 65, "taobao\n"])
def test_invalid_slugs(slug: str) -> None:
    with pytest.raises(ValueError):
        check_slug(slug)
