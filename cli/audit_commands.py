"""`tokenhub replay`, `verify`, `restore` and `statement`: the auditor's
commands. The arithmetic lives in `tokenhub.audit`; here are arguments and rendering."""

from __future__ import annotations

import argparse
from decimal import Decimal
from typing import Final

import asyncpg

from tokenhub.audit.replay import ReplayReport, replay
from tokenhub.audit.restore import restore
from tokenhub.audit.statement import Statement, Unbalanced, statement
from tokenhub.audit.verify import VIOLATIONS_SHOWN_MAX, VerifyReport, verify
from tokenhub.cli import args, render
from tokenhub.cli.errors import CliError, not_one_of
from tokenhub.infra.settings import clock, load_settings
from tokenhub.services.metering import queries as metering_queries

IDLE_TIMEOUT_S_DEFAULT: Final = 3.0
"""Seconds without a record that end reading a topic (end offsets are not trusted)."""


# --- replay -----------------------------------------------------------------------------

def replay_text(report: ReplayReport) -> str:
    where = "tokens.priced" if report.source == "topic" else "the ledger's Priced archive"
    when = f" as of {report.as_of.isoformat()}" if report.as_of else ""  # as given, in the zone the auditor named
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


async def replay_command(arguments: argparse.Namespace) -> int:
    settings = load_settings()
    bootstrap_servers, _ = settings.require_stack()
    as_of = args.moment(arguments.as_of, "--as-of")
    output = args.output_format(arguments)
    async with args.database(settings) as pool:
        await _known_bu(pool, arguments.bu)
        report = await replay(pool, bootstrap_servers, source=arguments.source, bu=arguments.bu, as_of=as_of,
                              with_reprice=arguments.reprice, idle_timeout_s=arguments.idle_timeout,
                              progress=render.progress_bar)
    print(render.json(report.document()) if output == "json" else replay_text(report))
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


async def verify_command(arguments: argparse.Namespace) -> int:
    settings = load_settings()
    bootstrap_servers, _ = settings.require_stack()
    output = args.output_format(arguments)
    async with args.database(settings) as pool:
        await _known_bu(pool, arguments.bu)
        report = await verify(pool, bootstrap_servers, scope=arguments.bu, minor_units=settings.currency_minor_units,
                              zone=settings.timezone, idle_timeout_s=arguments.idle_timeout, progress=render.progress_bar)
    print(render.json(report.document()) if output == "json" else verify_text(report))
    return 0 if report.ok else 1


# --- restore -------------------------------------------------------------------------------

async def restore_command(arguments: argparse.Namespace) -> int:
    settings = load_settings()
    bootstrap_servers, database_url = settings.require_stack()
    if arguments.into == database_url:
        raise CliError("--into names the ledger being restored; give an empty database")
    async with args.database(settings) as pool:
        try:
            report = await restore(pool, arguments.into, bootstrap_servers, source=arguments.source, now=clock(settings),
                                   zone=settings.timezone, idle_timeout_s=arguments.idle_timeout, progress=render.progress_bar)
        except (OSError, asyncpg.PostgresError) as error:
            raise CliError(f"cannot restore into {arguments.into}: {error}") from None
    print(f"restored {report.posted} entries from {report.priced} Priced ({arguments.source}); "
          f"{report.duplicates} duplicates, {report.conflicts} conflicting copies skipped; {report.budgets} budgets; "
          f"{report.alerts} budget alerts recorded; {report.outbox_cleared} outbox rows dropped (already published)")
    return 0


# --- statement --------------------------------------------------------------------------------

def statement_text(found: Statement, currency: str, zone: str) -> str:
    header = (f"STATEMENT {found.bu}  {render.period_range(found.start, found.end, zone)} (end exclusive, by {found.by})")
    rows = render.table(
        ("event time", "entry", "kind", "payer", "consumer", "provider", "model", f"spend {currency}", f"revenue {currency}",
         "Tokens consumed", "Tokens served"),
        [(render.local(line.event_time, zone, seconds=True), f"{line.chain}#{line.sequence}",
          f"{line.kind}, {render.OVERAGE_MARK}" if line.overage else line.kind, line.payer_bu,
          line.consumer_bu, line.provider_bu, line.model, f"{line.effect['spend']:f}", f"{line.effect['revenue']:f}",
          f"{line.effect['tokens_consumed']:,}", f"{line.effect['tokens_served']:,}") for line in found.lines],
        right={7, 8, 9, 10},
    )
    def figures(label: str, values: dict[str, Decimal]) -> str:
        return (f"  {label:<10} spend {values['spend']:f}  revenue {values['revenue']:f}  net {values['revenue'] - values['spend']:f}"
                f"  Tokens consumed {values['tokens_consumed']:,}  served {values['tokens_served']:,}")

    footer = "\n".join([figures("opening", found.opening), figures("entries", found.movements), figures("closing", found.closing),
                        "  opening + entries = closing" if found.agrees or found.truncated else "  MISMATCH: opening + entries != closing"]
                       + ([f"  {render.OVERAGE_MARK}: spend {found.overage:f} of the entries' spend was posted while the quota "
                           "was exhausted (billed all the same, in the figures above)"]
                          if any(line.overage for line in found.lines) else []))
    more = f"\n  (first {len(found.lines)} entries shown; narrow the window for the rest)" if found.truncated else ""
    return f"{header}\n{rows}\n{footer}{more}"


async def statement_command(arguments: argparse.Namespace) -> int:
    settings = load_settings()
    start, end = args.moment(arguments.start, "--from"), args.moment(arguments.end, "--to")
    if start is None or end is None or end <= start:
        raise CliError("--to must be after --from")
    output = args.output_format(arguments)
    async with args.database(settings) as pool:
        await _known_bu(pool, arguments.bu)
        try:
            found = await statement(pool, arguments.bu, start, end, arguments.by)
        except Unbalanced as error:
            raise CliError(str(error)) from None
    if not found.lines and not any(found.closing.values()):
        raise CliError(f"no postings for business unit {arguments.bu}")
    print(render.json(found.document()) if output == "json" else statement_text(found, settings.currency, settings.timezone))
    return 0


async def _known_bu(pool: asyncpg.Pool, bu: str | None) -> None:
    """A business unit the registry does not know is a typo, not an empty result."""
    if bu is None:
        return
    names = await metering_queries.display_names(pool)
    if bu not in names:
        raise not_one_of("--bu", bu, sorted(names))


# --- wiring -----------------------------------------------------------------------------------

def register(subparsers: argparse._SubParsersAction) -> None:
    idle_help = f"seconds without a record that end reading a topic (default: {IDLE_TIMEOUT_S_DEFAULT:g})"
    replay = subparsers.add_parser("replay", help="rebuild balances from the log and diff them against the ledger")
    args.add_bu(replay, what="only this business unit's balances")
    args.add_as_of(replay, "balances of the events up to this event time")
    replay.add_argument("--source", choices=("topic", "archive"), default="topic",
                        help="read tokens.priced (topic) or the ledger's record of every Priced (archive) (default: topic)")
    replay.add_argument("--reprice", action="store_true", help="also recompute every Priced from its TokenConsumed and book version")
    replay.add_argument("--idle-timeout", type=float, default=IDLE_TIMEOUT_S_DEFAULT, help=idle_help)
    args.add_output(replay)
    args.examples(replay, "tokenhub replay", "tokenhub replay --bu taobao-tmall --as-of 2026-03-31T23:59:59+08:00",
                  "tokenhub replay --source archive --reprice --json")
    replay.set_defaults(handler=replay_command)

    verify = subparsers.add_parser("verify", help="check the hash chains and invariants 1-6; non-zero on any violation")
    args.add_bu(verify, what="only this payer's chain and events (global counters are skipped)")
    verify.add_argument("--idle-timeout", type=float, default=IDLE_TIMEOUT_S_DEFAULT, help=idle_help)
    args.add_output(verify)
    args.examples(verify, "tokenhub verify", "tokenhub verify --bu taobao-tmall --json")
    verify.set_defaults(handler=verify_command)

    restore = subparsers.add_parser("restore", help="rebuild the ledger into an empty database")
    restore.add_argument("--into", required=True, metavar="DATABASE_URL", help="an empty PostgreSQL database to rebuild into")
    restore.add_argument("--source", choices=("archive", "topic"), default="archive",
                         help="rebuild from the ledger's record (archive) or from tokens.priced (topic) (default: archive)")
    restore.add_argument("--idle-timeout", type=float, default=IDLE_TIMEOUT_S_DEFAULT, help=idle_help)
    args.examples(restore, "tokenhub restore --into postgresql://postgres@/restored?host=/tmp/pg")
    restore.set_defaults(handler=restore_command)

    statement = subparsers.add_parser("statement", help="the entries behind a business unit's balance")
    args.add_bu(statement, required=True)
    statement.add_argument("--from", dest="start", required=True, metavar="TIME", help=f"from (inclusive); {args.TIME_HELP}")
    statement.add_argument("--to", dest="end", required=True, metavar="TIME", help=f"to (exclusive); {args.TIME_HELP}")
    statement.add_argument("--by", choices=("event-time", "posting-time"), default="event-time",
                           help="which time the window compares (default: event-time)")
    args.add_output(statement)
    args.examples(statement, "tokenhub statement --bu taobao-tmall --from 2026-03-01T00:00:00+08:00 --to 2026-04-01T00:00:00+08:00")
    statement.set_defaults(handler=statement_command)
