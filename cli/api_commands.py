"""`tokenhub apikey create|list|revoke` and `tokenhub api serve|bench-quota`:
arguments and printing; the work is in `tokenhub.api`."""

from __future__ import annotations

import argparse
import getpass
import re
from datetime import datetime, timedelta

from tokenhub.api import bench, keys
from tokenhub.api.access import ROLES
from tokenhub.api.app import serve
from tokenhub.api.settings import ApiSettings
from tokenhub.cli import args
from tokenhub.cli.errors import CliError
from tokenhub.contracts.periods import PeriodError, parse_time
from tokenhub.infra.settings import load_settings
from tokenhub.views import documents, keys as views

_DURATION = re.compile(r"^(\d+)([dh])$")


def _expiry(text: str | None, now: datetime) -> datetime | None:
    if text is None:
        return None
    match = _DURATION.fullmatch(text)
    if match:
        amount, unit = int(match.group(1)), match.group(2)
        return now + (timedelta(days=amount) if unit == "d" else timedelta(hours=amount))
    try:
        return parse_time(text)
    except PeriodError as error:
        raise CliError(f"--expires {text!r}: a duration such as 90d or 12h, or an ISO time with zone ({error})") from None


async def apikey(arguments: argparse.Namespace) -> int:
    settings = load_settings()
    owner = arguments.owner or getpass.getuser() if arguments.action != "list" else ""
    now = datetime.now().astimezone()
    async with args.database(settings, size_max=1) as pool, pool.acquire() as connection:
        if arguments.action == "create":
            try:
                key_id, key = await keys.create(connection, arguments.role, arguments.bu, owner, arguments.reason, now,
                                                _expiry(arguments.expires, now))
            except (keys.KeyNotIssued, ValueError) as error:
                raise CliError(str(error)) from None
            print(documents.json({"key_id": key_id, "key": key, "role": arguments.role, "bu": arguments.bu, "owner": owner})
                  if args.output_format(arguments) == "json"
                  else views.created(key_id, key, arguments.role, arguments.bu, owner))
            return 0
        if arguments.action == "revoke":
            if not await keys.revoke(connection, arguments.key_id, now, f"{owner}: {arguments.reason}"):
                raise CliError(f"no active key {arguments.key_id}")
            print(f"revoked key {arguments.key_id}; the API refuses it within a second")
            return 0
        rows = await keys.listing(connection)
    print(documents.json(rows) if args.output_format(arguments) == "json" else views.listing(rows, settings.timezone))
    return 0


async def api_serve(arguments: argparse.Namespace) -> int:
    settings = load_settings()
    settings.require_stack()
    await serve(settings, ApiSettings())
    return 0


async def api_bench(arguments: argparse.Namespace) -> int:
    result = await bench.run(url=arguments.url, key=arguments.key, rate=arguments.rate, seconds=arguments.seconds,
                             payers_count=arguments.payers, postings_per_payer=arguments.postings)
    if args.output_format(arguments) == "json":
        print(documents.json(result.document()))
    else:
        print("\n".join(result.lines()))
    return 0 if result.errors == 0 else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    command, arg = args.command, args.arg
    actions = args.actions(subparsers, "apikey", "API keys for the HTTP API, with roles")
    command(actions, "create", "issue a key (shown once)", apikey,
            arg("--role", required=True, choices=ROLES, help=f"what the key may do: {', '.join(ROLES)}"),
            args.bu_option(what="the business unit a bu-reader key reads for"),
            arg("--owner", help="who holds it: the actor of every change it makes (default: your login name)"),
            arg("--expires", help="a duration (90d, 12h) or an ISO time with zone (default: never)"),
            arg("--reason", required=True, help="why the key is issued: kept with it for auditors"), output=True,
            examples=("tokenhub apikey create --role finance --reason 'month-end reports'",
                      "tokenhub apikey create --role bu-reader --bu taobao-tmall --expires 90d --reason dashboard --json"))
    command(actions, "list", "keys, their roles and state (never the keys themselves)", apikey, output=True,
            examples=("tokenhub apikey list", "tokenhub apikey list --json"))
    command(actions, "revoke", "revoke a key", apikey, arg("key_id", help="the key's id, as `tokenhub apikey list` shows it"),
            arg("--owner", help="who revokes it (default: your login name)"),
            arg("--reason", required=True, help="why it is revoked: kept with it for auditors"),
            examples=("tokenhub apikey revoke 3f9c2a1b --reason 'left the team'",))

    api = args.actions(subparsers, "api", "the HTTP API")
    command(api, "serve", "serve the API (TOKENHUB_API_PORT, default 8090)", api_serve, examples=("tokenhub api serve",))
    command(api, "bench-quota", "p50/p99 of the quota check at a steady request rate, and their "
            "ratio to a bare uvicorn app under the same load", api_bench,
            arg("--rate", type=float, default=1000.0, help="requests per second offered (default: 1000)"),
            arg("--seconds", type=float, default=20.0, help="how long to offer them (default: 20)"),
            arg("--payers", type=int, default=200, help="payers in the seeded quota state (default: 200)"),
            arg("--postings", type=int, default=100, help="postings per payer seeded on ledger.posted (default: 100)"),
            arg("--url", help="an API already running (default: start one on an embedded stack)"),
            arg("--key", help="its API key (with --url)"), output=True,
            examples=("tokenhub api bench-quota --rate 500 --seconds 10",))
