"""Deterministic ids: uuid5 over a fixed namespace and the event's cause
(docs/architecture.md decision 9), so reprocessing yields the same id."""

from __future__ import annotations

import hashlib
import re
import uuid
from typing import Annotated, Final

from pydantic import AfterValidator

NAMESPACE: Final = uuid.UUID("6f1c3d1e-7a52-5b8e-9a7c-2d4e0b5f9c11")
"""The Token Hub namespace. Never change it: every derived id depends on it."""

_SEPARATOR: Final = "\x1f"  # ASCII unit separator: cannot appear in slugs or ids we accept
_SLUG: Final = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
SLUG_LENGTH_MAX: Final = 64


def derive_id(*parts: str) -> uuid.UUID:
    """The id of a derived event from the parts of its cause, in order: exactly
    `uuid.uuid5(NAMESPACE, parts joined by the unit separator)`."""
    name = _SEPARATOR.join(parts)
    if name.count(_SEPARATOR) != len(parts) - 1:
        raise ValueError("id parts must not contain the unit separator")
    return _uuid5(name)


_NAMESPACE_BYTES: Final = NAMESPACE.bytes
_VERSION_CLEAR: Final = ~((0xF000 << 64) | (0xC000 << 48))
_VERSION_5_RFC_4122: Final = (5 << 76) | (0x8000 << 48)


def _uuid5(name: str) -> uuid.UUID:
    """`uuid.uuid5(NAMESPACE, name)` without `UUID.__init__`'s argument parsing,
    which cost more than the hash itself: metering and the ledger derive a few
    ids per event. A unit test holds it equal to the standard library's."""
    digest = hashlib.sha1(_NAMESPACE_BYTES + name.encode(), usedforsecurity=False).digest()
    value = (int.from_bytes(digest[:16], "big") & _VERSION_CLEAR) | _VERSION_5_RFC_4122
    result = object.__new__(uuid.UUID)
    object.__setattr__(result, "int", value)
    object.__setattr__(result, "is_safe", uuid.SafeUUID.unknown)
    return result


def consumed_id(usage_source: str, usage_id: str, payer_bu: str) -> uuid.UUID:
    return derive_id("usage", usage_source, usage_id, "consumed", payer_bu)


def priced_id(consumed: uuid.UUID, book_id: str, book_version: int | None, kind: str = "charge") -> uuid.UUID:
    """Charges depend only on their consumption (one price per consumption);
    corrections and reversals also name the book version that caused them."""
    if kind == "charge":
        return derive_id("priced", str(consumed))
    return derive_id("priced", str(consumed), kind, book_id, str(book_version))


def posted_id(priced: uuid.UUID | str) -> uuid.UUID:
    """The id of the `LedgerPosted` that posts a Priced: the ledger posts each
    Priced once, so a reader finds a Priced's event (invoicing: its posting) by
    key."""
    return derive_id("posted", str(priced))


_SLUGS_SEEN: set[str] = set()
SLUGS_SEEN_MAX: Final = 10_000
"""Slugs already checked, so each event's business units cost a set lookup: a
company has hundreds of BUs; the bound keeps a flood of new names from growing it."""


def check_slug(value: str) -> str:
    if value in _SLUGS_SEEN:
        return value
    if len(value) > SLUG_LENGTH_MAX or not _SLUG.fullmatch(value):
        raise ValueError(f"{value!r} is not a slug (lower-case letters, digits and single dashes)")
    if len(_SLUGS_SEEN) < SLUGS_SEEN_MAX:
        _SLUGS_SEEN.add(value)
    return value


BuId = Annotated[str, AfterValidator(check_slug)]
"""A business unit id: a slug such as `taobao-tmall`."""
