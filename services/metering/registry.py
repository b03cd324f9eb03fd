"""Metering's registry core: can a change be applied to the registry as it
stands, and if not, why. Pure: no I/O, no clock, no logging.

The CLI and the API ask it before they publish, so a person hears the reason at
once; metering asks it again when the change arrives (`decide`), so a change
that slipped past them (published on the topic directly, or raced by another
change) is refused with the same reason, stored and dead-lettered, and never
retried as if the database had failed. The outcome is decided once per change
id: a redelivered change keeps the outcome it had."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Final

from pydantic import ValidationError

from tokenhub.contracts.canonical import sha256_hex
from tokenhub.contracts.events import Frozen, decode
from tokenhub.contracts.ids import derive_id
from tokenhub.contracts.registry import (
    PAYLOAD_MODELS,
    BusinessUnit,
    ConversionTable,
    FundingAgreement,
    ModelEntry,
    PayerShare,
    RegistryChanged,
)
from tokenhub.contracts.tokens import KNOWN_CLASSES, class_order

CHOICES_LISTED_MAX: Final = 20
"""Valid choices a refusal names: a line or two saves a look-up, a longer list
buries the reason (the listing command shows them all)."""
SHARES_TOTAL_PERCENT: Final = Decimal(100)


@dataclass(frozen=True)
class Registry:
    """What validation needs to know of the registry: every registered business
    unit (active or not), model, funding agreement and conversion table."""

    business_units: frozenset[str] = frozenset()
    models: frozenset[str] = frozenset()
    agreements: frozenset[str] = frozenset()
    conversion_tables: Mapping[int, ConversionTable] = field(default_factory=dict)
    model_classes: frozenset[str] = frozenset()
    """Token classes registered models already name (registered before classes were checked)."""

    @property
    def token_classes(self) -> tuple[str, ...]:
        """The contract's classes, then those a conversion table or a registered model defines."""
        defined = {rule.token_class for table in self.conversion_tables.values() for rule in table.rules}
        return tuple(sorted(set(KNOWN_CLASSES) | defined | self.model_classes, key=class_order))

    def evolve(self, entity: Frozen) -> Registry:
        """The registry once `entity` is applied."""
        if isinstance(entity, BusinessUnit):
            return replace(self, business_units=self.business_units | {entity.bu_id})
        if isinstance(entity, ModelEntry):
            return replace(self, models=self.models | {entity.model_id},
                           model_classes=self.model_classes | set(entity.token_classes))
        if isinstance(entity, FundingAgreement):
            return replace(self, agreements=self.agreements | {entity.agreement_id})
        if isinstance(entity, ConversionTable):
            return replace(self, conversion_tables={**self.conversion_tables, entity.version: entity})
        return self


@dataclass(frozen=True)
class Refusal:
    """Why a change cannot be applied: the field, the value given, what is wrong
    with it, the valid choices, and how to put it right."""

    field: str
    value: str
    problem: str
    fix: str
    choices: tuple[str, ...] = ()
    listing: str = ""
    """Where to see the choices when there are too many to name."""

    def text(self, names: Mapping[str, str] | None = None, *, entity: str = "") -> str:
        """One line; `names` renames payload fields as a command calls them
        (`provider_bu` -> `--provider`), `entity` prefixes what was changed."""
        subject = " ".join(part for part in ((names or {}).get(self.field, self.field), self.value) if part)
        if self.choices and len(self.choices) <= CHOICES_LISTED_MAX:
            known = f" (one of: {', '.join(self.choices)})"
        elif self.listing:
            known = f" ({self.listing})"
        else:
            known = ""
        return f"{entity + ': ' if entity else ''}{subject} {self.problem}{known}; {self.fix}"


def _business_unit(field_name: str, bu_id: str | None, registry: Registry) -> Refusal | None:
    if bu_id is None or bu_id in registry.business_units:
        return None
    return Refusal(field_name, bu_id, "is not a registered business unit", f"register it first with `tokenhub bu add {bu_id}`",
                   tuple(sorted(registry.business_units)), f"`tokenhub bu list` shows the {len(registry.business_units)} registered")


def known_business_unit(bu_id: str | None, registry: Registry, field_name: str = "bu") -> Refusal | None:
    """A business unit a query or a change names must be registered."""
    return _business_unit(field_name, bu_id, registry)


def check_shares(payers: Sequence[PayerShare]) -> Refusal | None:
    """Payer shares sum to exactly 100 %, each positive, each payer once."""
    total = sum((payer.percent for payer in payers), Decimal(0))
    if total != SHARES_TOTAL_PERCENT:
        return Refusal("payers", "", f"shares sum to {total.normalize():f} %", "give shares that sum to 100 %")
    for payer in payers:
        if payer.percent <= 0:
            return Refusal("payers", f"{payer.bu}={payer.percent.normalize():f}", "is not a positive share",
                           "give every payer a share above 0 %")
    seen: set[str] = set()
    for payer in payers:
        if payer.bu in seen:
            return Refusal("payers", payer.bu, "appears twice", "name each payer once with its whole share")
        seen.add(payer.bu)
    return None


def check_classes(classes: Iterable[str], registry: Registry) -> Refusal | None:
    known = registry.token_classes
    for name in classes:
        if name not in known:
            return Refusal("token_classes", name, "is not a known Token class",
                           "give known classes; a conversion table defines new ones (`tokenhub conversion publish`)", known,
                           "`tokenhub conversion show` and `tokenhub model list` show the classes in use")
    return None


def check_funding_end(agreement_id: str, registry: Registry) -> Refusal | None:
    if agreement_id in registry.agreements:
        return None
    return Refusal("agreement_id", agreement_id, "is not a funding agreement", "`tokenhub funding set` creates one",
                   tuple(sorted(registry.agreements)), "`tokenhub funding list` shows them")


def check_change(entity: Frozen, registry: Registry) -> Refusal | None:
    """Whether `entity` (a validated payload) can be applied to `registry`."""
    if isinstance(entity, ModelEntry):
        return _business_unit("provider_bu", entity.provider_bu, registry) or check_classes(entity.token_classes, registry)
    if isinstance(entity, FundingAgreement):
        return (_business_unit("consumer_bu", entity.consumer_bu, registry)
                or next((refusal for payer in entity.payers if (refusal := _business_unit("payers", payer.bu, registry))), None)
                or check_shares(entity.payers))
    if isinstance(entity, ConversionTable):
        stored = registry.conversion_tables.get(entity.version)
        if stored is not None and (stored.effective_from, stored.rules) != (entity.effective_from, entity.rules):
            latest = max(registry.conversion_tables)
            return Refusal("version", str(entity.version), "is already published with other rules and never changes",
                           f"publish version {latest + 1} instead")
    return None


def check_budget(payer_bu: str, consumer_bu: str | None, registry: Registry) -> Refusal | None:
    return _business_unit("payer_bu", payer_bu, registry) or _business_unit("consumer_bu", consumer_bu, registry)


# --- metering's decision on what arrives on registry.changed -------------------------------------------------------


@dataclass(frozen=True)
class Received:
    """One record of registry.changed: its bytes, and the change they hold (None
    with `problem` when they hold none)."""

    value: bytes
    change: RegistryChanged | None
    problem: str = ""

    @property
    def change_id(self) -> uuid.UUID:
        """The change's id; for bytes that are no change, one derived from their content."""
        return self.change.id if self.change is not None else derive_id("registry.unreadable", sha256_hex(self.value))


def read(value: bytes) -> Received:
    try:
        return Received(value, decode(RegistryChanged, value))
    except (ValidationError, ValueError) as error:
        return Received(value, None, f"not a registry change: {_first_complaint(error)}")


def _first_complaint(error: Exception) -> str:
    if isinstance(error, ValidationError):
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        return f"{where}: {message}" if where else message
    return " ".join(str(error).split()) or type(error).__name__


@dataclass(frozen=True)
class Decision:
    """What to apply, in order, and what to refuse (position in the batch, reason)."""

    applied: list[RegistryChanged]
    refused: list[tuple[int, str]]


def decide(batch: Sequence[Received], registry: Registry, answered: Collection[uuid.UUID]) -> Decision:
    """Each change of the batch in event-time order, against the registry as the
    changes before it leave it. A change already answered (`answered`: applied or
    refused before, by id) keeps its outcome and is skipped; so is a second copy
    in the batch."""
    order = sorted(range(len(batch)), key=lambda position: (batch[position].change is not None,
                                                            batch[position].change.event_time if batch[position].change else None))
    seen = set(answered)
    applied: list[RegistryChanged] = []
    refused: list[tuple[int, str]] = []
    for position in order:
        received = batch[position]
        if received.change_id in seen:
            continue
        seen.add(received.change_id)
        change = received.change
        if change is None:
            refused.append((position, received.problem))
            continue
        what = f"{change.kind.replace('_', ' ')} {change.entity_id}"
        try:
            entity = PAYLOAD_MODELS[change.kind].model_validate(change.payload)
        except ValidationError as error:
            refused.append((position, f"{what}: {_first_complaint(error)}"))
            continue
        refusal = _entity_id(change, entity) or check_change(entity, registry)
        if refusal is not None:
            refused.append((position, refusal.text(entity=what)))
            continue
        applied.append(change)
        registry = registry.evolve(entity)
    return Decision(applied, refused)


ENTITY_ID_FIELDS: Final = {"business_unit": "bu_id", "model": "model_id", "funding_agreement": "agreement_id",
                           "conversion_table": "version"}


def _entity_id(change: RegistryChanged, entity: Frozen) -> Refusal | None:
    """The change's entity id is the payload's own id (the topic's key, what is shown)."""
    name = ENTITY_ID_FIELDS[change.kind]
    own = str(getattr(entity, name))
    if own == change.entity_id:
        return None
    return Refusal("entity_id", change.entity_id, f"is not the payload's {name} {own}", f"give entity_id {own}")
