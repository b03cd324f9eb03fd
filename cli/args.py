"""What every command shares, under one name each: --bu (a business unit),
--period (a period by its ISO name), --as-of (a point in time), --from/--to (a
window), --actor and --reason (who makes a change and why), --format and --json
(how a reading command prints), documents read from files, examples in every
command's help, and the database a command reads. Each is parsed here once, and
a bad value becomes one clear line."""

from __future__ import annotations

import argparse
import getpass
import textwrap
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import orjson
import yaml

from tokenhub.cli.errors import CliError, UsageError
from tokenhub.contracts.periods import Period, PeriodError, containing, parse, parse_time
from tokenhub.infra.settings import Settings, clock, load_settings
from tokenhub.services.common.db import pooled
from tokenhub.services.metering import queries as metering_queries
from tokenhub.views import documents, errors, text

TIME_HELP = "ISO time with zone, for example 2026-03-14T12:00:00+08:00"
PERIOD_HELP = "ISO period name: a month 2026-03, a week 2026-W11 or a day 2026-03-14"
FORMATS_READING = ("text", "json")


def moment(text: str | None, option: str) -> datetime | None:
    """An option's ISO time, which must name its zone (the one parser, `contracts.periods.parse_time`)."""
    if text is None:
        return None
    try:
        return parse_time(text)
    except PeriodError as error:
        raise CliError(f"{option} {error}") from None


def period(text: str, settings: Settings) -> Period:
    """A period by its ISO name, in the company's time zone."""
    try:
        return parse(text, settings.timezone)
    except PeriodError as error:
        raise CliError(f"--period {error}") from None


def month(text: str | None, settings: Settings, why: str, option: str = "--period") -> Period:
    """A month by name (`2026-03`), this month by default; `why` says why it must be a month."""
    if text is None:
        return containing(clock(settings), "month", settings.timezone)
    try:
        period = parse(text, settings.timezone)
    except PeriodError as error:
        raise CliError(f"{option} {error}") from None
    if period.kind != "month":
        raise CliError(f"{option} {text}: {why}; give a month such as 2026-03")
    return period


def add_change(parser: argparse.ArgumentParser) -> None:
    """--actor and --reason: who makes a change and why, kept with it (decision
    12). Every command that changes something asks for its reason."""
    parser.add_argument("--actor", default=None, help="who makes the change (default: your login name)")
    parser.add_argument("--reason", required=True, help="why the change is made: kept with it for auditors")


def actor(arguments: argparse.Namespace) -> str:
    return getattr(arguments, "actor", None) or getpass.getuser()


def add_output(parser: argparse.ArgumentParser, *formats: str) -> None:
    """--format (text by default, json, and what else this command renders) and
    --json, short for --format json. README lists the JSON shape of each command."""
    choices = (*FORMATS_READING, *formats)
    parser.add_argument("--format", choices=choices, default=None,
                        help=f"how to print: {', '.join(choices)} (default: text)")
    parser.add_argument("--json", action="store_true",
                        help="print JSON of the shape README names (short for --format json)")


def output_format(arguments: argparse.Namespace) -> str:
    """The format asked for; --json with another --format is refused, not ignored."""
    chosen = getattr(arguments, "format", None)
    if getattr(arguments, "json", False):
        if chosen not in (None, "json"):
            raise UsageError(f"--json asks for JSON and --format asks for {chosen}; give one of them")
        return "json"
    return chosen or "text"


def add_examples(parser: argparse.ArgumentParser, *lines: str) -> argparse.ArgumentParser:
    """Put examples under a command's help; tests/unit/test_cli_vocabulary.py
    parses each one, so an example never drifts from the command."""
    parser.epilog = "examples:\n" + "\n".join(textwrap.indent(line, "  ") for line in lines)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    return parser


def read_document(path: str) -> Any:
    """A YAML (.yaml, .yml) or JSON file."""
    file = Path(path)
    if not file.exists():
        raise CliError(errors.no_such_file(path))
    text = file.read_text()
    is_yaml = file.suffix in (".yaml", ".yml")
    try:
        return yaml.safe_load(text) if is_yaml else orjson.loads(text)
    except (yaml.YAMLError, orjson.JSONDecodeError) as error:
        raise CliError(f"{path} is not valid {'YAML' if is_yaml else 'JSON'}: {error}") from None


async def known_bu(pool: asyncpg.Pool, bu: str | None, option: str = "--bu") -> dict[str, str]:
    """Registered business units' display names by slug; a query about one that
    is not registered says so instead of printing zeros."""
    names = await metering_queries.display_names(pool)
    if bu is not None and bu not in names:
        raise CliError(errors.not_one_of(option, bu, sorted(names)))
    return names


def database(settings: Settings, size_max: int = 2) -> AbstractAsyncContextManager[asyncpg.Pool]:
    """A pool on the stack's database for one command, closed after it."""
    return pooled(settings.require_stack()[1], size_max=size_max)


T = TypeVar("T")


async def query(read: Callable[..., Awaitable[T]], *parameters: Any, **options: Any) -> T:
    """One read (a service's query, taking a pool first), on a pool opened for it."""
    async with database(load_settings(), size_max=1) as pool:
        return await read(pool, *parameters, **options)


async def show(arguments: argparse.Namespace, read: Callable[..., Awaitable[list[Any]]], columns: list[str], empty: str) -> int:
    """A listing command: the rows `read` returns, as JSON or a table (`empty` when there are none)."""
    rows = await query(read)
    if output_format(arguments) == "json":
        print(documents.json(rows))
    else:
        print(text.rows_table(rows, columns, load_settings().timezone) if rows else empty)
    return 0


Argument = tuple[tuple[str, ...], dict[str, Any]]
"""One argument of a command: the flags and options `add_argument` takes."""


def arg(*flags: str, **options: Any) -> Argument:
    return flags, options


def bu_option(*, required: bool = False, what: str = "the business unit") -> Argument:
    return arg("--bu", required=required, metavar="BU",
               help=f"{what}, by its id, for example taobao-tmall" + ("" if required else " (default: all)"))


def period_option(*, what: str = PERIOD_HELP, required: bool = False) -> Argument:
    return arg("--period", required=required, metavar="PERIOD", help=what)


def as_of_option(what: str = "as of this time") -> Argument:
    return arg("--as-of", metavar="TIME", help=f"{what}; {TIME_HELP} (default: now)")


def time_option(flag: str, dest: str, what: str, *, required: bool = False) -> Argument:
    return arg(flag, dest=dest, required=required, metavar="TIME", help=f"{what}; {TIME_HELP}")


def actions(subparsers: argparse._SubParsersAction, name: str, help_text: str) -> argparse._SubParsersAction:
    """A command whose first word after it is an action (`tokenhub invoice list`)."""
    return subparsers.add_parser(name, help=help_text).add_subparsers(dest="action", required=True)


def command(parent: argparse._SubParsersAction, name: str, help_text: str, handler: Any, *arguments: Argument,
            output: bool | tuple[str, ...] = False, change: bool = False, after: tuple[Argument, ...] = (),
            examples: tuple[str, ...] = (), **parser_options: Any) -> argparse.ArgumentParser:
    """A command: its own arguments in order, then --format/--json when it
    prints an `output` (True, or the formats beyond text and json), then
    --actor/--reason when it makes a `change`, the arguments `after` them, its
    examples and its handler."""
    parser = parent.add_parser(name, help=help_text, **parser_options)
    for flags, options in arguments:
        parser.add_argument(*flags, **options)
    if output is not False:
        add_output(parser, *(() if output is True else output))
    if change:
        add_change(parser)
    for flags, options in after:
        parser.add_argument(*flags, **options)
    add_examples(parser, *examples)
    parser.set_defaults(handler=handler)
    return parser
