"""The one JSON form of every document a tool reads (README, "JSON outputs"):
amounts and Tokens as strings in plain notation, times in one RFC 3339 form,
ids as strings; views/outputs.py gives each document's schema."""

from __future__ import annotations

import base64
import dataclasses
import re
import uuid
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

import orjson
from pydantic import BaseModel

from tokenhub.views.text import timestamp

_ISO_TIME: Final = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})")
_INTEGER: Final = re.compile(r"-?\d+(\.0+)?")


def jsonable(value: Any, key: str = "") -> Any:
    """A value as every --json output writes it: amounts and Tokens as strings
    in plain notation (a field named for Tokens holds a whole number), times in
    the one RFC 3339 form, ids as strings (README, "JSON outputs")."""
    if isinstance(value, BaseModel):
        value = value.model_dump()
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {str(name): jsonable(item, str(name)) for name, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value) if isinstance(value, set | frozenset) else value
        return [jsonable(item, key) for item in items]
    if value is None or isinstance(value, bool):
        return value
    tokens = "tokens" in key
    if isinstance(value, int):
        return str(value) if tokens else value
    if isinstance(value, float):
        return value  # a measurement (seconds, a rate), never money or Tokens
    if isinstance(value, Decimal):
        return f"{value.to_integral_value():f}" if tokens and value == value.to_integral_value() else f"{value:f}"
    if isinstance(value, datetime):
        return timestamp(value)
    if isinstance(value, str):
        if _ISO_TIME.fullmatch(value):
            return timestamp(datetime.fromisoformat(value))
        if tokens and _INTEGER.fullmatch(value):
            return value.split(".")[0]
        return value
    if isinstance(value, uuid.UUID | Path | date):
        return str(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    raise TypeError(f"no JSON form for {type(value).__name__}")


def json(document: Any) -> str:
    """A --json document: indented, in the forms `jsonable` fixes."""
    return orjson.dumps(jsonable(document), option=orjson.OPT_INDENT_2).decode()
