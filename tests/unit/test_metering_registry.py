"""The registry core: which changes metering applies and which it refuses, with
the reason a person reads; the same answer for the same change whatever comes
after it."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from tokenhub.contracts.canonical import canonical_json
from tokenhub.contracts.registry import (
    BusinessUnit,
    ConversionRule,
    ConversionTable,
    FundingAgreement,
    ModelEntry,
    PayerShare,
    registry_change,
)
from tokenhub.services.metering import registry
from tokenhub.services.metering.registry import CHOICES_LISTED_MAX, Registry, Received, Refusal

T = datetime(2026, 3, 1, tzinfo=UTC)
KNOWN = Registry(business_units=frozenset({"shop", "maps", "cloud"}), agreements=frozenset({"split"}))
TABLE = ConversionTable(version=2, effective_from=T, rules=(
    ConversionRule(unit="image:*", token_class="image", tokens_per_unit=Decimal(1000)),
    ConversionRule(unit="robot_arm_second", token_class="robot_second", tokens_per_unit=Decimal(40)),))


def _model(provider: str = "cloud", classes: tuple[str, ...] = ("input", "output")) -> ModelEntry:
    return ModelEntry(model_id="m1", provider_bu=provider, modality="text", token_classes=classes)


def _funding(consumer: str = "shop", **payers: str) -> FundingAgreement:
    shares = tuple(PayerShare(bu=bu, percent=Decimal(percent)) for bu, percent in (payers or {"shop": "100"}).items())
    return FundingAgreement(agreement_id="a1", consumer_bu=consumer, payers=shares, effective_from=T)


@pytest.mark.parametrize(("entity", "reason"), [
    (_model(provider="no-such-bu"), "provider_bu no-such-bu is not a registered business unit (one of: cloud, maps, shop); "
                                    "register it first with `tokenhub bu add no-such-bu`"),
    (_model(classes=("input", "outputs")), "token_classes outputs is not a known Token class (one of: input, cache_read, "
                                           "cache_write, output, reasoning, image, video, audio, agent_step, tool_call, "
                                           "api_call); give known classes; a conversion table defines new ones "
                                           "(`tokenhub conversion publish`)"),
    (_funding(consumer="ghost"), "consumer_bu ghost is not a registered business unit (one of: cloud, maps, shop); "
                                 "register it first with `tokenhub bu add ghost`"),
    (_funding(shop="50", ghost="50"), "payers ghost is not a registered business unit (one of: cloud, maps, shop); "
                                      "register it first with `tokenhub bu add ghost`"),
    (_model(), None),
    (_funding(shop="50", maps="50"), None),
    (BusinessUnit(bu_id="new", display_name="New"), None),
])
def test_a_change_naming_what_is_not_registered_is_refused_with_the_field_and_the_fix(entity, reason) -> None:  # noqa: ANN001
    refusal = registry.check_change(entity, KNOWN)
    assert (refusal.text() if refusal else None) == reason


def test_a_class_a_conversion_table_defines_is_known() -> None:
    with_table = KNOWN.evolve(TABLE)
    assert registry.check_change(_model(classes=("robot_second",)), with_table) is None
    assert registry.check_change(_model(classes=("robot_second",)), KNOWN).value == "robot_second"


@pytest.mark.parametrize(("shares", "reason"), [
    ({"shop": "60", "maps": "30"}, "payers shares sum to 90 %; give shares that sum to 100 %"),
    ({"shop": "60", "maps": "40.01"}, "payers shares sum to 100.01 %; give shares that sum to 100 %"),
    ({"shop": "100", "maps": "0"}, "payers maps=0 is not a positive share; give every payer a share above 0 %"),
    ({"shop": "110", "maps": "-10"}, "payers maps=-10 is not a positive share; give every payer a share above 0 %"),
    ({"shop": "100"}, None),
    ({"shop": "33.34", "maps": "33.33", "cloud": "33.33"}, None),
])
def test_shares_sum_to_exactly_100_percent(shares: dict[str, str], reason: str | None) -> None:
    refusal = registry.check_shares([PayerShare(bu=bu, percent=Decimal(percent)) for bu, percent in shares.items()])
    assert (refusal.text() if refusal else None) == reason


def test_a_command_names_the_fields_as_its_options_and_a_long_list_is_not_spelled_out() -> None:
    many = Registry(business_units=frozenset(f"bu-{index:02}" for index in range(CHOICES_LISTED_MAX + 1)))
    refusal = registry.check_change(_model(provider="ghost"), many)
    assert refusal.text({"provider_bu": "--provider"}) == (
        "--provider ghost is not a registered business unit (`tokenhub bu list` shows the 21 registered); "
        "register it first with `tokenhub bu add ghost`")
    assert registry.check_funding_end("nope", KNOWN).text({"agreement_id": "AGREEMENT_ID"}) == (
        "AGREEMENT_ID nope is not a funding agreement (one of: split); `tokenhub funding set` creates one")
    assert registry.check_budget("shop", "ghost", KNOWN).text({"consumer_bu": "--consumer"}).startswith(
        "--consumer ghost is not a registered business unit")
    assert registry.check_budget("ghost", None, KNOWN).field == "payer_bu"
    assert registry.check_budget("shop", None, KNOWN) is None


def test_a_published_conversion_table_never_changes_but_the_same_one_again_is_applied() -> None:
    with_table = KNOWN.evolve(TABLE)
    assert registry.check_change(TABLE, with_table) is None
    changed = TABLE.model_copy(update={"rules": TABLE.rules[:1]})
    assert registry.check_change(changed, with_table).text() == (
        "version 2 is already published with other rules and never changes; publish version 3 instead")


def _received(entity, entity_id: str, at: datetime = T) -> Received:  # noqa: ANN001
    kind = {BusinessUnit: "business_unit", ModelEntry: "model", FundingAgreement: "funding_agreement",
            ConversionTable: "conversion_table"}[type(entity)]
    return registry.read(canonical_json(registry_change(kind, entity, entity_id, "alice", "test", at)))


def test_metering_decides_each_change_against_the_registry_the_changes_before_it_leave() -> None:
    unit = _received(BusinessUnit(bu_id="new", display_name="New"), "new")
    model = _received(_model(provider="new"), "m1", T + timedelta(seconds=1))
    ghost = _received(_model(provider="ghost"), "m1", T + timedelta(seconds=2))
    # Given in another order: event time decides, so the unit comes before its model.
    decision = registry.decide([ghost, model, unit], KNOWN, answered=set())
    assert [change.entity_id for change in decision.applied] == ["new", "m1"]
    assert decision.refused == [(0, "model m1: provider_bu ghost is not a registered business unit (one of: cloud, maps, "
                                    "new, shop); register it first with `tokenhub bu add ghost`")]


def test_a_change_answered_before_keeps_its_outcome_and_a_copy_in_the_batch_is_answered_once() -> None:
    ghost = _received(_model(provider="ghost"), "m1")
    assert registry.decide([ghost], KNOWN.evolve(BusinessUnit(bu_id="ghost", display_name="G")),
                           answered={ghost.change_id}) == registry.Decision([], [])
    assert registry.decide([ghost, ghost], KNOWN, answered=set()).refused == [(0, registry.decide([ghost], KNOWN, set()).refused[0][1])]


def test_bytes_that_are_no_change_and_payloads_that_are_not_valid_are_refused_with_their_reason() -> None:
    unreadable = registry.read(b"{not json")
    assert unreadable.change is None and unreadable.change_id == registry.read(b"{not json").change_id
    split = registry_change("funding_agreement", _funding(), "a1", "alice", "test", T)
    ninety = registry.read(canonical_json(split.model_copy(update={"payload": {
        **split.payload, "payers": [{"bu": "shop", "percent": "60"}, {"bu": "maps", "percent": "30"}]},
        "id": uuid.uuid4()})))
    wrong_id = registry.read(canonical_json(split.model_copy(update={"entity_id": "a2", "id": uuid.uuid4()})))
    decision = registry.decide([unreadable, ninety, wrong_id], KNOWN, answered=set())
    assert decision.applied == []
    assert [position for position, _ in decision.refused] == [0, 1, 2]
    assert decision.refused[0][1].startswith("not a registry change: ")
    assert decision.refused[1][1] == "funding agreement a1: payer shares must sum to 100 %, got 90"
    assert decision.refused[2][1] == "funding agreement a2: entity_id a2 is not the payload's agreement_id a1; give entity_id a1"


def test_a_refusal_with_no_choices_and_no_listing_names_only_the_fix() -> None:
    assert Refusal("version", "3", "is wrong", "fix it").text(entity="conversion table 3") == (
        "conversion table 3: version 3 is wrong; fix it")
