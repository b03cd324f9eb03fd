"""How a failure reads for people: one line, in the project's words, naming the
field and the fix; every failure of one kind reads the same wherever it is shown."""

from __future__ import annotations

import re
from typing import Final

from pydantic import ValidationError

_PYDANTIC_PREFIXES: Final = re.compile(r"^(Value error|Assertion failed), ")
_PYDANTIC_WORDS: Final = {
    "missing": "is required",
    "extra_forbidden": "is not a known field",
}


def no_such_file(path: object) -> str:
    """The one wording for a file that is not there."""
    return f"no such file: {path}"


def not_one_of(what: str, given: object, choices: object) -> str:
    """The one wording for a value outside a known set: the choices are listed."""
    listed = ", ".join(str(choice) for choice in choices) or "none exist yet"  # type: ignore[attr-defined]
    return f"{what} {given} is not one of: {listed}"


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
        return no_such_file(error.filename)
    if isinstance(error, OSError) and error.strerror and error.filename is not None:
        return f"{error.filename}: {error.strerror.lower()}"
    return " ".join(str(error).split()) or type(error).__name__
