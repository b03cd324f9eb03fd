"""`tokenhub replay`, `verify`, `restore`, `statement` and `budget`: the
auditor's and the budget owner's commands. The arithmetic lives in
`tokenhub.audit`; here are arguments and rendering."""

from __future__ import annotations

import argparse
import getpass
import sys
from datetime import datetime
from decimal import Decimal
from typing import Any, Final

import asyncpg
import orjson

from tokenhub.audit.balances import FIGURES
from tokenhub.audit.replay import ReplayReport, replay
from tokenhub.audit.restore import restore
from tokenhub.audit.statement import Statement, Unbalanced, statement
from tokenhub.audit.verify import VIOLATIONS_SHOWN_MAX, VerifyReport, verify
from tokenhub.cli import render
from tokenhub.cli.errors import CliError
from tokenhub.contracts.budgets import BudgetSet, budget_set_id
from tokenhub.contracts.canonical import canonical_json
from tokenhub.contracts.money import to_decimal
from tokenhub.contracts.periods import PeriodError, containing, parse
from tokenhub.contracts.topics import BUDGETS_CONFIGURED
from tokenhub.infra.settings import Settings, clock, load_settings
from tokenhub.services.common.db import create_pool
from tokenhub.services.common.kafka import create_producer
from tokenhub.services.ledger import queries as ledger_queries
from tokenhub.services.ledger.queries import BudgetStatus

IDLE_TIMEOUT_S_DEFAULT: Final = 3.0
"""Seconds without a record that end reading a topic (end offsets are not trusted)."""


def _progress(what: str, done: int, total: int | None) -> None:
    """Long runs show that they move, on stderr so that --json output stays clean."""
    if total:
        width = 30
        filled = width * min(done, total) // total
        print(f"\r{what}: [{'#' * filled}{'.' * (width - filled)}] {done}/{total}", end="" if done < total else "\n",
              file=sys.stderr, flush=True)
    else:
        print(f"{what}: {done}", file=sys.stderr, flush=True)


async def _pool(settings: Settings) -> asyncpg.Pool:
    _, database_url = settings.require_stack()
    return await create_pool(database_url, size_max=2)


def _time(text: str | None, option: str) -> datetime | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise CliError(f"{option} {text!r} is not an ISO time, for example 2026-03-14T12:00:00+08:00") from None
    if moment.tzinfo is None:
        raise CliError(f"{option} {text} needs a time zone, for example {text}+08:00")
    return moment


def _figures(values: dict[str, Decimal]) -> dict[str, str]:
    return {figure: f"{values[figure]:f}" for figure in FIGURES}


# --- replay -----------------------------------------------------------------------------

def replay_text(report: ReplayReport) -> str:
    where = "tokens.priced" if report.source == "topic" else "the ledger's Priced archive"
    when = f" as of {report.as_of.isoformat()}" if report.as_of else ""
    lines = []
    if not report.differences:
        lines.append(f"replay OK: {report.events} Priced events from {where}{when} rebuilt "
                     f"{len(report.rebuilt) if report.bu is None else 1} business units; every balance equals the ledger's projection")
    else:
        lines.append(f"replay FAILED: {len(report.differences)} differences ({report.events} events read from {where}{when})")
        lines += [f"  {difference.bu} {difference.figure}: rebuilt {difference.rebuilt:f} != projected "
                  f"{difference.projected:f}  [{difference.row(report.as_of)}]" for difference in report.differences]
    if report.conflicts:
        lines.append(f"  note: {report.conflicts} later copies on the topic reused an id with other content; the first was kept")
    if report.repricing is not None:
        repricing = report.repricing
        if report.ok or not (repricing.mismatches or repricing.unrecomputable or report.repriced_differences):
            lines.append(f"reprice OK: {len(repricing.amounts)} Priced recomputed from their TokenConsumed and book versions "
                         f"agree to the last digit ({repricing.kept} period tier adjustments taken as posted)")
        else:
            lines.append(f"reprice FAILED: {len(repricing.mismatches)} amounts differ, {len(repricing.unrecomputable)} "
                         f"cannot be recomputed, {len(report.repriced_differences)} balances differ")
            lines += [f"  Priced {priced_id} ({kind}): recorded {recorded:f}, recomputed {recomputed:f}"
                      for priced_id, kind, recorded, recomputed in repricing.mismatches[:VIOLATIONS_SHOWN_MAX]]
            lines += [f"  Priced {priced_id}: {why}" for priced_id, why in repricing.unrecomputable[:VIOLATIONS_SHOWN_MAX]]
            lines += [f"  {difference.bu} {difference.figure}: repriced {difference.rebuilt:f} != projected {difference.projected:f}"
                      for difference in report.repriced_differences]
    return "\n".join(lines)


def replay_json(report: ReplayReport) -> str:
    document: dict[str, Any] = {
        "ok": report.ok,
        "source": report.source,
        "as_of": report.as_of.isoformat() if report.as_of else None,
        "bu": report.bu,
        "events": report.events,
        "conflicting_copies": report.conflicts,
        "differences": [{"bu": difference.bu, "figure": difference.figure, "rebuilt": f"{difference.rebuilt:f}",
                         "projected": f"{difference.projected:f}", "row": difference.row(report.as_of)}
                        for difference in report.differences],
        "balances": {bu: _figures(values) for bu, values in sorted(report.rebuilt.items())
                     if report.bu is None or bu == report.bu},
    }
    if report.repricing is not None:
        document["reprice"] = {
            "recomputed": len(report.repricing.amounts),
            "adjustments_kept": report.repricing.kept,
            "mismatches": [{"priced_id": priced_id, "kind": kind, "recorded": f"{recorded:f}", "recomputed": f"{recomputed:f}"}
                           for priced_id, kind, recorded, recomputed in report.repricing.mismatches],
            "unrecomputable": [{"priced_id": priced_id, "reason": why} for priced_id, why in report.repricing.unrecomputable],
            "differences": [{"bu": difference.bu, "figure": difference.figure, "repriced": f"{difference.rebuilt:f}",
                             "projected": f"{difference.projected:f}"} for difference in report.repriced_differences],
        }
    return orjson.dumps(document, option=orjson.OPT_INDENT_2).decode()


async def replay_command(arguments: argparse.Namespace) -> int:
    settings = load_settings()
    bootstrap_servers, _ = settings.require_stack()
    pool = await _pool(settings)
    try:
        report = await replay(pool, bootstrap_servers, source=arguments.source, bu=arguments.bu,
                                    as_of=_time(arguments.as_of, "--as-of"), with_reprice=arguments.reprice,
                                    idle_timeout_s=arguments.idle_timeout, progress=_progress)
    finally:
        await pool.close()
    print(replay_json(report) if arguments.json else replay_text(report))
    return 0 if report.ok else 1


# --- verify -----------------------------------------------------------------------------

def verify_text(report: VerifyReport) -> str:
    lines = [f"Token Hub verify{' of ' + report.scope if report.scope else ''}"]
    for check in report.checks:
        status = "SKIPPED" if check.skipped else ("ok" if check.ok else "FAILED")
        lines.append(f"  [{status:>7}] {check.name:<12} {check.title} ({check.examined} examined"
                     + (f"; {check.skipped}" if check.skipped else "") + (f"; {len(check.violations)} violations" if check.violations else "") + ")")
        for violation in check.violations[:VIOLATIONS_SHOWN_MAX]:
            lines.append(f"      {violation.subject}: {violation.detail}")
        if len(check.violations) > VIOLATIONS_SHOWN_MAX:
            lines.append(f"      ... and {len(check.violations) - VIOLATIONS_SHOWN_MAX} more (--json lists all)")
    violations = len(report.violations)
    lines.append("verify OK: every chain and invariant holds" if report.ok else f"verify FAILED: {violations} violations")
    return "\n".join(lines)


def verify_json(report: VerifyReport) -> str:
    return orjson.dumps({
        "ok": report.ok,
        "scope": report.scope,
        "checks": [{"name": check.name, "title": check.title, "ok": check.ok, "examined": check.examined,
                    "skipped": check.skipped,
                    "violations": [{"subject": violation.subject, "detail": violation.detail} for violation in check.violations]}
                   for check in report.checks],
    }, option=orjson.OPT_INDENT_2).decode()


async def verify_command(arguments: argparse.Namespace) -> int:
    settings = load_settings()
    bootstrap_servers, _ = settings.require_stack()
    pool = await _pool(settings)
    try:
        report = await verify(pool, bootstrap_servers, scope=arguments.bu, minor_units=settings.currency_minor_units,
                              zone=settings.timezone, idle_timeout_s=arguments.idle_timeout, progress=_progress)
    finally:
        await pool.close()
    print(verify_json(report) if arguments.json else verify_text(report))
    return 0 if report.ok else 1


# --- restore -------------------------------------------------------------------------------

async def restore_command(arguments: argparse.Namespace) -> int:
    settings = load_settings()
    bootstrap_servers, database_url = settings.require_stack()
    if arguments.into == database_url:
        raise CliError("--into names the ledger being restored; give an empty database")
    pool = await _pool(settings)
    try:
        report = await restore(pool, arguments.into, bootstrap_servers, source=arguments.source, now=clock(settings),
                                     zone=settings.timezone, idle_timeout_s=arguments.idle_timeout, progress=_progress)
    except (OSError, asyncpg.PostgresError) as error:
        raise CliError(f"cannot restore into {arguments.into}: {error}") from None
    finally:
        await pool.close()
    print(f"restored {report.posted} entries from {report.priced} Priced ({arguments.source}); "
          f"{report.duplicates} duplicates, {report.conflicts} conflicting copies skipped; {report.budgets} budgets; "
          f"{report.alerts} budget alerts recorded; {report.outbox_cleared} outbox rows dropped (already published)")
    return 0


# --- statement --------------------------------------------------------------------------------

def statement_text(found: Statement, currency: str) -> str:
    header = (f"STATEMENT {found.bu}  {found.start.isoformat()} to {found.end.isoformat()} (end exclusive, by {found.by})")
    rows = render.table(
        ("event time", "entry", "kind", "payer", "consumer", "provider", "model", f"spend {currency}", f"revenue {currency}",
         "Tokens consumed", "Tokens served"),
        [(line.event_time.isoformat(timespec="seconds"), f"{line.chain}#{line.sequence}", line.kind, line.payer_bu,
          line.consumer_bu, line.provider_bu, line.model, f"{line.effect['spend']:f}", f"{line.effect['revenue']:f}",
          f"{line.effect['tokens_consumed']:,}", f"{line.effect['tokens_served']:,}") for line in found.lines],
        right={7, 8, 9, 10},
    )
    movements = found.movements

    def figures(label: str, values: dict[str, Decimal]) -> str:
        return (f"  {label:<10} spend {values['spend']:f}  revenue {values['revenue']:f}  net {values['revenue'] - values['spend']:f}"
                f"  Tokens consumed {values['tokens_consumed']:,}  served {values['tokens_served']:,}")

    agrees = all(found.opening[figure] + movements[figure] == found.closing[figure] for figure in FIGURES)
    footer = "\n".join([figures("opening", found.opening), figures("entries", movements), figures("closing", found.closing),
                        "  opening + entries = closing" if agrees or found.truncated else "  MISMATCH: opening + entries != closing"])
    more = f"\n  (first {len(found.lines)} entries shown; narrow the window for the rest)" if found.truncated else ""
    return f"{header}\n{rows}\n{footer}{more}"


def statement_json(found: Statement) -> str:
    return orjson.dumps({
        "bu": found.bu, "from": found.start.isoformat(), "to": found.end.isoformat(), "by": found.by,
        "opening": _figures(found.opening), "movements": _figures(found.movements), "closing": _figures(found.closing),
        "truncated": found.truncated,
        "entries": [{"entry_id": line.entry_id, "priced_id": line.priced_id, "kind": line.kind, "corrects_id": line.corrects_id,
                     "chain": line.chain, "sequence": line.sequence, "event_time": line.event_time.isoformat(),
                     "posted_at": line.posted_at.isoformat(), "payer_bu": line.payer_bu, "consumer_bu": line.consumer_bu,
                     "provider_bu": line.provider_bu, "app": line.app, "model": line.model, "amount": f"{line.amount:f}",
                     "tokens": line.tokens, "effect": _figures(line.effect)} for line in found.lines],
    }, option=orjson.OPT_INDENT_2).decode()


async def statement_command(arguments: argparse.Namespace) -> int:
    settings = load_settings()
    start, end = _time(arguments.start, "--from"), _time(arguments.end, "--to")
    assert start is not None and end is not None
    if end <= start:
        raise CliError("--to must be after --from")
    pool = await _pool(settings)
    try:
        found = await statement(pool, arguments.bu, start, end, arguments.by)
    except Unbalanced as error:
        raise CliError(str(error)) from None
    finally:
        await pool.close()
    if not found.lines and not any(found.closing.values()):
        raise CliError(f"no postings for business unit {arguments.bu}")
    print(statement_json(found) if arguments.json else statement_text(found, settings.currency))
    return 0


# --- budgets -----------------------------------------------------------------------------------

def _month(text: str | None, settings: Settings) -> str:
    if text is None:
        return containing(clock(settings), "month", settings.timezone).name
    try:
        period = parse(text, settings.timezone)
    except PeriodError as error:
        raise CliError(str(error)) from None
    if period.kind != "month":
        raise CliError(f"{text} is not a month; budgets are monthly, for example 2026-03")
    return period.name


def _thresholds(text: str) -> tuple[Decimal, ...]:
    try:
        return tuple(to_decimal(part.strip()) for part in text.split(","))
    except ValueError:
        raise CliError(f"--thresholds {text!r}: give percentages separated by commas, for example 50,80,100") from None


def build_budget(arguments: argparse.Namespace, settings: Settings) -> BudgetSet:
    now = clock(settings)
    month = _month(arguments.from_month, settings)
    actor = arguments.actor or getpass.getuser()
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
    producer = create_producer(bootstrap_servers, client_id="tokenhub-cli")
    await producer.start()
    try:
        await (await producer.send(BUDGETS_CONFIGURED.name, canonical_json(budget), key=budget.payer_bu.encode()))
    finally:
        await producer.stop()
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
    month = _month(arguments.month, settings)
    pool = await _pool(settings)
    try:
        rows = [budget_json(status) for status in await ledger_queries.budgets(pool, month=month, bu=arguments.bu)]
    finally:
        await pool.close()
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


# --- wiring -----------------------------------------------------------------------------------

def register(subparsers: argparse._SubParsersAction) -> None:
    replay = subparsers.add_parser("replay", help="rebuild balances from the log and diff them against the ledger")
    replay.add_argument("--bu")
    replay.add_argument("--as-of", help="event time, ISO with zone: balances of the events up to then")
    replay.add_argument("--source", choices=("topic", "archive"), default="topic")
    replay.add_argument("--reprice", action="store_true", help="also recompute every Priced from its TokenConsumed and book version")
    replay.add_argument("--json", action="store_true")
    replay.add_argument("--idle-timeout", type=float, default=IDLE_TIMEOUT_S_DEFAULT, help="seconds without records that end the read")
    replay.set_defaults(handler=replay_command)

    verify = subparsers.add_parser("verify", help="check the hash chains and invariants 1-6; non-zero on any violation")
    verify.add_argument("--bu", help="only this payer's chain and events (global counters are skipped)")
    verify.add_argument("--json", action="store_true")
    verify.add_argument("--idle-timeout", type=float, default=IDLE_TIMEOUT_S_DEFAULT, help="seconds without records that end the read")
    verify.set_defaults(handler=verify_command)

    restore = subparsers.add_parser("restore", help="rebuild the ledger into an empty database")
    restore.add_argument("--into", required=True, metavar="DATABASE_URL")
    restore.add_argument("--source", choices=("archive", "topic"), default="archive")
    restore.add_argument("--idle-timeout", type=float, default=IDLE_TIMEOUT_S_DEFAULT)
    restore.set_defaults(handler=restore_command)

    statement = subparsers.add_parser("statement", help="the entries behind a business unit's balance")
    statement.add_argument("bu")
    statement.add_argument("--from", dest="start", required=True, help="ISO time with zone (inclusive)")
    statement.add_argument("--to", dest="end", required=True, help="ISO time with zone (exclusive)")
    statement.add_argument("--by", choices=("event-time", "posting-time"), default="event-time")
    statement.add_argument("--json", action="store_true")
    statement.set_defaults(handler=statement_command)

    budget_actions = subparsers.add_parser("budget", help="monthly budgets per payer").add_subparsers(dest="action", required=True)
    set_parser = budget_actions.add_parser("set", help="set a payer's monthly budget (published on budgets.configured)")
    set_parser.add_argument("bu", help="the payer")
    set_parser.add_argument("--amount", required=True, help="the monthly budget in the settlement currency")
    set_parser.add_argument("--consumer", help="only the spend funded for this consumer BU")
    set_parser.add_argument("--from", dest="from_month", help="first month, for example 2026-03 (default: this month)")
    set_parser.add_argument("--thresholds", default="50,80,100", help="soft thresholds in percent")
    set_parser.add_argument("--hard-limit", help="spend at which the quota is exhausted")
    set_parser.add_argument("--actor", default=None)
    set_parser.add_argument("--reason", required=True)
    set_parser.set_defaults(handler=budget_set)
    show = budget_actions.add_parser("show", help="budgets in force, month-to-date spend and alerts")
    show.add_argument("bu", nargs="?")
    show.add_argument("--month", help="for example 2026-03 (default: this month)")
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=budget_show)
