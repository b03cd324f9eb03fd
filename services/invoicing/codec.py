"""ledger.posted as invoicing reads it: a compiled decoder (msgspec) of the
fields the running totals need, without the per-field Python validators of
the published pydantic model (`contracts.events.LedgerPosted`), which cost
about 140 µs per posting here, most of it the double-entry legs invoicing
never reads. Unknown fields are ignored, as for every internal topic
(docs/architecture.md decision 13); what is read is typed as strictly as the
model types it, and a test holds the two to the same values for the golden
events and generated ones."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Final, Literal

import msgspec

SignedQuantity = Annotated[int, msgspec.Meta(ge=-10**13, le=10**13)]


class PostedLine(msgspec.Struct, frozen=True):
    token_class: str
    tokens: SignedQuantity
    unit_price_per_million: Decimal
    amount: Decimal


class Posted(msgspec.Struct, frozen=True):
    """The fields of a LedgerPosted that invoicing keeps totals of."""

    priced_id: uuid.UUID
    kind: Literal["charge", "reversal", "correction", "adjustment"]
    payer_bu: str
    consumer_bu: str
    provider_bu: str
    model: str
    lines: tuple[PostedLine, ...]
    chain: str
    sequence: Annotated[int, msgspec.Meta(ge=1)]
    entry_hash: str
    event_time: Annotated[datetime, msgspec.Meta(tz=True)]
    corrects_id: uuid.UUID | None = None
    app: str | None = None
    book_id: str | None = None
    book_version: int | None = None
    invoice_id: uuid.UUID | None = None
    overage: bool | None = None


class PostedError(ValueError):
    """A ledger.posted record invoicing cannot add up."""


_DECODER: Final = msgspec.json.Decoder(Posted)


def decode_posted(value: bytes) -> Posted:
    try:
        posted = _DECODER.decode(value)
    except msgspec.DecodeError as error:  # ValidationError included
        raise PostedError(f"not a LedgerPosted invoicing can read: {error}") from error
    for line in posted.lines:
        if not (line.amount.is_finite() and line.unit_price_per_million.is_finite()):
            raise PostedError(f"posting {posted.priced_id}: an amount that is not a finite number")
    return posted


def decode_all(values: Sequence[bytes]) -> list[Posted]:
    return [decode_posted(value) for value in values]
