"""`tokenhub settle`, `spend` and `billing-cycle`: the month's BU-by-BU matrix, net
positions and transfers; month-to-date spend; how often a payer is billed."""

from __future__ import annotations

import argparse
import getpass

import orjson

from tokenhub.cli.errors import CliError
from tokenhub.cli.render import money, table
from tokenhub.contracts.periods import Period, PeriodError, containing, parse
from tokenhub.contracts.settlement import SettlementNetted
from tokenhub.infra.settings import clock, load_settings
from tokenhub.services.common.db import create_pool
from tokenhub.services.invoicing import queries
from tokenhub.services.invoicing.domain import PlanError
from tokenhub.services.invoicing.handlers import assign_plan, end_plan, set_cycle
from tokenhub.services.metering import queries as metering_queries


def render_settlement(settlement: SettlementNetted, final: bool) -> str:
    status = ("settled" if settlement.revision == 1 else f"settled, revision {settlement.revision}") if final else (
        "provisional (month not closed)")
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


def _month(name: str, zone: str) -> Period:
    month = parse(name, zone)
    if month.kind != "month":
        raise CliError(f"settlement is monthly: give a month such as 2026-03, not {name}")
    return month


async def settle(arguments: argparse.Namespace) -> int:
    settings = load_settings()
    _, database_url = settings.require_stack()
    pool = await create_pool(database_url, size_max=2)
    try:
        settlement, final = await queries.settlement(pool, settings, _month(arguments.period, settings.timezone))
    finally:
        await pool.close()
    if arguments.json:
        print(orjson.dumps({"final": final, **settlement.model_dump(mode="json")}, option=orjson.OPT_INDENT_2).decode())
    else:
        print(render_settlement(settlement, final))
    return 0


async def spend(arguments: argparse.Namespace) -> int:
    """Month to date: what the payer spends, by consumer, app, model and class,
    and the period tier its running total has reached."""
    settings = load_settings()
    _, database_url = settings.require_stack()
    month = parse(arguments.period, settings.timezone) if arguments.period else containing(clock(settings), "month", settings.timezone)
    if month.kind != "month":
        raise CliError(f"spend is month to date: give a month such as 2026-03, not {arguments.period}")
    pool = await create_pool(database_url, size_max=1)
    try:
        found = await queries.spend(pool, settings, arguments.bu, month)
    finally:
        await pool.close()
    if arguments.json:
        print(orjson.dumps({
            "bu": arguments.bu, "period": month.name, "spend": f"{found.total:f}",
            "lines": [{**row, "amount": f"{row['amount']:f}"} for row in found.rows],
            "period_tiers": [{"model": line.model, "tokens": line.tokens, "charge": f"{line.amount:f}"}
                             for line in found.period_tiers],
        }, option=orjson.OPT_INDENT_2).decode())
        return 0
    print(f"{arguments.bu}: month to date {month.name}, {found.total:,.6f} {settings.currency}")
    print(table(["consumer", "app", "model", "class", "Tokens", "amount"],
                [[row["consumer_bu"], row["app"], row["model"], row["token_class"], f"{row['tokens']:,}",
                  f"{row['amount']:,.6f}"] for row in found.rows], right={4, 5}))
    for line in found.period_tiers:
        print(f"period tier so far: {line.model} at {line.tokens:,} Tokens -> {line.amount:,.6f} {settings.currency}")
    return 0


async def cycle(arguments: argparse.Namespace) -> int:
    settings = load_settings()
    _, database_url = settings.require_stack()
    pool = await create_pool(database_url, size_max=1)
    try:
        await set_cycle(pool, arguments.bu, arguments.every, arguments.actor or getpass.getuser(), arguments.reason,
                        clock(settings))
    finally:
        await pool.close()
    print(f"{arguments.bu} is billed every {arguments.every} from now on (periods nest in months)")
    return 0


async def plan(arguments: argparse.Namespace) -> int:
    """`tokenhub plan assign|list|end`: a payer on a price book's period tiers for a model over months."""
    settings = load_settings()
    _, database_url = settings.require_stack()
    pool = await create_pool(database_url, size_max=1)
    now = clock(settings)
    try:
        if arguments.action == "list":
            rows = await queries.plans(pool, bu=arguments.bu)
            if arguments.json:
                print(orjson.dumps([{**row, "plan_id": str(row["plan_id"])} for row in rows],
                                   option=orjson.OPT_INDENT_2).decode())
            else:
                print(table(["payer", "model", "book", "provider", "from", "to", "by", "reason"],
                            [[row["payer_bu"], row["model"], row["book_id"], row["provider_bu"], row["first_month"],
                              row["last_month"] or "-", row["ended_by"] or row["actor"], row["end_reason"] or row["reason"]]
                             for row in rows]))
            return 0
        actor = arguments.actor or getpass.getuser()
        models = {row["model_id"]: row for row in await metering_queries.models(pool)}
        units = {row["bu_id"] for row in await metering_queries.business_units(pool)}
        if arguments.bu not in units:
            raise CliError(f"no business unit {arguments.bu} in the registry")
        if arguments.model not in models:
            raise CliError(f"no model {arguments.model} in the registry")
        try:
            if arguments.action == "assign":
                made = await assign_plan(pool, settings, payer_bu=arguments.bu, book_id=arguments.book,
                                         model=arguments.model, provider_bu=models[arguments.model]["provider_bu"],
                                         first_month=arguments.first, last_month=arguments.last, actor=actor,
                                         reason=arguments.reason, now=now)
                print(f"{made.payer_bu} is on {made.book_id}'s period tiers for {made.model} from {made.first_month} "
                      f"to {made.last_month or 'further notice'}: every billing period in those months gets its tier "
                      "line at close, the first tier's flat fee included, with or without usage")
            else:
                ended = await end_plan(pool, settings, payer_bu=arguments.bu, model=arguments.model,
                                       last_month=arguments.last, actor=actor, reason=arguments.reason, now=now)
                print(f"{ended.payer_bu}'s plan for {ended.model} ends with {ended.last_month}")
        except (PlanError, PeriodError) as error:
            raise CliError(str(error)) from error
    finally:
        await pool.close()
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    command = subparsers.add_parser("spend", help="month to date: spend by consumer, app, model and class, and the tier reached")
    command.add_argument("bu")
    command.add_argument("--period", help="a month (default: this month)")
    command.add_argument("--json", action="store_true")
    command.set_defaults(handler=spend)
    command = subparsers.add_parser("billing-cycle", help="bill a payer every month (default), week or day")
    command.add_argument("bu")
    command.add_argument("--every", choices=("month", "week", "day"), required=True)
    command.add_argument("--actor")
    command.add_argument("--reason", required=True)
    command.set_defaults(handler=cycle)

    command = subparsers.add_parser("settle", help="the month's BU-by-BU matrix, net positions and settlement transfers")
    command.add_argument("period", help="a month, for example 2026-03")
    command.add_argument("--json", action="store_true")
    command.set_defaults(handler=settle)

    actions = subparsers.add_parser("plan", help="assign payers to a price book's period tiers (fees) for months").add_subparsers(
        dest="action", required=True)
    command = actions.add_parser("assign", help="a payer on a book's period tiers for a model, from a month")
    command.add_argument("bu")
    command.add_argument("--book", required=True)
    command.add_argument("--model", required=True)
    command.add_argument("--from", dest="first", required=True, help="the first month, for example 2026-04")
    command.add_argument("--to", dest="last", help="the last month (default: until ended)")
    command.add_argument("--actor")
    command.add_argument("--reason", required=True)
    command.set_defaults(handler=plan)
    command = actions.add_parser("list", help="plans, with who assigned or ended them and why")
    command.add_argument("bu", nargs="?")
    command.add_argument("--json", action="store_true")
    command.set_defaults(handler=plan)
    command = actions.add_parser("end", help="end a payer's running plan for a model with a month")
    command.add_argument("bu")
    command.add_argument("--model", required=True)
    command.add_argument("--last", required=True, help="the last month it covers, for example 2026-06")
    command.add_argument("--actor")
    command.add_argument("--reason", required=True)
    command.set_defaults(handler=plan)
