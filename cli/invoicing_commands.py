"""`tokenhub invoice`, `settle`, `spend`, `billing-cycle` and `plan`: invoices
(list, show, close), the month's BU-by-BU matrix, net positions and transfers,
month-to-date spend, how often a payer is billed, and plans of period tiers."""

from __future__ import annotations

import argparse

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
from tokenhub.contracts.pricebook import BookIndex
from tokenhub.services.metering import queries as metering_queries
from tokenhub.services.metering import registry
from tokenhub.services.pricing import queries as pricing_queries


async def invoice(arguments: argparse.Namespace) -> int:
    settings = load_settings()
    if arguments.action == "close":
        return await close(arguments)
    output = args.output_format(arguments)
    async with args.database(settings) as pool:
        names = await args.known_bu(pool, arguments.bu)
        if arguments.period:
            args.period(arguments.period, settings)
        found = await queries.invoices(pool, settings, bu=arguments.bu, period=arguments.period)
        books = BookIndex.of(await pricing_queries.price_books(pool))
    if arguments.action == "show" and not found:
        raise CliError("no invoice matches" + (f" {arguments.bu}" if arguments.bu else "")
                       + (f" for {arguments.period}" if arguments.period else "") + "; `tokenhub invoice list` shows them")
    if output == "json":
        print(render.json(render.invoices_document(found, books)))
    elif output == "csv":
        print(render.invoice_csv(found, books))
    elif output == "html":
        print(render.invoice_html(found, settings.timezone, books, names))
    elif arguments.action == "list":
        print(render.invoice_list(found, settings.timezone) if found else "no invoices yet: a period closes at its "
              "end plus the allowed lateness, or with `tokenhub invoice close --period PERIOD`")
    else:
        print("\n\n".join(render.invoice_text(invoice, settings.timezone, books) for invoice in found))
    return 0


async def close(arguments: argparse.Namespace) -> int:
    settings = load_settings()
    period = args.period(arguments.period, settings)
    now = clock(settings)
    async with args.database(settings) as pool:
        try:
            issued = await close_period(pool, settings, period.name, actor=args.actor(arguments), now=now,
                                        early=arguments.early)
        except PeriodNotEnded as error:
            raise CliError(f"{error} Pass --early to close it now.") from error
        # Published now, as the service publishes what it closes; left in the outbox,
        # they would wait for the service's next batch of postings.
        published = await relay_now(pool, settings.require_stack()[0], INVOICING_SCHEMA, client_id="tokenhub-invoice-close",
                                    settings=settings)
    print(f"closed {period.name} ({render.period_range(period.start, period.end, settings.timezone)}): "
          f"{len(issued)} invoices issued, {published} events published")
    if now < period.end:
        print(what_follows_an_early_close(period))
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
    if args.output_format(arguments) == "json":
        print(render.json({"final": final, **settlement.model_dump()}))
    else:
        print(render_settlement(settlement, final))
    return 0


async def spend(arguments: argparse.Namespace) -> int:
    """Month to date: what the payer spends, by consumer, app, model and class,
    and the period tier its running total has reached."""
    settings = load_settings()
    month = args.month(arguments.period, settings, "spend is month to date")
    async with args.database(settings, size_max=1) as pool:
        await args.known_bu(pool, arguments.bu)
        found = await queries.spend(pool, settings, arguments.bu, month)
    if args.output_format(arguments) == "json":
        print(render.json({
            "bu": arguments.bu, "period": month.name, "period_start": month.start, "period_end": month.end,
            "spend": found.total, "overage": found.overage, "lines": found.rows,
            "period_tiers": [{"model": line.model, "tokens": line.tokens, "charge": line.amount} for line in found.period_tiers],
        }))
        return 0
    print(f"{arguments.bu}: month to date {month.name} ({render.period_range(month.start, month.end, settings.timezone)}), "
          f"{found.total:,.6f} {settings.currency}")
    if found.overage:
        print(f"over quota: {found.overage:,.6f} {settings.currency} of it was posted while the quota was exhausted "
              "(billed all the same, part of the total)")
    print(table(["consumer", "app", "model", "class", "Tokens", "amount", "overage"],
                [[row["consumer_bu"], row["app"], row["model"], row["token_class"], f"{row['tokens']:,}",
                  f"{row['amount']:,.6f}", f"{row['overage']:,.6f}" if row["overage"] else "-"] for row in found.rows],
                right={4, 5, 6}))
    for line in found.period_tiers:
        print(f"period tier so far: {line.model} at {line.tokens:,} Tokens -> {line.amount:,.6f} {settings.currency}")
    return 0


async def cycle(arguments: argparse.Namespace) -> int:
    settings = load_settings()
    async with args.database(settings, size_max=1) as pool:
        refusal = registry.known_business_unit(arguments.bu, await metering_queries.registry(pool), "--bu")
        if refusal is not None:
            raise CliError(refusal.text() + "; the billing cycle is not changed")
        await set_cycle(pool, arguments.bu, arguments.every, args.actor(arguments), arguments.reason, clock(settings))
    print(f"{arguments.bu} is billed every {arguments.every} from now on (periods nest in months)")
    return 0


async def plan(arguments: argparse.Namespace) -> int:
    """`tokenhub plan assign|list|end`: a payer on a price book's period tiers for a model over months."""
    settings = load_settings()
    now = clock(settings)
    async with args.database(settings, size_max=1) as pool:
        if arguments.action == "list":
            await args.known_bu(pool, arguments.bu)
            rows = await queries.plans(pool, bu=arguments.bu)
            if args.output_format(arguments) == "json":
                print(render.json(rows))
            else:
                print(table(["payer", "model", "book", "provider", "from", "to", "by", "reason"],
                            [[row["payer_bu"], row["model"], row["book_id"], row["provider_bu"], row["first_month"],
                              row["last_month"] or "-", row["ended_by"] or row["actor"], row["end_reason"] or row["reason"]]
                             for row in rows]))
            return 0
        actor = args.actor(arguments)
        models = {row["model_id"]: row for row in await metering_queries.models(pool)}
        refusal = registry.known_business_unit(arguments.bu, await metering_queries.registry(pool), "--bu")
        if refusal is not None:
            raise CliError(refusal.text() + "; no plan is changed")
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
    for name, what in (("list", "invoices issued and drafted, one line each"),
                       ("show", "invoices in full: each line with the book version and tier that priced it")):
        command = invoice_actions.add_parser(name, help=what)
        args.add_bu(command, what="the payer")
        args.add_period(command, what=f"one billing period; {args.PERIOD_HELP} (default: every period)")
        args.add_output(command, "csv", "html")
        args.examples(command, f"tokenhub invoice {name}", f"tokenhub invoice {name} --bu taobao-tmall --period 2026-03",
                      f"tokenhub invoice {name} --bu taobao-tmall --format html > invoice.html")
        command.set_defaults(handler=invoice)
    command = invoice_actions.add_parser("close", help="close a period: issue its invoices")
    args.add_period(command, required=True, what=f"the period to close; {args.PERIOD_HELP}")
    command.add_argument("--actor", default=None, help="who closes it (default: your login name)")
    command.add_argument("--early", action="store_true",
                         help="close a period that has not ended yet (its invoices are final; later usage of it goes on the next ones)")
    args.examples(command, "tokenhub invoice close --period 2026-03", "tokenhub invoice close --period 2026-12 --early")
    command.set_defaults(handler=invoice)

    command = subparsers.add_parser("spend", help="month to date: spend by consumer, app, model and class, and the tier reached")
    args.add_bu(command, required=True, what="the payer")
    args.add_period(command, what="a month, for example 2026-03 (default: this month)")
    args.add_output(command)
    args.examples(command, "tokenhub spend --bu taobao-tmall", "tokenhub spend --bu taobao-tmall --period 2026-03 --json")
    command.set_defaults(handler=spend)

    command = subparsers.add_parser("billing-cycle", help="bill a payer every month (default), week or day")
    args.add_bu(command, required=True, what="the payer")
    command.add_argument("--every", choices=("month", "week", "day"), required=True, help="how often its periods close")
    args.add_change(command)
    args.examples(command, "tokenhub billing-cycle --bu cainiao --every week --reason 'weekly chargeback'")
    command.set_defaults(handler=cycle)

    command = subparsers.add_parser("settle", help="the month's BU-by-BU matrix, net positions and settlement transfers")
    args.add_period(command, what="a month, for example 2026-03 (default: this month)")
    args.add_output(command)
    args.examples(command, "tokenhub settle --period 2026-03", "tokenhub settle --json")
    command.set_defaults(handler=settle)

    actions = subparsers.add_parser("plan", help="assign payers to a price book's period tiers (fees) for months").add_subparsers(
        dest="action", required=True)
    command = actions.add_parser("assign", help="a payer on a book's period tiers for a model, from a month")
    args.add_bu(command, required=True, what="the payer")
    command.add_argument("--book", required=True, help="the price book whose period tiers apply")
    command.add_argument("--model", required=True, help="the model they apply to")
    command.add_argument("--from", dest="first", required=True, metavar="MONTH", help="the first month, for example 2026-04")
    command.add_argument("--to", dest="last", metavar="MONTH", help="the last month (default: until ended)")
    args.add_change(command)
    args.examples(command, "tokenhub plan assign --bu taobao-tmall --book internal --model qwen-max --from 2026-04 --reason 'volume deal'")
    command.set_defaults(handler=plan)
    command = actions.add_parser("list", help="plans, with who assigned or ended them and why")
    args.add_bu(command, what="the payer")
    args.add_output(command)
    args.examples(command, "tokenhub plan list", "tokenhub plan list --bu taobao-tmall --json")
    command.set_defaults(handler=plan)
    command = actions.add_parser("end", help="end a payer's running plan for a model with a month")
    args.add_bu(command, required=True, what="the payer")
    command.add_argument("--model", required=True, help="the model of the plan")
    command.add_argument("--last", required=True, metavar="MONTH", help="the last month it covers, for example 2026-06")
    args.add_change(command)
    args.examples(command, "tokenhub plan end --bu taobao-tmall --model qwen-max --last 2026-06 --reason 'deal ended'")
    command.set_defaults(handler=plan)
