"""Cursor paging: every list has a stable order, and a page's cursor is the
sort key of its last item, opaque to the client (base64url of JSON)."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Sequence
from typing import Any, Final, TypeVar

import orjson

PAGE_SIZE_DEFAULT: Final = 100
PAGE_SIZE_MAX: Final = 1_000
"""A page a tool can hold and a person can scroll; more is another request."""
CURSOR_LENGTH_MAX: Final = 2_000

T = TypeVar("T")


class BadCursor(ValueError):
    pass


def encode_cursor(key: Sequence[Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(list(key))).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> list[Any] | None:
    if cursor is None or cursor == "":
        return None
    if len(cursor) > CURSOR_LENGTH_MAX:
        raise BadCursor("cursor too long")
    try:
        value = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, orjson.JSONDecodeError, ValueError):
        raise BadCursor("not a cursor this API gave") from None
    if not isinstance(value, list) or not all(isinstance(part, str | int) and not isinstance(part, bool) for part in value):
        raise BadCursor("not a cursor this API gave")
    return value


def page(items: Sequence[T], key: Callable[[T], Sequence[Any]], after: list[Any] | None,
         limit: int) -> tuple[list[T], str | None]:
    """A page of `items` (in the order of `key`) after the cursor's key, and the
    next cursor, or None on the last page. For lists already in memory; the
    long ones (statements, rejected usage) page in SQL with the same cursor form."""
    ordered = sorted(items, key=lambda item: tuple(key(item)))
    if after is not None:
        bound = tuple(after)
        try:
            ordered = [item for item in ordered if tuple(key(item)) > bound]
        except TypeError:
            raise BadCursor("not a cursor of this list") from None
    chosen = ordered[:limit]
    more = len(ordered) > limit
    return chosen, (encode_cursor(key(chosen[-1])) if more and chosen else None)
