"""`tokenhub balance` and `budget`: balances per business unit (now or as of a
time), and monthly budgets with their month-to-date spend."""

from __future__ import annotations

import argparse
from decimal import Decimal
from typing import Any

from tokenhub.cli import args, render
from tokenhub.cli.errors import CliError
from tokenhub.contracts.budgets import BudgetSet, budget_set_id
from tokenhub.contracts.canonical import canonical_json
from tokenhub.contracts.money import to_decimal
from tokenhub.contracts.topics import BUDGETS_CONFIGURED
from tokenhub.infra.settings import Settings, clock, load_settings
from tokenhub.services.common.kafka import send_events
from tokenhub.services.ledger import queries as ledger_queries
from tokenhub.services.ledger.queries import BudgetStatus
from tokenhub.services.metering import queries as metering_queries
from tokenhub.services.metering import registry


async def balance(arguments: argparse.Namespace) -> int:
    settings = load_settings()
    output = args.output_format(arguments)
    as_of = args.moment(arguments.as_of, "--as-of")
    async with args.database(settings) as pool:
        names = await args.known_bu(pool, arguments.bu)
        rows = await ledger_queries.balances(pool, names=names, bu=arguments.bu, as_of=as_of, by=arguments.by)
    print(render.json(render.balances_document(rows)) if output == "json"
          else render.balances_table(rows, settings.currency, one_bu=arguments.bu))
    return 0


def _thresholds(text: str) -> tuple[Decimal, ...]:
    try:
        return tuple(to_decimal(part.strip()) for part in text.split(","))
    except ValueError:
        raise CliError(f"--thresholds {text!r}: give percentages separated by commas, for example 50,80,100") from None


def build_budget(arguments: argparse.Namespace, settings: Settings) -> BudgetSet:
    now = clock(settings)
    month = args.month(arguments.from_month, settings, "budgets are monthly", option="--from").name
    actor = args.actor(arguments)
    return BudgetSet.model_validate({
        "id": budget_set_id(arguments.bu, arguments.consumer, month, now.isoformat()),
        "event_time": now, "cause_id": f"{actor}:budget:{arguments.bu}", "payer_bu": arguments.bu,
        "consumer_bu": arguments.consumer, "period_from": month, "amount": arguments.amount,
        "thresholds_percent": _thresholds(arguments.thresholds), "hard_limit": arguments.hard_limit,
        "currency": settings.currency, "actor": actor, "reason": arguments.reason, "set_at": now,
    })


async def budget_set(arguments: argparse.Namespace) -> int:
    settings = load_settings()
    bootstrap_servers, _ = settings.require_stack()
    budget = build_budget(arguments, settings)
    async with args.database(settings, size_max=1) as pool:
        refusal = registry.check_budget(budget.payer_bu, budget.consumer_bu, await metering_queries.registry(pool))
    if refusal is not None:
        raise CliError(refusal.text({"payer_bu": "--bu", "consumer_bu": "--consumer"}) + "; nothing was published")
    await send_events(bootstrap_servers, BUDGETS_CONFIGURED.name, [(budget.payer_bu.encode(), canonical_json(budget))],
                      settings=settings)
    scope = f" for consumer {budget.consumer_bu}" if budget.consumer_bu else ""
    limit = f", hard limit {budget.hard_limit:f}" if budget.hard_limit is not None else ""
    print(f"budget {budget.amount:f} {budget.currency} a month for {budget.payer_bu}{scope} from {budget.period_from}"
          f" (thresholds {', '.join(f'{t:f}' for t in budget.thresholds_percent)} %{limit}) published as {budget.id}")
    return 0


def budget_json(status: BudgetStatus) -> dict[str, Any]:
    budget = status.budget
    return {
        "payer_bu": budget.payer_bu, "consumer_bu": status.consumer_bu, "period": status.month,
        "budget_id": budget.id, "amount": budget.amount, "currency": budget.currency,
        "thresholds_percent": list(budget.thresholds_percent), "hard_limit": budget.hard_limit,
        "spent": status.spent, "used_percent": status.used_percent,
        "thresholds_crossed": [threshold.normalize() for threshold in status.thresholds_crossed],
        "quota_exhausted": status.quota_exhausted,
        "actor": budget.actor, "reason": budget.reason, "set_at": budget.set_at, "period_from": budget.period_from,
    }


async def budget_show(arguments: argparse.Namespace) -> int:
    settings = load_settings()
    output = args.output_format(arguments)
    month = args.month(arguments.period, settings, "budgets are monthly").name
    async with args.database(settings) as pool:
        await args.known_bu(pool, arguments.bu)
        rows = [budget_json(status) for status in await ledger_queries.budgets(pool, month=month, bu=arguments.bu)]
    if arguments.bu and not rows:
        raise CliError(f"no budget for {arguments.bu} in {month}; set one with `tokenhub budget set --bu {arguments.bu}`")
    if output == "json":
        print(render.json(rows))
        return 0
    print(render.table(
        ("payer", "consumer", "month", f"budget {settings.currency}", "spent", "used %", "thresholds crossed", "hard limit",
         "quota", "set by", "reason"),
        [(row["payer_bu"], row["consumer_bu"] or "(all)", row["period"], f"{row['amount']:f}", f"{row['spent']:f}",
          f"{row['used_percent']:f}", ", ".join(f"{value:f}" for value in row["thresholds_crossed"]) or "-",
          "-" if row["hard_limit"] is None else f"{row['hard_limit']:f}",
          "EXHAUSTED" if row["quota_exhausted"] else "available", row["actor"], row["reason"]) for row in rows],
        right={3, 4, 5},
    ))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    command = subparsers.add_parser("balance", help="balances per business unit, now or as of a time")
    args.add_bu(command)
    args.add_as_of(command, "balances of what happened up to this time")
    command.add_argument("--by", choices=("event-time", "posting-time"), default="event-time",
                         help="which time --as-of compares: when usage happened or when it was posted (default: event-time)")
    args.add_output(command)
    args.examples(command, "tokenhub balance", "tokenhub balance --bu taobao-tmall --json",
                  "tokenhub balance --as-of 2026-03-31T23:59:59+08:00 --by posting-time")
    command.set_defaults(handler=balance)

    budget_actions = subparsers.add_parser("budget", help="monthly budgets per payer").add_subparsers(dest="action", required=True)
    command = budget_actions.add_parser("set", help="set a payer's monthly budget (published on budgets.configured)")
    args.add_bu(command, required=True, what="the payer")
    command.add_argument("--amount", required=True, help="the monthly budget in the settlement currency, for example 5000")
    command.add_argument("--consumer", metavar="BU", help="only the spend funded for this consumer BU (default: all of it)")
    command.add_argument("--from", dest="from_month", metavar="MONTH",
                         help="the first month it applies to, for example 2026-03 (default: this month)")
    command.add_argument("--thresholds", default="50,80,100", help="alert thresholds in percent, comma-separated (default: 50,80,100)")
    command.add_argument("--hard-limit", help="spend at which the quota is exhausted (default: none)")
    args.add_change(command)
    args.examples(command, "tokenhub budget set --bu taobao-tmall --amount 5000 --reason 'Q2 plan'",
                  "tokenhub budget set --bu dingtalk --amount 800 --thresholds 80,100 --hard-limit 900 --reason cap")
    command.set_defaults(handler=budget_set)
    command = budget_actions.add_parser("show", help="budgets in force, month-to-date spend and alerts")
    args.add_bu(command, what="the payer")
    args.add_period(command, what="a month, for example 2026-03 (default: this month)")
    args.add_output(command)
    args.examples(command, "tokenhub budget show", "tokenhub budget show --bu taobao-tmall --period 2026-03 --json")
    command.set_defaults(handler=budget_show)
