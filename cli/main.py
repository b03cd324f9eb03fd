"""`tokenhub`: one CLI for people. Errors are one clear line and a non-zero exit."""

from __future__ import annotations

import argparse
import asyncio
import sys

import asyncpg
import structlog
import uvloop
from pydantic import ValidationError

from tokenhub.cli import api_commands, audit_commands, bench, commands, demo, invoicing_commands, metering_commands, pricing_commands, stack
from tokenhub.cli.errors import CliError
from tokenhub.infra.settings import load_settings
from tokenhub.services.common.logging import configure_logging
from tokenhub.services.common.runtime import collect_garbage_less_often

EXIT_FAILURE = 1

# Each module adds its commands with `register(subparsers)`, setting `handler`.
COMMAND_MODULES = (stack, commands, metering_commands, pricing_commands, invoicing_commands, audit_commands, bench, demo,
                   api_commands)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tokenhub", description="Token Hub: AI usage metered in Tokens, priced, posted and billed.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    arguments = _parser().parse_args(argv)
    configure_logging(load_settings())
    collect_garbage_less_often()
    try:
        result = arguments.handler(arguments)
        # uvloop: the services spend a tenth of their time in asyncio's own socket and selector code.
        code = uvloop.run(result) if asyncio.iscoroutine(result) else result
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
