"""`tokenhub balance` and `budget`: balances per business unit (now or as of a
time), and monthly budgets with their month-to-date spend."""

from __future__ import annotations

import argparse
from decimal import Decimal

from tokenhub.cli import args
from tokenhub.cli.errors import CliError
from tokenhub.contracts.budgets import BudgetSet, budget_set
from tokenhub.contracts.money import to_decimal
from tokenhub.infra.settings import Settings, clock, load_settings
from tokenhub.services.ledger import queries as ledger_queries, tools
from tokenhub.services.metering import queries as metering_queries, registry
from tokenhub.views import documents, ledger as views


async def balance(arguments: argparse.Namespace) -> int:
    settings = load_settings()
    output = args.output_format(arguments)
    as_of = args.moment(arguments.as_of, "--as-of")
    async with args.database(settings) as pool:
        names = await args.known_bu(pool, arguments.bu)
        rows = await ledger_queries.balances(pool, names=names, bu=arguments.bu, as_of=as_of, by=arguments.by)
    print(documents.json(views.balances_document(rows)) if output == "json"
          else views.balances_table(rows, settings.currency, one_bu=arguments.bu))
    return 0


def _thresholds(text: str) -> tuple[Decimal, ...]:
    try:
        return tuple(to_decimal(part.strip()) for part in text.split(","))
    except ValueError:
        raise CliError(f"--thresholds {text!r}: give percentages separated by commas, for example 50,80,100") from None


def build_budget(arguments: argparse.Namespace, settings: Settings) -> BudgetSet:
    return budget_set(payer_bu=arguments.bu, consumer_bu=arguments.consumer,
                      month=args.month(arguments.from_month, settings, "budgets are monthly", option="--from").name,
                      amount=arguments.amount, thresholds_percent=_thresholds(arguments.thresholds),
                      hard_limit=arguments.hard_limit, currency=settings.currency, actor=args.actor(arguments),
                      reason=arguments.reason, now=clock(settings))


async def budget_set_command(arguments: argparse.Namespace) -> int:
    settings = load_settings()
    settings.require_stack()
    budget = build_budget(arguments, settings)
    refusal = registry.check_budget(budget.payer_bu, budget.consumer_bu, await args.query(metering_queries.registry))
    if refusal is not None:
        raise CliError(refusal.text({"payer_bu": "--bu", "consumer_bu": "--consumer"}) + "; nothing was published")
    await tools.publish_budget(settings, budget)
    print(views.budget_published(budget))
    return 0


async def budget_show(arguments: argparse.Namespace) -> int:
    settings = load_settings()
    output = args.output_format(arguments)
    month = args.month(arguments.period, settings, "budgets are monthly").name
    async with args.database(settings) as pool:
        await args.known_bu(pool, arguments.bu)
        rows = [views.budget_document(status) for status in await ledger_queries.budgets(pool, month=month, bu=arguments.bu)]
    if arguments.bu and not rows:
        raise CliError(f"no budget for {arguments.bu} in {month}; set one with `tokenhub budget set --bu {arguments.bu}`")
    if output == "json":
        print(documents.json(rows))
        return 0
    print(views.budgets_table(rows, settings.currency))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    command, arg = args.command, args.arg
    command(subparsers, "balance", "balances per business unit, now or as of a time", balance,
            args.bu_option(), args.as_of_option("balances of what happened up to this time"),
            arg("--by", choices=("event-time", "posting-time"), default="event-time",
                help="which time --as-of compares: when usage happened or when it was posted (default: event-time)"),
            output=True, examples=("tokenhub balance", "tokenhub balance --bu taobao-tmall --json",
                                   "tokenhub balance --as-of 2026-03-31T23:59:59+08:00 --by posting-time"))

    budget_actions = args.actions(subparsers, "budget", "monthly budgets per payer")
    command(budget_actions, "set", "set a payer's monthly budget (published on budgets.configured)", budget_set_command,
            args.bu_option(required=True, what="the payer"),
            arg("--amount", required=True, help="the monthly budget in the settlement currency, for example 5000"),
            arg("--consumer", metavar="BU", help="only the spend funded for this consumer BU (default: all of it)"),
            arg("--from", dest="from_month", metavar="MONTH",
                help="the first month it applies to, for example 2026-03 (default: this month)"),
            arg("--thresholds", default="50,80,100", help="alert thresholds in percent, comma-separated (default: 50,80,100)"),
            arg("--hard-limit", help="spend at which the quota is exhausted (default: none)"), change=True,
            examples=("tokenhub budget set --bu taobao-tmall --amount 5000 --reason 'Q2 plan'",
                      "tokenhub budget set --bu dingtalk --amount 800 --thresholds 80,100 --hard-limit 900 --reason cap"))
    command(budget_actions, "show", "budgets in force, month-to-date spend and alerts", budget_show,
            args.bu_option(what="the payer"), args.period_option(what="a month, for example 2026-03 (default: this month)"),
            output=True, examples=("tokenhub budget show", "tokenhub budget show --bu taobao-tmall --period 2026-03 --json"))
