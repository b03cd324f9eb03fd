"""`tokenhub settle`: the month's BU-by-BU matrix, net positions and transfers."""

from __future__ import annotations

import argparse

import orjson

from tokenhub.cli.errors import CliError
from tokenhub.contracts.events import decode
from tokenhub.contracts.periods import parse
from tokenhub.contracts.settlement import SettlementNetted
from tokenhub.infra.settings import Settings, load_settings
from tokenhub.services.common.db import create_pool
from tokenhub.services.invoicing.adapters import store
from tokenhub.services.invoicing.handlers import build_settlement, invoiced_postings


async def settlement_for(pool, settings: Settings, period_name: str) -> tuple[SettlementNetted, bool]:  # noqa: ANN001
    """The issued settlement of a closed month, or a provisional one from what is invoiced so far."""
    period = parse(period_name, settings.timezone)
    if period.kind != "month":
        raise CliError(f"settlement is monthly: give a month such as 2026-03, not {period_name}")
    async with pool.acquire() as connection:
        stored = await connection.fetchval(store.SELECT_SETTLEMENT, period.name)
        if stored is not None:
            return decode(SettlementNetted, stored), True
        return build_settlement(settings, period, await invoiced_postings(connection, period)), False


def render_settlement(settlement: SettlementNetted, final: bool) -> str:
    from tokenhub.cli.render import money, table

    status = "settled" if final else "provisional (month not closed)"
    payers = sorted({flow.payer_bu for flow in settlement.matrix})
    providers = sorted({flow.provider_bu for flow in settlement.matrix})
    cells = {(flow.payer_bu, flow.provider_bu): flow.amount for flow in settlement.matrix}
    matrix = table(["payer \\ provider", *providers],
                   [[payer, *(money(cells[(payer, provider)]) if (payer, provider) in cells else "-" for provider in providers)]
                    for payer in payers], right=set(range(1, len(providers) + 1)))
    positions = table(["business unit", f"net position {settlement.currency}", "rounded"],
                      [[bu, f"{amount:,.6f}", money(settlement.rounded_positions[bu])] for bu, amount in sorted(settlement.positions.items())],
                      right={1, 2})
    transfers = table(["pays", "receives", f"amount {settlement.currency}"],
                      [[transfer.from_bu, transfer.to_bu, money(transfer.amount)] for transfer in settlement.transfers],
                      right={2})
    residue = (f"\nrounding residue absorbed by {settlement.rounding_residue_bu}" if settlement.rounding_residue_bu else "")
    return (f"SETTLEMENT {settlement.period} [{status}]\n\nwho owes whom before netting:\n{matrix}\n\n"
            f"net positions (revenue - spend):\n{positions}{residue}\n\n"
            f"{len(settlement.transfers)} transfers clear {len(settlement.positions)} positions:\n{transfers}")


async def settle(arguments: argparse.Namespace) -> int:
    settings = load_settings()
    _, database_url = settings.require_stack()
    pool = await create_pool(database_url, size_max=2)
    try:
        settlement, final = await settlement_for(pool, settings, arguments.period)
    finally:
        await pool.close()
    if arguments.json:
        print(orjson.dumps({"final": final, **settlement.model_dump(mode="json")}, option=orjson.OPT_INDENT_2).decode())
    else:
        print(render_settlement(settlement, final))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    command = subparsers.add_parser("settle", help="the month's BU-by-BU matrix, net positions and settlement transfers")
    command.add_argument("period", help="a month, for example 2026-03")
    command.add_argument("--json", action="store_true")
    command.set_defaults(handler=settle)
