"""`tokenhub invoice`, `settle`, `spend`, `billing-cycle` and `plan`: invoices
(list, show, close), the month's BU-by-BU matrix, net positions and transfers,
month-to-date spend, how often a payer is billed, and plans of period tiers."""

from __future__ import annotations

import argparse

from tokenhub.cli import args
from tokenhub.cli.errors import CliError
from tokenhub.contracts.periods import PeriodError
from tokenhub.infra.settings import clock, load_settings
from tokenhub.services.invoicing import queries, tools
from tokenhub.services.invoicing.domain import PeriodNotEnded, PlanError, what_follows_an_early_close
from tokenhub.services.invoicing.handlers import assign_plan, end_plan, set_cycle
from tokenhub.contracts.pricebook import BookIndex
from tokenhub.services.metering import queries as metering_queries
from tokenhub.services.metering import registry
from tokenhub.services.pricing import queries as pricing_queries
from tokenhub.views import documents, invoices as views


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
        print(documents.json(views.invoices_document(found, books)))
    elif output == "csv":
        print(views.invoice_csv(found, books))
    elif output == "html":
        print(views.invoice_html(found, settings.timezone, books, names))
    elif arguments.action == "list":
        print(views.invoice_list(found, settings.timezone) if found else "no invoices yet: a period closes at its "
              "end plus the allowed lateness, or with `tokenhub invoice close --period PERIOD`")
    else:
        print("\n\n".join(views.invoice_text(invoice, settings.timezone, books) for invoice in found))
    return 0


async def close(arguments: argparse.Namespace) -> int:
    settings = load_settings()
    period = args.period(arguments.period, settings)
    now = clock(settings)
    try:
        issued, published = await tools.close(settings, period.name, actor=args.actor(arguments), now=now,
                                              early=arguments.early)
    except PeriodNotEnded as error:
        raise CliError(f"{error} Pass --early to close it now.") from error
    print(views.closed(period, len(issued), published, settings.timezone))
    if now < period.end:
        print(what_follows_an_early_close(period))
    return 0


async def settle(arguments: argparse.Namespace) -> int:
    settings = load_settings()
    month = args.month(arguments.period, settings, "settlement is monthly")
    async with args.database(settings) as pool:
        settlement, final = await queries.settlement(pool, settings, month)
    if args.output_format(arguments) == "json":
        print(documents.json({"final": final, **settlement.model_dump()}))
    else:
        print(views.settlement(settlement, final))
    return 0


async def spend(arguments: argparse.Namespace) -> int:
    """Month to date: what the payer spends, by consumer, app, model and class,
    and the period tier its running total has reached."""
    settings = load_settings()
    month = args.month(arguments.period, settings, "spend is month to date")
    async with args.database(settings, size_max=1) as pool:
        await args.known_bu(pool, arguments.bu)
        found = await queries.spend(pool, settings, arguments.bu, month)
    print(documents.json(views.spend_document(arguments.bu, month, found)) if args.output_format(arguments) == "json"
          else views.spend_text(arguments.bu, month, found, settings.currency, settings.timezone))
    return 0


async def cycle(arguments: argparse.Namespace) -> int:
    settings = load_settings()
    async with args.database(settings, size_max=1) as pool:
        refusal = registry.known_business_unit(arguments.bu, await metering_queries.registry(pool), "--bu")
        if refusal is not None:
            raise CliError(refusal.text() + "; the billing cycle is not changed")
        await set_cycle(pool, arguments.bu, arguments.every, args.actor(arguments), arguments.reason, clock(settings))
    print(views.cycle_set(arguments.bu, arguments.every))
    return 0


async def plan(arguments: argparse.Namespace) -> int:
    """`tokenhub plan assign|list|end`: a payer on a price book's period tiers for a model over months."""
    settings = load_settings()
    now = clock(settings)
    async with args.database(settings, size_max=1) as pool:
        if arguments.action == "list":
            await args.known_bu(pool, arguments.bu)
            rows = await queries.plans(pool, bu=arguments.bu)
            print(documents.json(rows) if args.output_format(arguments) == "json" else views.plans(rows))
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
                print(views.plan_assigned(made))
            else:
                ended = await end_plan(pool, settings, payer_bu=arguments.bu, model=arguments.model,
                                       last_month=arguments.last, actor=actor, reason=arguments.reason, now=now)
                print(views.plan_ended(ended))
        except (PlanError, PeriodError) as error:
            raise CliError(str(error)) from error
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    command, arg = args.command, args.arg
    month = "a month, for example 2026-03 (default: this month)"
    invoice_actions = args.actions(subparsers, "invoice", "invoices")
    for name, what in (("list", "invoices issued and drafted, one line each"),
                       ("show", "invoices in full: each line with the book version and tier that priced it")):
        command(invoice_actions, name, what, invoice, args.bu_option(what="the payer"),
                args.period_option(what=f"one billing period; {args.PERIOD_HELP} (default: every period)"),
                output=("csv", "html"),
                examples=(f"tokenhub invoice {name}", f"tokenhub invoice {name} --bu taobao-tmall --period 2026-03",
                          f"tokenhub invoice {name} --bu taobao-tmall --format html > invoice.html"))
    command(invoice_actions, "close", "close a period: issue its invoices", invoice,
            args.period_option(required=True, what=f"the period to close; {args.PERIOD_HELP}"),
            arg("--actor", default=None, help="who closes it (default: your login name)"),
            arg("--early", action="store_true",
                help="close a period that has not ended yet (its invoices are final; later usage of it goes on the next ones)"),
            examples=("tokenhub invoice close --period 2026-03", "tokenhub invoice close --period 2026-12 --early"))

    command(subparsers, "spend", "month to date: spend by consumer, app, model and class, and the tier reached", spend,
            args.bu_option(required=True, what="the payer"), args.period_option(what=month), output=True,
            examples=("tokenhub spend --bu taobao-tmall", "tokenhub spend --bu taobao-tmall --period 2026-03 --json"))
    command(subparsers, "billing-cycle", "bill a payer every month (default), week or day", cycle,
            args.bu_option(required=True, what="the payer"),
            arg("--every", choices=("month", "week", "day"), required=True, help="how often its periods close"), change=True,
            examples=("tokenhub billing-cycle --bu cainiao --every week --reason 'weekly chargeback'",))
    command(subparsers, "settle", "the month's BU-by-BU matrix, net positions and settlement transfers", settle,
            args.period_option(what=month), output=True,
            examples=("tokenhub settle --period 2026-03", "tokenhub settle --json"))

    actions = args.actions(subparsers, "plan", "assign payers to a price book's period tiers (fees) for months")
    command(actions, "assign", "a payer on a book's period tiers for a model, from a month", plan,
            args.bu_option(required=True, what="the payer"),
            arg("--book", required=True, help="the price book whose period tiers apply"),
            arg("--model", required=True, help="the model they apply to"),
            arg("--from", dest="first", required=True, metavar="MONTH", help="the first month, for example 2026-04"),
            arg("--to", dest="last", metavar="MONTH", help="the last month (default: until ended)"), change=True,
            examples=("tokenhub plan assign --bu taobao-tmall --book internal --model qwen-max --from 2026-04 "
                      "--reason 'volume deal'",))
    command(actions, "list", "plans, with who assigned or ended them and why", plan, args.bu_option(what="the payer"),
            output=True, examples=("tokenhub plan list", "tokenhub plan list --bu taobao-tmall --json"))
    command(actions, "end", "end a payer's running plan for a model with a month", plan,
            args.bu_option(required=True, what="the payer"), arg("--model", required=True, help="the model of the plan"),
            arg("--last", required=True, metavar="MONTH", help="the last month it covers, for example 2026-06"), change=True,
            examples=("tokenhub plan end --bu taobao-tmall --model qwen-max --last 2026-06 --reason 'deal ended'",))
