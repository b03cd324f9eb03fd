"""`tokenhub`: one CLI for people. Errors are one clear line and a non-zero exit."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import asyncpg
import structlog
from pydantic import ValidationError

from tokenhub.cli import commands, demo, stack
from tokenhub.cli.errors import CliError
from tokenhub.infra.settings import load_settings
from tokenhub.services.common.logging import configure_logging

EXIT_USAGE = 2
EXIT_FAILURE = 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tokenhub", description="Token Hub: AI usage metered in Tokens, priced, posted and billed.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("up", help="start the embedded stack and all four services in the foreground")
    run = sub.add_parser("run", help="run one service")
    run.add_argument("service", choices=stack.SERVICES)
    sub.add_parser("init", help="create topics and apply migrations")

    emit = sub.add_parser("emit", help="send usage events (JSON lines) or generate them")
    emit.add_argument("file", nargs="?", help="JSON-lines file of CloudEvents, - for stdin")
    emit.add_argument("--generate", type=int, metavar="N", help="generate N realistic events instead")
    emit.add_argument("--seed", type=int, default=7)
    emit.add_argument("--now", help="injected clock for generated events (ISO time with zone)")

    pricebook = sub.add_parser("pricebook", help="price books").add_subparsers(dest="action", required=True)
    publish = pricebook.add_parser("publish", help="validate and publish a price book version (YAML or JSON)")
    publish.add_argument("file")
    publish.add_argument("--retroactive", action="store_true", help="allow a version effective in the past")
    publish.add_argument("--actor", default=None)
    publish.add_argument("--reason", default="published from the CLI")

    registry = sub.add_parser("registry", help="business units, models, conversion tables and funding from a file")
    registry.add_argument("file")
    registry.add_argument("--actor", default=None)
    registry.add_argument("--reason", default="registered from the CLI")

    balance = sub.add_parser("balance", help="balances per business unit")
    balance.add_argument("bu", nargs="?")
    balance.add_argument("--as-of", help="ISO time with zone")
    balance.add_argument("--by", choices=("event-time", "posting-time"), default="event-time")
    balance.add_argument("--json", action="store_true")

    invoice = sub.add_parser("invoice", help="invoices").add_subparsers(dest="action", required=True)
    for name in ("list", "show"):
        command = invoice.add_parser(name)
        command.add_argument("bu", nargs="?")
        command.add_argument("--period", help="for example 2026-03")
        command.add_argument("--json", action="store_true")
    close = invoice.add_parser("close", help="close a period: issue its invoices")
    close.add_argument("period")
    close.add_argument("--actor", default=None)

    replay = sub.add_parser("replay", help="rebuild balances from the tokens.priced topic and diff them against the ledger")
    replay.add_argument("--bu")
    replay.add_argument("--json", action="store_true")
    replay.add_argument("--idle-timeout", type=float, default=3.0, help="seconds without records that end the read")

    demo_parser = sub.add_parser("demo", help="run the whole pipeline on a realistic day and print the results")
    demo_parser.add_argument("--events", type=int, default=demo.EVENTS_DEFAULT)
    demo_parser.add_argument("--seed", type=int, default=demo.SEED_DEFAULT)
    return parser


COMMANDS: dict[str, Callable[[argparse.Namespace], Coroutine[Any, Any, int] | int]] = {
    "up": stack.up,
    "run": stack.run_service,
    "init": stack.init,
    "emit": commands.emit,
    "pricebook": commands.pricebook,
    "registry": commands.registry,
    "balance": commands.balance,
    "invoice": commands.invoice,
    "replay": commands.replay,
    "demo": demo.run,
}


def main(argv: list[str] | None = None) -> int:
    arguments = _parser().parse_args(argv)
    configure_logging(load_settings())
    try:
        result = COMMANDS[arguments.command](arguments)
        code = asyncio.run(result) if asyncio.iscoroutine(result) else result
    except KeyboardInterrupt:
        return 130
    except (CliError, ValidationError, ValueError, OSError, RuntimeError, asyncpg.PostgresError) as error:
        print(f"tokenhub {arguments.command}: {_one_line(error)}", file=sys.stderr)
        return EXIT_FAILURE
    except Exception as error:  # noqa: BLE001 - a person gets one line; TOKENHUB_LOG_LEVEL=DEBUG shows the trace
        structlog.get_logger().debug("command_failed", exc_info=True)
        print(f"tokenhub {arguments.command}: unexpected {type(error).__name__}: {_one_line(error)}", file=sys.stderr)
        return EXIT_FAILURE
    return int(code or 0)


def _one_line(error: Exception) -> str:
    if isinstance(error, ValidationError):
        first = error.errors()[0]
        location = ".".join(str(part) for part in first["loc"])
        return f"invalid {location}: {first['msg']}" + (f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else "")
    return " ".join(str(error).split()) or type(error).__name__


if __name__ == "__main__":
    sys.exit(main())
