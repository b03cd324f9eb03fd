"""Multilateral netting (pure): the month's gross flows between business units
become one net position each and at most n - 1 transfers that clear them."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from decimal import Decimal
from typing import Protocol

from tokenhub.contracts.events import InvoiceLine
from tokenhub.contracts.money import round_to_minor
from tokenhub.contracts.settlement import GrossFlow, Transfer


class NettingError(ValueError):
    pass


class FlowLike(Protocol):
    """What netting reads of a posting or of a month's invoiced totals."""

    @property
    def payer_bu(self) -> str: ...
    @property
    def provider_bu(self) -> str: ...
    @property
    def amount(self) -> Decimal: ...
    @property
    def kind(self) -> str: ...


def gross_flows(postings: Iterable[FlowLike],
                period_tiers: Iterable[tuple[str, InvoiceLine]] = ()) -> tuple[GrossFlow, ...]:
    """Payer -> provider amounts of what was invoiced; a BU's own use of its own
    models nets to nothing and is left out.

    A period tier is counted from its invoice line, `(payer, line)`, and its
    ledger adjustment is skipped: the ledger posts that adjustment after the
    invoice is issued, so at the month's close it is usually not back yet, and
    counting both would count it twice once it is."""
    cells: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    for posted in postings:
        if posted.kind == "adjustment":
            continue
        if posted.payer_bu != posted.provider_bu:
            cells[(posted.payer_bu, posted.provider_bu)] += posted.amount
    for payer_bu, line in period_tiers:
        if line.kind != "period_tier":
            raise NettingError(f"only period tier lines are added to the postings, got a {line.kind} line")
        if payer_bu != line.provider_bu:
            cells[(payer_bu, line.provider_bu)] += line.amount
    return tuple(GrossFlow(payer_bu=payer, provider_bu=provider, amount=amount)
                 for (payer, provider), amount in sorted(cells.items()) if amount)


def positions_from_matrix(matrix: Iterable[GrossFlow]) -> dict[str, Decimal]:
    """Net position = revenue - spend, per BU."""
    positions: dict[str, Decimal] = defaultdict(Decimal)
    for flow in matrix:
        positions[flow.provider_bu] += flow.amount
        positions[flow.payer_bu] -= flow.amount
    return dict(sorted(positions.items()))


def round_positions(positions: dict[str, Decimal], minor_units: int, mode: str) -> tuple[dict[str, Decimal], str | None]:
    """Round each position once; the residue that keeps the sum at zero goes to
    the largest position by magnitude (ties: first by name), named in the result."""
    if sum(positions.values(), Decimal(0)) != 0:
        raise NettingError("net positions do not sum to zero: the ledger is out of balance")
    rounded = {bu: round_to_minor(amount, minor_units, mode) for bu, amount in positions.items()}
    residue = -sum(rounded.values(), Decimal(0))
    if residue == 0 or not rounded:
        return rounded, None
    absorber = max(sorted(rounded), key=lambda bu: abs(positions[bu]))
    rounded[absorber] += residue
    return rounded, absorber


def transfers(rounded: dict[str, Decimal]) -> tuple[Transfer, ...]:
    """Greedy: the largest debtor pays the largest creditor; every step clears at
    least one side, so n BUs need at most n - 1 transfers."""
    debtors = sorted(((-amount, bu) for bu, amount in rounded.items() if amount < 0), key=lambda item: (-item[0], item[1]))
    creditors = sorted(((amount, bu) for bu, amount in rounded.items() if amount > 0), key=lambda item: (-item[0], item[1]))
    result = []
    debtor_index = creditor_index = 0
    while debtor_index < len(debtors) and creditor_index < len(creditors):
        owed, debtor = debtors[debtor_index]
        due, creditor = creditors[creditor_index]
        amount = min(owed, due)
        result.append(Transfer(from_bu=debtor, to_bu=creditor, amount=amount))
        debtors[debtor_index] = (owed - amount, debtor)
        creditors[creditor_index] = (due - amount, creditor)
        if debtors[debtor_index][0] == 0:
            debtor_index += 1
        if creditors[creditor_index][0] == 0:
            creditor_index += 1
    return tuple(result)
