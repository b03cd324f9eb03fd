"""How the CLI says what went wrong: one line and a non-zero exit; argparse's
complaints in the project's words. The wording of other failures is
`tokenhub.views.errors`, so every failure of one kind reads the same everywhere."""

from __future__ import annotations

import re
from typing import Final

EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2
"""A command given the wrong arguments (as argparse and most tools do)."""


class CliError(Exception):
    """A failure the CLI reports in one line, with a non-zero exit."""


class UsageError(CliError):
    """The command line itself is wrong: exit 2, and a pointer to --help."""


_ARGPARSE: Final = (
    (re.compile(r"argument (?P<name>\S+?)(/\S+)?: invalid choice: '(?P<given>[^']*)' \(choose from (?P<choices>.*)\)"),
     lambda match: f"{_option(match['name'])} {match['given']} is not one of: {match['choices'].replace(chr(39), '')}"),
    (re.compile(r"argument (?P<name>\S+?)(/\S+)?: invalid (?P<kind>int|float|\w+) value: '(?P<given>[^']*)'"),
     lambda match: f"{_option(match['name'])} {match['given']} is not {_KINDS.get(match['kind'], 'valid')}"),
    (re.compile(r"argument (?P<name>\S+?)(/\S+)?: expected one argument"),
     lambda match: f"{_option(match['name'])} needs a value"),
    (re.compile(r"the following arguments are required: (?P<names>.*)"),
     lambda match: f"missing {', '.join(_option(name) for name in match['names'].split(', '))}"),
    (re.compile(r"unrecognized arguments: (?P<given>.*)"),
     lambda match: f"{match['given']} is not an argument of this command"),
    (re.compile(r"argument (?P<name>\S+?)(/\S+)?: not allowed with argument (?P<other>\S+?)(/\S+)?$"),
     lambda match: f"{_option(match['name'])} and {_option(match['other'])} cannot be combined"),
)
_KINDS: Final = {"int": "a whole number", "float": "a number"}


def _option(name: str) -> str:
    return name if name.startswith("-") else name.upper()


def usage_message(message: str) -> str:
    """argparse's message in the project's words (the rest of argparse's are kept)."""
    for pattern, render in _ARGPARSE:
        match = pattern.fullmatch(message.strip())
        if match:
            return render(match)
    return message
