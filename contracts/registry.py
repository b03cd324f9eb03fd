"""Configuration that metering owns, published as `RegistryChanged` events:
business units, the model catalogue, conversion tables and funding agreements.
Every change records who made it and why (docs/architecture.md decision 12)."""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any, ClassVar, Final, Literal

from pydantic import Field, model_validator

from tokenhub.contracts.events import Event, Frozen, Name, UtcDatetime
from tokenhub.contracts.ids import BuId, derive_id
from tokenhub.contracts.money import ExactDecimal
from tokenhub.contracts.tokens import TokenClass

PAYERS_MAX: Final = 16  # a cost split among more than sixteen BUs is a data error
RULES_MAX: Final = 1_000


class BusinessUnit(Frozen):
    bu_id: BuId
    display_name: Name
    parent_group: Name | None = None
    cost_centre: Name | None = None
    active: bool = True


class ModelEntry(Frozen):
    """A model, tool, agent or API, the BU that provides it and what it produces."""

    model_id: Name
    provider_bu: BuId
    display_name: Name | None = None
    modality: Literal["text", "embedding", "image", "video", "audio", "agent", "tool"]
    token_classes: tuple[TokenClass, ...]
    active: bool = True


class ConversionRule(Frozen):
    """`tokens_per_unit` Tokens of `token_class` for each unit of `unit`.
    Units: `image:<size>`, `video_second:<resolution>`, `audio_second`,
    `agent_step`, `tool_call`, `api_call`; `*` matches any size or resolution."""

    unit: Name
    token_class: TokenClass
    tokens_per_unit: ExactDecimal = Field(description="exact; a partial Token rounds up")


class ConversionTable(Frozen):
    version: int = Field(ge=1)
    effective_from: UtcDatetime
    rules: tuple[ConversionRule, ...] = Field(max_length=RULES_MAX)

    def rule_for(self, unit: str, qualifier: str | None) -> ConversionRule | None:
        exact = f"{unit}:{qualifier}" if qualifier else unit
        for rule in self.rules:
            if rule.unit == exact:
                return rule
        for rule in self.rules:
            if rule.unit == f"{unit}:*":
                return rule
        return None


class PayerShare(Frozen):
    bu: BuId
    percent: ExactDecimal


class FundingAgreement(Frozen):
    """(consumer BU, optional app, optional model pattern) -> payers with shares."""

    agreement_id: Name
    consumer_bu: BuId
    app: Name | None = None
    model_pattern: Name | None = Field(None, description="shell-style pattern, for example qwen-*")
    payers: tuple[PayerShare, ...] = Field(min_length=1, max_length=PAYERS_MAX)
    effective_from: UtcDatetime
    effective_to: UtcDatetime | None = None

    @model_validator(mode="after")
    def _shares_sum_to_100(self) -> FundingAgreement:
        total = sum((payer.percent for payer in self.payers), Decimal(0))
        if total != 100:
            raise ValueError(f"payer shares must sum to 100 %, got {total}")
        if any(payer.percent <= 0 for payer in self.payers):
            raise ValueError("every payer share must be positive")
        if len({payer.bu for payer in self.payers}) != len(self.payers):
            raise ValueError("a payer may appear once")
        if self.effective_to is not None and self.effective_to <= self.effective_from:
            raise ValueError("effective_to must be after effective_from")
        return self

    def applies(self, consumer_bu: str, app: str | None, model: str, moment: datetime) -> bool:
        return (
            self.consumer_bu == consumer_bu
            and (self.app is None or self.app == app)
            and (self.model_pattern is None or fnmatch.fnmatchcase(model, self.model_pattern))
            and self.effective_from <= moment
            and (self.effective_to is None or moment < self.effective_to)
        )

    @property
    def specificity(self) -> int:
        """A rule naming an app or a model wins over a broader one."""
        return (self.app is not None) * 2 + (self.model_pattern is not None)


RegistryKind = Literal["business_unit", "model", "conversion_table", "funding_agreement"]


class RegistryChanged(Event):
    TYPE: ClassVar[str] = "registry.changed"
    type: Literal["registry.changed"] = "registry.changed"
    kind: RegistryKind
    entity_id: str
    payload: dict[str, Any]
    actor: Name
    reason: str = Field(min_length=1, max_length=1000)


PAYLOAD_MODELS: Final[dict[str, type[Frozen]]] = {
    "business_unit": BusinessUnit,
    "model": ModelEntry,
    "conversion_table": ConversionTable,
    "funding_agreement": FundingAgreement,
}


def registry_change(kind: RegistryKind, entity: Frozen, entity_id: str, actor: str, reason: str, at: datetime) -> RegistryChanged:
    payload = entity.model_dump(mode="json", exclude_none=True)
    change_id = derive_id("registry", kind, entity_id, at.isoformat())
    return RegistryChanged(
        id=change_id,
        event_time=at,
        cause_id=f"{actor}:{kind}:{entity_id}",
        kind=kind,
        entity_id=entity_id,
        payload=payload,
        actor=actor,
        reason=reason,
    )


REGISTRY_SECTIONS: Final = {"business_units": "business_unit", "models": "model", "conversion_tables": "conversion_table",
                            "funding_agreements": "funding_agreement"}
"""The sections of a registry document (YAML or JSON) and the kind of change each holds."""


def registry_changes(document: Mapping[str, Any], actor: str, reason: str, at: datetime) -> list[RegistryChanged]:
    """One change per entity of a registry document, section by section in the
    order above (business units before the models they provide). Raises
    ValueError for a section it does not know, pydantic's ValidationError for an invalid entity."""
    unknown = set(document) - set(REGISTRY_SECTIONS)
    if unknown:
        raise ValueError(f"unknown sections {sorted(unknown)}; expected {sorted(REGISTRY_SECTIONS)}")
    changes = []
    for section, kind in REGISTRY_SECTIONS.items():
        for item in document.get(section) or []:
            entity = PAYLOAD_MODELS[kind].model_validate(item)
            entity_id = str(item.get("bu_id") or item.get("model_id") or item.get("agreement_id") or item.get("version"))
            changes.append(registry_change(kind, entity, entity_id, actor, reason, at))  # type: ignore[arg-type]
    return changes
