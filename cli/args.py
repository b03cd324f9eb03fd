"""What every command shares: times with zones, months, the actor and reason of
a change, documents read from files, `--json`, and the database a command
reads. Each is parsed here once, and a bad value becomes one clear line."""

from __future__ import annotations

import argparse
import getpass
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import yaml

from tokenhub.cli.errors import CliError
from tokenhub.contracts.periods import Period, PeriodError, containing, parse, parse_time
from tokenhub.infra.settings import Settings, clock
from tokenhub.services.common.db import create_pool

TIME_HELP = "ISO time with zone, for example 2026-03-14T12:00:00+08:00"


def moment(text: str | None, option: str) -> datetime | None:
    """An option's ISO time, which must name its zone (the one parser, `contracts.periods.parse_time`)."""
    if text is None:
        return None
    try:
        return parse_time(text)
    except PeriodError as error:
        raise CliError(f"{option} {error}") from None


def month(text: str | None, settings: Settings, why: str) -> Period:
    """A month by name (`2026-03`), this month by default; `why` says why it must be a month."""
    if text is None:
        return containing(clock(settings), "month", settings.timezone)
    try:
        period = parse(text, settings.timezone)
    except PeriodError as error:
        raise CliError(str(error)) from None
    if period.kind != "month":
        raise CliError(f"{why}: give a month such as 2026-03, not {text}")
    return period


def add_change(parser: argparse.ArgumentParser, *, reason_default: str | None = None) -> None:
    """--actor and --reason: who makes a change and why, kept with it (decision 12)."""
    parser.add_argument("--actor", default=None, help="who makes the change (default: the login name)")
    if reason_default is None:
        parser.add_argument("--reason", required=True, help="why: kept with the change")
    else:
        parser.add_argument("--reason", default=reason_default, help=f"why: kept with the change (default: {reason_default})")


def actor(arguments: argparse.Namespace) -> str:
    return getattr(arguments, "actor", None) or getpass.getuser()


def add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON of a stable shape")


def read_document(path: str) -> Any:
    """A YAML (.yaml, .yml) or JSON file."""
    file = Path(path)
    if not file.exists():
        raise CliError(f"no such file: {path}")
    text = file.read_text()
    is_yaml = file.suffix in (".yaml", ".yml")
    try:
        return yaml.safe_load(text) if is_yaml else orjson.loads(text)
    except (yaml.YAMLError, orjson.JSONDecodeError) as error:
        raise CliError(f"{path} is not valid {'YAML' if is_yaml else 'JSON'}: {error}") from None


@asynccontextmanager
async def database(settings: Settings, size_max: int = 2) -> AsyncIterator[asyncpg.Pool]:
    """A pool on the stack's database for one command, closed after it."""
    _, database_url = settings.require_stack()
    pool = await create_pool(database_url, size_max=size_max)
    try:
        yield pool
    finally:
        await pool.close()
