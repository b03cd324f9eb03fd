"""Retroactive corrections (pure): after a retroactive book, each affected
Priced gets a reversal and a corrected Priced whose ids name the new book
version. History is never edited; repricing against the same version again
changes nothing, a later version corrects again."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from tokenhub.contracts.events import Priced, PricedLine
from tokenhub.contracts.ids import priced_id
from tokenhub.contracts.pricebook import BookIndex
from tokenhub.services.pricing.domain import Consumption, Unpriceable, price_in_force


@dataclass(frozen=True)
class PricedConsumption:
    """A consumption as the Priced that recorded it has it: pricing keeps no
    second copy of the TokenConsumed it priced (metering's record holds it), and
    these fields are all that pricing reads of one (`domain.Consumption`)."""

    id: uuid.UUID
    event_time: datetime
    payer_bu: str
    consumer_bu: str
    provider_bu: str
    app: str | None
    model: str
    tokens: dict[str, int]
    request_input_tokens: int


def consumption_of(priced: Priced, request_input_tokens: int) -> PricedConsumption:
    """The consumption a charge or a correction priced: its lines are its Tokens
    per class, in the TokenConsumed's class order. The request's whole input,
    which chooses the context tier, is the one figure a Priced does not carry."""
    if priced.kind not in ("charge", "correction"):
        raise ValueError(f"a {priced.kind} does not record a consumption's Tokens")
    return PricedConsumption(
        id=priced.consumed_id,
        event_time=priced.event_time,
        payer_bu=priced.payer_bu,
        consumer_bu=priced.consumer_bu,
        provider_bu=priced.provider_bu,
        app=priced.app,
        model=priced.model,
        tokens={line.token_class: line.tokens for line in priced.lines},
        request_input_tokens=request_input_tokens,
    )


class CorrectionMismatch(ValueError):
    """A reversal and its correction would not net out the Tokens they replace."""


@dataclass(frozen=True)
class Correction:
    reversal: Priced
    correction: Priced

    @property
    def difference(self):  # noqa: ANN201 - Decimal
        """What the pair changes the payer's spend by."""
        return self.reversal.total_amount + self.correction.total_amount


def reverse(current: Priced, book_id: str, book_version: int) -> Priced:
    """The exact negative of `current`, linked to it, named by the version that caused it."""
    lines = tuple(PricedLine(token_class=line.token_class, tokens=-line.tokens,
                             unit_price_per_million=line.unit_price_per_million, amount=-line.amount)
                  for line in current.lines)
    return current.model_copy(update={
        "id": priced_id(current.consumed_id, book_id, book_version, "reversal"),
        "cause_id": str(current.id),
        "kind": "reversal",
        "corrects_id": current.id,
        "lines": lines,
        "total_tokens": -current.total_tokens,
        "total_amount": -current.total_amount,
    })


def correct(consumed: Consumption, current: Priced, books: BookIndex) -> Correction | None:
    """None when the version in force is the one `current` was priced with.
    Raises `Unpriceable` when the books in force no longer price it: the
    current Priced then stands, since reversing it alone would lose the usage."""
    repriced = price_in_force(consumed, books)
    if (repriced.book_id, repriced.book_version) == (current.book_id, current.book_version):
        return None
    correction = repriced.model_copy(update={
        "id": priced_id(consumed.id, repriced.book_id, repriced.book_version, "correction"),
        "kind": "correction",
        "corrects_id": current.id,
    })
    reversal = reverse(current, repriced.book_id, repriced.book_version)
    if reversal.total_tokens + correction.total_tokens != 0 or reversal.consumed_id != correction.consumed_id:
        raise CorrectionMismatch(f"correction {correction.id} does not replace {current.id} Token for Token")
    return Correction(reversal, correction)


def correct_all(current: Sequence[tuple[Consumption, Priced]], books: BookIndex
                ) -> tuple[list[Correction], list[tuple[Priced, str]]]:
    """Corrections for the Priced that the books in force now price differently,
    and the Priced that they no longer price at all (with the reason; they stand)."""
    corrections: list[Correction] = []
    unpriceable: list[tuple[Priced, str]] = []
    for consumed, priced in current:
        try:
            outcome = correct(consumed, priced, books)
        except Unpriceable as reason:
            unpriceable.append((priced, str(reason)))
            continue
        if outcome is not None:
            corrections.append(outcome)
    return corrections, unpriceable
