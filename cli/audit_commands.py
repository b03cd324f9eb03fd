"""`tokenhub replay`, `verify`, `restore` and `statement`: the auditor's
commands. The arithmetic lives in `tokenhub.audit` and the reports' text in
`tokenhub.views.audit`; here are the arguments."""

from __future__ import annotations

import argparse
from typing import Final

import asyncpg

from tokenhub.audit.replay import replay
from tokenhub.audit.restore import restore
from tokenhub.audit.statement import Unbalanced, statement
from tokenhub.audit.verify import verify
from tokenhub.cli import args
from tokenhub.cli.errors import CliError
from tokenhub.cli.progress import progress_bar
from tokenhub.infra.settings import clock, load_settings
from tokenhub.views import audit as views, documents

IDLE_TIMEOUT_S_DEFAULT: Final = 3.0
"""Seconds without a record that end reading a topic (end offsets are not trusted)."""


async def replay_command(arguments: argparse.Namespace) -> int:
    settings = load_settings()
    bootstrap_servers, database_url = settings.require_stack()
    as_of = args.moment(arguments.as_of, "--as-of")
    output = args.output_format(arguments)
    async with args.database(settings) as pool:
        await args.known_bu(pool, arguments.bu)
        report = await replay(pool, bootstrap_servers, source=arguments.source, bu=arguments.bu, as_of=as_of,
                              with_reprice=arguments.reprice, idle_timeout_s=arguments.idle_timeout,
                              progress=progress_bar, database_url=database_url)
    print(documents.json(report.document()) if output == "json" else views.replay(report))
    return 0 if report.ok else 1


async def verify_command(arguments: argparse.Namespace) -> int:
    settings = load_settings()
    bootstrap_servers, _ = settings.require_stack()
    output = args.output_format(arguments)
    async with args.database(settings) as pool:
        await args.known_bu(pool, arguments.bu)
        report = await verify(pool, bootstrap_servers, scope=arguments.bu, minor_units=settings.currency_minor_units,
                              zone=settings.timezone, idle_timeout_s=arguments.idle_timeout, progress=progress_bar)
    print(documents.json(report.document()) if output == "json" else views.verify(report))
    return 0 if report.ok else 1


async def restore_command(arguments: argparse.Namespace) -> int:
    settings = load_settings()
    bootstrap_servers, database_url = settings.require_stack()
    if arguments.into == database_url:
        raise CliError("--into names the ledger being restored; give an empty database")
    async with args.database(settings) as pool:
        try:
            report = await restore(pool, arguments.into, bootstrap_servers, source=arguments.source, now=clock(settings),
                                   zone=settings.timezone, idle_timeout_s=arguments.idle_timeout, progress=progress_bar)
        except (OSError, asyncpg.PostgresError) as error:
            raise CliError(f"cannot restore into {arguments.into}: {error}") from None
    print(views.restored(report, arguments.source))
    return 0


async def statement_command(arguments: argparse.Namespace) -> int:
    settings = load_settings()
    start, end = args.moment(arguments.start, "--from"), args.moment(arguments.end, "--to")
    if start is None or end is None or end <= start:
        raise CliError("--to must be after --from")
    output = args.output_format(arguments)
    async with args.database(settings) as pool:
        await args.known_bu(pool, arguments.bu)
        try:
            found = await statement(pool, arguments.bu, start, end, arguments.by)
        except Unbalanced as error:
            raise CliError(str(error)) from None
    if not found.lines and not any(found.closing.values()):
        raise CliError(f"no postings for business unit {arguments.bu}")
    print(documents.json(found.document()) if output == "json" else views.statement(found, settings.currency, settings.timezone))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    command, arg = args.command, args.arg
    idle = arg("--idle-timeout", type=float, default=IDLE_TIMEOUT_S_DEFAULT,
               help=f"seconds without a record that end reading a topic (default: {IDLE_TIMEOUT_S_DEFAULT:g})")
    command(subparsers, "replay", "rebuild balances from the log and diff them against the ledger", replay_command,
            args.bu_option(what="only this business unit's balances"),
            args.as_of_option("balances of the events up to this event time"),
            arg("--source", choices=("topic", "archive"), default="topic",
                help="read tokens.priced (topic) or the ledger's record of every Priced (archive) (default: topic)"),
            arg("--reprice", action="store_true", help="also recompute every Priced from its TokenConsumed and book version"),
            idle, output=True, examples=("tokenhub replay", "tokenhub replay --bu taobao-tmall --as-of 2026-03-31T23:59:59+08:00",
                                         "tokenhub replay --source archive --reprice --json"))
    command(subparsers, "verify", "check the hash chains and invariants 1-6; non-zero on any violation", verify_command,
            args.bu_option(what="only this payer's chain and events (global counters are skipped)"), idle, output=True,
            examples=("tokenhub verify", "tokenhub verify --bu taobao-tmall --json"))
    command(subparsers, "restore", "rebuild the ledger into an empty database", restore_command,
            arg("--into", required=True, metavar="DATABASE_URL", help="an empty PostgreSQL database to rebuild into"),
            arg("--source", choices=("archive", "topic"), default="archive",
                help="rebuild from the ledger's record (archive) or from tokens.priced (topic) (default: archive)"),
            idle, examples=("tokenhub restore --into postgresql://postgres@/restored?host=/tmp/pg",))
    command(subparsers, "statement", "the entries behind a business unit's balance", statement_command,
            args.bu_option(required=True), args.time_option("--from", "start", "from (inclusive)", required=True),
            args.time_option("--to", "end", "to (exclusive)", required=True),
            arg("--by", choices=("event-time", "posting-time"), default="event-time",
                help="which time the window compares (default: event-time)"), output=True,
            examples=("tokenhub statement --bu taobao-tmall --from 2026-03-01T00:00:00+08:00 --to 2026-04-01T00:00:00+08:00",))
