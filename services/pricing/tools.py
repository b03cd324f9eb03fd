"""Pricing's operations for tools (the CLI, the HTTP API, tests): publish a
price book version and wait until pricing has stored it, read a LiteLLM price
map, and reprice a window after a retroactive book (pricing's own code on its
own schema, published as the service publishes)."""

from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

from tokenhub.contracts.canonical import canonical_json
from tokenhub.contracts.events import PriceBookPublished
from tokenhub.contracts.topics import PRICEBOOK_PUBLISHED
from tokenhub.infra.pipeline import Timeout, wait_until
from tokenhub.infra.settings import Settings, clock
from tokenhub.services.common.db import create_pool
from tokenhub.services.common.kafka import create_producer, send_events
from tokenhub.services.common.outbox import relay
from tokenhub.services.pricing import handlers, queries
from tokenhub.services.pricing.handlers import RepriceReport
from tokenhub.services.pricing.validation import validate_book

PUBLISH_CONFIRM_S: Final = 30.0
"""Pricing reads a new book within seconds; longer means it is not running."""


class BookExists(ValueError):
    """This version of the book is published already: versions never change."""


class PriceMapError(ValueError):
    """A file that is not a LiteLLM price map."""


async def publish_book(settings: Settings, book: PriceBookPublished, *, retroactive: bool) -> None:
    """Validate a book version (raises `PriceBookInvalid`), refuse one already
    published (`BookExists`), and publish it on pricebook.published."""
    validate_book(book, settings.currency, clock(settings), retroactive=retroactive)
    pool = await create_pool(settings.require_stack()[1], size_max=1)
    try:
        existing = await queries.book_stored(pool, book.book_id, book.version)
        latest = await queries.latest_version(pool, book.book_id)
    finally:
        await pool.close()
    if existing:
        raise BookExists(f"version {book.version} of book {book.book_id} is already published and never changes; "
                         f"publish version {(latest or 0) + 1} instead")
    await send_events(settings.require_stack()[0], PRICEBOOK_PUBLISHED.name, [(book.book_id.encode(), canonical_json(book))],
                      settings=settings)


async def book_stored(settings: Settings, book: PriceBookPublished, timeout_s: float = PUBLISH_CONFIRM_S) -> bool:
    """Whether pricing has stored this version within `timeout_s` (a `tokenhub
    reprice` after that sees it)."""
    pool = await create_pool(settings.require_stack()[1], size_max=1)
    try:
        async def stored() -> bool:
            return await queries.book_stored(pool, book.book_id, book.version)
        await wait_until(stored, timeout_s, f"pricing to store {book.book_id} v{book.version}")
        return True
    except Timeout:
        return False
    finally:
        await pool.close()


def read_price_map(path: Path, shown: str) -> dict[str, Any]:
    """A LiteLLM price map, its numbers read straight to Decimal (a binary
    float cannot hold 1.6e-06 exactly); `shown` names the file in errors."""
    if not path.exists():
        raise PriceMapError(f"no such file: {shown}")
    try:
        price_map = json.loads(path.read_text(), parse_float=Decimal)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise PriceMapError(f"{shown} is not a JSON price map: {error}") from None
    if not isinstance(price_map, dict):
        raise PriceMapError(f"{shown} is not a LiteLLM price map (an object of models)")
    return price_map


async def reprice(settings: Settings, start: datetime, end: datetime, model: str | None) -> RepriceReport:
    """Reverse and correct the Priced of [start, end) that the books in force
    now price differently. The corrections are written with their outbox rows in
    one transaction per page, then relayed, exactly as the service publishes its
    Priced events (the service relays leftovers too)."""
    bootstrap_servers, database_url = settings.require_stack()
    pool = await create_pool(database_url, size_max=2)
    producer = create_producer(bootstrap_servers, client_id="tokenhub-reprice")
    await producer.start()
    try:
        report = await handlers.reprice(pool, start, end, model, after_page=lambda: relay(pool, producer, handlers.SCHEMA))
        await relay(pool, producer, handlers.SCHEMA)
    finally:
        await producer.stop()
        await pool.close()
    return report
