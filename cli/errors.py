"""How the CLI says what went wrong: one line, in the project's words, naming
the field and the fix. Every failure of one kind reads the same in every command."""

from __future__ import annotations

import re
from typing import Final

from pydantic import ValidationError

EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2
"""A command given the wrong arguments (as argparse and most tools do)."""


class CliError(Exception):
    """A failure the CLI reports in one line, with a non-zero exit."""


class UsageError(CliError):
    """The command line itself is wrong: exit 2, and a pointer to --help."""


def no_such_file(path: object) -> CliError:
    """The one wording for a file that is not there."""
    return CliError(f"no such file: {path}")


def not_one_of(what: str, given: object, choices: object) -> CliError:
    """The one wording for a value outside a known set: the choices are listed."""
    listed = ", ".join(str(choice) for choice in choices) or "none exist yet"  # type: ignore[attr-defined]
    return CliError(f"{what} {given} is not one of: {listed}")


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


_PYDANTIC_PREFIXES: Final = re.compile(r"^(Value error|Assertion failed), ")
_PYDANTIC_WORDS: Final = {
    "missing": "is required",
    "extra_forbidden": "is not a known field",
}


def _human(title: str) -> str:
    """`FundingAgreement` -> `funding agreement`."""
    return re.sub(r"(?<!^)(?=[A-Z])", " ", title).lower()


def _location(parts: tuple[int | str, ...]) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def validation_message(error: ValidationError) -> str:
    """A model's first complaint, as `what field: why` with pydantic's own framing removed."""
    first = error.errors()[0]
    field = _location(tuple(first["loc"]))
    reason = _PYDANTIC_WORDS.get(first["type"]) or _PYDANTIC_PREFIXES.sub("", first["msg"])
    reason = reason[:1].lower() + reason[1:]
    subject = f"{_human(error.title)} {field}" if field else _human(error.title)
    more = error.error_count() - 1
    return f"{subject}: {reason}" + (f" (and {more} more)" if more else "")


def one_line(error: BaseException) -> str:
    """Any failure as the one line a person reads."""
    if isinstance(error, ValidationError):
        return validation_message(error)
    if isinstance(error, FileNotFoundError) and error.filename is not None:
        return str(no_such_file(error.filename))
    if isinstance(error, OSError) and error.strerror and error.filename is not None:
        return f"{error.filename}: {error.strerror.lower()}"
    return " ".join(str(error).split()) or type(error).__name__
