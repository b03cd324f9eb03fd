"""Monthly multilateral netting between business units."""

from __future__ import annotations

import uuid
from typing import ClassVar, Literal

from pydantic import Field

from tokenhub.contracts.events import Event, Frozen
from tokenhub.contracts.ids import BuId
from tokenhub.contracts.money import Amount


class Transfer(Frozen):
    from_bu: BuId = Field(description="pays")
    to_bu: BuId = Field(description="receives")
    amount: Amount


class GrossFlow(Frozen):
    """What one payer owes one provider before netting: a cell of the matrix."""

    payer_bu: BuId
    provider_bu: BuId
    amount: Amount


class SettlementNetted(Event):
    """Net positions (revenue - spend) of a month and the transfers that clear
    them: at most n - 1 of them, summing to each BU's rounded position. When more
    invoices are issued for a settled month, it is settled again: the latest
    revision is the one that stands, and it names every invoice it covers."""

    TYPE: ClassVar[str] = "settlement.netted"
    type: Literal["settlement.netted"] = "settlement.netted"
    period: str
    revision: int = Field(1, ge=1, description="1 for the month's first settlement; each revision supersedes the one before")
    invoices: tuple[uuid.UUID, ...] = Field((), description="ids of the invoices it covers (absent before revisions existed)")
    currency: str
    matrix: tuple[GrossFlow, ...]
    positions: dict[str, Amount] = Field(description="exact net position per BU")
    rounded_positions: dict[str, Amount] = Field(description="positions rounded once to the minor unit; sum to zero")
    rounding_residue_bu: BuId | None = Field(None, description="the BU whose rounded position absorbed the residue")
    transfers: tuple[Transfer, ...]
