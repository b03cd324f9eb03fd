"""`tokenhub invoice`, `settle`, `spend`, `billing-cycle` and `plan`: invoices
(list, show, close), the month's BU-by-BU matrix, net positions and transfers,
month-to-date spend, how often a payer is billed, and plans of period tiers."""

from __future__ import annotations

import argparse

import orjson

from tokenhub.cli import args, render
from tokenhub.cli.errors import CliError
from tokenhub.cli.render import money, table
from tokenhub.contracts.periods import PeriodError, parse
from tokenhub.contracts.settlement import SettlementNetted
from tokenhub.infra.settings import clock, load_settings
from tokenhub.services.common.outbox import relay_now
from tokenhub.services.invoicing import queries
from tokenhub.services.invoicing.domain import PeriodNotEnded, PlanError, what_follows_an_early_close
from tokenhub.services.invoicing.handlers import SCHEMA as INVOICING_SCHEMA, assign_plan, close_period, end_plan, set_cycle
from tokenhub.services.metering import queries as metering_queries


async def invoice(arguments: argparse.Namespace) -> int:
    settings = load_settings()
    async with args.database(settings) as pool:
        if arguments.action == "close":
            period = parse(arguments.period, settings.timezone)
            now = clock(settings)
            try:
                issued = await close_period(pool, settings, arguments.period, actor=args.actor(arguments), now=now,
                                            early=arguments.early)
            except PeriodNotEnded as error:
                raise CliError(f"{error} Pass --early to close it now.") from error
            # Published now, as the service publishes what it closes; left in the outbox,
            # they would wait for the service's next batch of postings.
            published = await relay_now(pool, settings.require_stack()[0], INVOICING_SCHEMA, client_id="tokenhub-invoice-close",
                                        settings=settings)
            print(f"closed {arguments.period}: {len(issued)} invoices issued, {published} events published")
            if now < period.end:
                print(what_follows_an_early_close(period))
            return 0
        found = await queries.invoices(pool, settings, bu=arguments.bu, period=arguments.period)
        # A finance person reads names, not slugs: the page shows both.
        names = await metering_queries.display_names(pool) if arguments.format == "html" and not arguments.json else {}
    if arguments.action == "show" and not found:
        raise CliError("no invoice matches" + (f" {arguments.bu}" if arguments.bu else "")
                       + (f" for {arguments.period}" if arguments.period else ""))
    output_format = "json" if arguments.json else arguments.format
    if output_format == "json":
        print(render.invoices_json(found))
    elif output_format == "csv":
        print(render.invoice_csv(found))
    elif output_format == "html":
        print(render.invoice_html(found, names))
    elif arguments.action == "list":
        print(render.invoice_list(found))
    else:
        print("\n\n".join(render.invoice_text(invoice) for invoice in found))
    return 0


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


async def settle(arguments: argparse.Namespace) -> int:
    settings = load_settings()
    month = args.month(arguments.period, settings, "settlement is monthly")
    async with args.database(settings) as pool:
        settlement, final = await queries.settlement(pool, settings, month)
    if arguments.json:
        print(orjson.dumps({"final": final, **settlement.model_dump(mode="json")}, option=orjson.OPT_INDENT_2).decode())
    else:
        print(render_settlement(settlement, final))
    return 0


async def spend(arguments: argparse.Namespace) -> int:
    """Month to date: what the payer spends, by consumer, app, model and class,
    and the period tier its running total has reached."""
    settings = load_settings()
    month = args.month(arguments.period, settings, "spend is month to date")
    async with args.database(settings, size_max=1) as pool:
        found = await queries.spend(pool, settings, arguments.bu, month)
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
    async with args.database(settings, size_max=1) as pool:
        await set_cycle(pool, arguments.bu, arguments.every, args.actor(arguments), arguments.reason, clock(settings))
    print(f"{arguments.bu} is billed every {arguments.every} from now on (periods nest in months)")
    return 0


async def plan(arguments: argparse.Namespace) -> int:
    """`tokenhub plan assign|list|end`: a payer on a price book's period tiers for a model over months."""
    settings = load_settings()
    now = clock(settings)
    async with args.database(settings, size_max=1) as pool:
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
        actor = args.actor(arguments)
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
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    invoice_actions = subparsers.add_parser("invoice", help="invoices").add_subparsers(dest="action", required=True)
    for name in ("list", "show"):
        command = invoice_actions.add_parser(name)
        command.add_argument("bu", nargs="?")
        command.add_argument("--period", help="for example 2026-03")
        args.add_json(command)
        command.add_argument("--format", choices=("text", "csv", "html"), default="text")
        command.set_defaults(handler=invoice)
    close = invoice_actions.add_parser("close", help="close a period: issue its invoices")
    close.add_argument("period")
    close.add_argument("--actor", default=None, help="who closes it (default: the login name)")
    close.add_argument("--early", action="store_true",
                       help="close a period that has not ended yet (its invoices are final; later usage of it goes on the next ones)")
    close.set_defaults(handler=invoice)

    command = subparsers.add_parser("spend", help="month to date: spend by consumer, app, model and class, and the tier reached")
    command.add_argument("bu")
    command.add_argument("--period", help="a month (default: this month)")
    args.add_json(command)
    command.set_defaults(handler=spend)
    command = subparsers.add_parser("billing-cycle", help="bill a payer every month (default), week or day")
    command.add_argument("bu")
    command.add_argument("--every", choices=("month", "week", "day"), required=True)
    args.add_change(command)
    command.set_defaults(handler=cycle)

    command = subparsers.add_parser("settle", help="the month's BU-by-BU matrix, net positions and settlement transfers")
    command.add_argument("period", help="a month, for example 2026-03")
    args.add_json(command)
    command.set_defaults(handler=settle)

    actions = subparsers.add_parser("plan", help="assign payers to a price book's period tiers (fees) for months").add_subparsers(
        dest="action", required=True)
    command = actions.add_parser("assign", help="a payer on a book's period tiers for a model, from a month")
    command.add_argument("bu")
    command.add_argument("--book", required=True)
    command.add_argument("--model", required=True)
    command.add_argument("--from", dest="first", required=True, help="the first month, for example 2026-04")
    command.add_argument("--to", dest="last", help="the last month (default: until ended)")
    args.add_change(command)
    command.set_defaults(handler=plan)
    command = actions.add_parser("list", help="plans, with who assigned or ended them and why")
    command.add_argument("bu", nargs="?")
    args.add_json(command)
    command.set_defaults(handler=plan)
    command = actions.add_parser("end", help="end a payer's running plan for a model with a month")
    command.add_argument("bu")
    command.add_argument("--model", required=True)
    command.add_argument("--last", required=True, help="the last month it covers, for example 2026-06")
    args.add_change(command)
    command.set_defaults(handler=plan)
