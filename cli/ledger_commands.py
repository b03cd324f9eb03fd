"""`tokenhub balance` and `budget`: balances per business unit (now or as of a
time), and monthly budgets with their month-to-date spend."""

from __future__ import annotations

import argparse
from decimal import Decimal
from typing import Any

import orjson

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


async def balance(arguments: argparse.Namespace) -> int:
    settings = load_settings()
    as_of = args.moment(arguments.as_of, "--as-of")
    async with args.database(settings) as pool:
        rows = await ledger_queries.balances(pool, names=await metering_queries.display_names(pool), bu=arguments.bu,
                                             as_of=as_of, by=arguments.by)
    if arguments.bu and not rows:
        raise CliError(f"no postings for business unit {arguments.bu}")
    print(render.balances_json(rows) if arguments.json else render.balances_table(rows, settings.currency))
    return 0


def _thresholds(text: str) -> tuple[Decimal, ...]:
    try:
        return tuple(to_decimal(part.strip()) for part in text.split(","))
    except ValueError:
        raise CliError(f"--thresholds {text!r}: give percentages separated by commas, for example 50,80,100") from None


def build_budget(arguments: argparse.Namespace, settings: Settings) -> BudgetSet:
    now = clock(settings)
    month = args.month(arguments.from_month, settings, "budgets are monthly").name
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
        "budget_id": str(budget.id), "amount": f"{budget.amount:f}", "currency": budget.currency,
        "thresholds_percent": [f"{threshold:f}" for threshold in budget.thresholds_percent],
        "hard_limit": f"{budget.hard_limit:f}" if budget.hard_limit is not None else None,
        "spent": f"{status.spent:f}", "used_percent": f"{status.used_percent:f}",
        "thresholds_crossed": [f"{threshold.normalize():f}" for threshold in status.thresholds_crossed],
        "quota_exhausted": status.quota_exhausted,
        "actor": budget.actor, "reason": budget.reason, "set_at": budget.set_at.isoformat(), "period_from": budget.period_from,
    }


async def budget_show(arguments: argparse.Namespace) -> int:
    settings = load_settings()
    month = args.month(arguments.month, settings, "budgets are monthly").name
    async with args.database(settings) as pool:
        rows = [budget_json(status) for status in await ledger_queries.budgets(pool, month=month, bu=arguments.bu)]
    if arguments.bu and not rows:
        raise CliError(f"no budget for {arguments.bu} in {month}")
    if arguments.json:
        print(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
        return 0
    print(render.table(
        ("payer", "consumer", "month", f"budget {settings.currency}", "spent", "used %", "thresholds crossed", "hard limit",
         "quota", "set by", "reason"),
        [(row["payer_bu"], row["consumer_bu"] or "(all)", row["period"], row["amount"], row["spent"], row["used_percent"],
          ", ".join(row["thresholds_crossed"]) or "-", row["hard_limit"] or "-",
          "EXHAUSTED" if row["quota_exhausted"] else "available", row["actor"], row["reason"]) for row in rows],
        right={3, 4, 5},
    ))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    command = subparsers.add_parser("balance", help="balances per business unit")
    command.add_argument("bu", nargs="?")
    command.add_argument("--as-of", help=args.TIME_HELP)
    command.add_argument("--by", choices=("event-time", "posting-time"), default="event-time")
    args.add_json(command)
    command.set_defaults(handler=balance)

    budget_actions = subparsers.add_parser("budget", help="monthly budgets per payer").add_subparsers(dest="action", required=True)
    command = budget_actions.add_parser("set", help="set a payer's monthly budget (published on budgets.configured)")
    command.add_argument("bu", help="the payer")
    command.add_argument("--amount", required=True, help="the monthly budget in the settlement currency")
    command.add_argument("--consumer", help="only the spend funded for this consumer BU")
    command.add_argument("--from", dest="from_month", help="first month, for example 2026-03 (default: this month)")
    command.add_argument("--thresholds", default="50,80,100", help="soft thresholds in percent")
    command.add_argument("--hard-limit", help="spend at which the quota is exhausted")
    args.add_change(command)
    command.set_defaults(handler=budget_set)
    command = budget_actions.add_parser("show", help="budgets in force, month-to-date spend and alerts")
    command.add_argument("bu", nargs="?")
    command.add_argument("--month", help="for example 2026-03 (default: this month)")
    args.add_json(command)
    command.set_defaults(handler=budget_show)
