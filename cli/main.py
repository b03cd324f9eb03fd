"""`tokenhub`: one CLI for people. Errors are one clear line and a non-zero
exit; what the services and the library log goes to a file, so the terminal
shows only what the command has to say."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Final, NoReturn

import asyncpg
import structlog
import uvloop
from pydantic import ValidationError

from tokenhub.cli import (
    api_commands,
    audit_commands,
    bench,
    demo,
    invoicing_commands,
    ledger_commands,
    metering_commands,
    pricing_commands,
    stack,
)
from tokenhub.cli.errors import EXIT_FAILURE, EXIT_USAGE, CliError, UsageError, usage_message
from tokenhub.infra.deployment import adopt_recorded_currency
from tokenhub.infra.settings import load_settings
from tokenhub.services.common.logging import LogFile, configure_logging
from tokenhub.services.common.runtime import collect_garbage_less_often
from tokenhub.views.errors import one_line

EXIT_BROKEN_PIPE: Final = 128 + 13
"""What a shell reports for a process ended by SIGPIPE: the reader went away."""
LOG_TO_TERMINAL: Final = ("run", "init")
"""Commands that are a service or a deployment step: their logs are their output
(JSON lines in a container). Every other command logs to LOG_FILE."""
LOG_FILE: Final = Path("logs") / "tokenhub.log"
"""Under the state folder (`.tokenhub/`), beside the services' own logs."""

# Each module adds its commands with `register(subparsers)`, setting `handler`.
COMMAND_MODULES = (stack, metering_commands, pricing_commands, ledger_commands, invoicing_commands, audit_commands, bench,
                   demo, api_commands)


class Parser(argparse.ArgumentParser):
    """argparse, whose complaints become one line in the project's words,
    naming the command they are about and where its help is."""

    def error(self, message: str) -> NoReturn:
        choices = next((action.choices for action in self._actions
                        if isinstance(action, argparse._SubParsersAction)), None)
        if choices and message.startswith("the following arguments are required"):
            message = f"say what to do: one of {', '.join(choices)}"  # type: ignore[arg-type]
        elif choices and "invalid choice" in message:
            given = message.split("'")[1]
            message = f"{given} is not a command here; one of {', '.join(choices)}"  # type: ignore[arg-type]
        raise UsageError(f"{self.prog}: {usage_message(message)} (see `{self.prog} --help`)")

    def parse_args(self, args=None, namespace=None):  # noqa: ANN001, ANN201 - argparse's own signature
        arguments, extras = self.parse_known_args(args, namespace)
        if extras:
            prog = " ".join(["tokenhub", *(str(getattr(arguments, name)) for name in ("command", "action")
                                           if getattr(arguments, name, None))])
            raise UsageError(f"{prog}: {' '.join(extras)} is not an argument of this command (see `{prog} --help`)")
        return arguments


def _parser() -> Parser:
    parser = Parser(prog="tokenhub", description="Token Hub: AI usage metered in Tokens, priced, posted and billed.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(subparsers)
    return parser


CURRENCY_RECORDED_BY: Final = frozenset({"up", "init"})
"""Commands that record the settlement currency (infra.boot); every other one,
the services included, takes it from the database."""


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        # The reader (`head`, a pager) has what it wanted: end quietly, and keep
        # Python from complaining when it flushes stdout on the way out.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def _main(argv: list[str] | None) -> int:
    try:
        arguments = _parser().parse_args(argv)
    except UsageError as error:
        print(error, file=sys.stderr)
        return EXIT_USAGE
    settings = load_settings()
    if arguments.command not in CURRENCY_RECORDED_BY:
        settings = adopt_recorded_currency(settings)
    log_file = Path(settings.state_dir) / LOG_FILE
    configure_logging(settings, stream=None if arguments.command in LOG_TO_TERMINAL else LogFile(log_file))
    collect_garbage_less_often()
    try:
        result = arguments.handler(arguments)
        # uvloop: the services spend a tenth of their time in asyncio's own socket and selector code.
        code = uvloop.run(result) if asyncio.iscoroutine(result) else result
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        raise
    except UsageError as error:
        print(f"{_command(arguments)}: {error} (see `{_command(arguments)} --help`)", file=sys.stderr)
        return EXIT_USAGE
    except (CliError, ValidationError, ValueError, OSError, RuntimeError, asyncpg.PostgresError) as error:
        print(f"{_command(arguments)}: {one_line(error)}", file=sys.stderr)
        return EXIT_FAILURE
    except Exception as error:  # noqa: BLE001 - a person gets one line; the trace goes to the log file
        structlog.get_logger().error("command_failed", command=arguments.command, exc_info=True)
        print(f"{_command(arguments)}: unexpected {type(error).__name__}: {one_line(error)} "
              f"(the trace is in {log_file})", file=sys.stderr)
        return EXIT_FAILURE
    return int(code or 0)


def _command(arguments: argparse.Namespace) -> str:
    """`tokenhub invoice show`: the words a person typed to name the command."""
    return " ".join(["tokenhub", arguments.command, *([arguments.action] if isinstance(getattr(arguments, "action", None), str)
                                                      else [])])


if __name__ == "__main__":
    sys.exit(main())
