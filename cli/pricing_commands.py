"""Price books, parked consumption and retroactive repricing."""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Final

import orjson

from tokenhub.cli import render
from tokenhub.cli.commands import _actor, _read_document, build_book, publish_events
from tokenhub.cli.errors import CliError
from tokenhub.contracts.canonical import canonical_json
from tokenhub.contracts.events import PriceBookPublished, decode
from tokenhub.contracts.registry import ConversionTable
from tokenhub.contracts.topics import PRICEBOOK_PUBLISHED
from tokenhub.infra.settings import clock, load_settings
from tokenhub.services.common.db import create_pool
from tokenhub.services.common.kafka import create_producer
from tokenhub.services.common.outbox import relay
from tokenhub.services.pricing import handlers
from tokenhub.services.pricing.adapters import store
from tokenhub.services.pricing.domain import BookIndex, context_tier
from tokenhub.services.pricing.litellm import LiteLLMImportError, book_document
from tokenhub.services.pricing.validation import PriceBookInvalid, validate_book

SELECT_CONVERSION_TABLES: Final = "select version, effective_from, rules from metering.conversion_tables"


def _time(text: str | None, name: str) -> datetime | None:
    if text is None:
        return None
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise CliError(f"{name} {text} needs a time zone, for example {text}+08:00")
    return moment


async def _publish_book(document: dict[str, Any], arguments: argparse.Namespace) -> PriceBookPublished:
    settings = load_settings()
    book = build_book(document, settings, _actor(arguments), arguments.reason, arguments.retroactive)
    try:
        validate_book(book, settings.currency, clock(settings), retroactive=arguments.retroactive)
    except PriceBookInvalid as error:
        raise CliError(str(error)) from None
    await publish_events(settings, PRICEBOOK_PUBLISHED.name, [(book.book_id.encode(), canonical_json(book))])
    print(f"published price book {book.book_id} version {book.version} effective {book.effective_from.isoformat()} "
          f"({len(book.models)} models)")
    return book


async def publish(arguments: argparse.Namespace) -> int:
    await _publish_book(_read_document(arguments.file), arguments)
    return 0


async def _books() -> list[PriceBookPublished]:
    settings = load_settings()
    _, database_url = settings.require_stack()
    pool = await create_pool(database_url, size_max=1)
    try:
        async with pool.acquire() as connection:
            return [decode(PriceBookPublished, row["payload"]) for row in await connection.fetch(store.SELECT_BOOKS)]
    finally:
        await pool.close()


async def show(arguments: argparse.Namespace) -> int:
    settings = load_settings()
    at = _time(arguments.at, "--at") or clock(settings)
    index = BookIndex.of(await _books())
    models = sorted({entry.model for book in index.versions for entry in book.models})
    chosen = [arguments.model] if arguments.model else models
    found = []
    for model in chosen:
        book = index.in_force(model, at)
        if book is not None:
            found.append((book, book.price_for(model)))
    if not found:
        raise CliError(f"no price applies to {arguments.model or 'any model'} at {at.isoformat()}")
    if arguments.json:
        print(orjson.dumps([{"book_id": book.book_id, "version": book.version, "effective_from": book.effective_from.isoformat(),
                             "currency": book.currency, **price.model_dump(mode="json", exclude_none=True)}
                            for book, price in found], option=orjson.OPT_INDENT_2).decode())
        return 0
    for book, price in found:
        print(f"{price.model}: book {book.book_id} v{book.version}, effective {book.effective_from.isoformat()}, "
              f"{book.currency} per million Tokens" + (f" ({price.note})" if price.note else ""))
        rows = [["base", name, f"{amount:f}".rstrip("0").rstrip(".")] for name, amount in price.unit_prices_per_million.items()]
        rows += [[f"{tier.name} (input > {tier.above_input_tokens:,})", name, f"{amount:f}".rstrip("0").rstrip(".")]
                 for tier in price.context_tiers for name, amount in tier.unit_prices_per_million.items()]
        print(render.table(["tier", "class", "price"], rows, right={2}))
        for adjustment in price.bu_adjustments:
            print(f"  {adjustment.bu} pays x{adjustment.factor}")
        if price.period_tiers:
            print(f"  period tiers ({price.period_tiers.mode}): " + ", ".join(
                f"up to {tier.up_to_tokens or 'more'}: {tier.unit_price_per_million}/M + {tier.flat_fee}"
                for tier in price.period_tiers.tiers))
    return 0


async def import_litellm(arguments: argparse.Namespace) -> int:
    settings = load_settings()
    path = Path(arguments.file)
    if not path.exists():
        raise CliError(f"no such file: {arguments.file}")
    try:
        price_map = json.loads(path.read_text(), parse_float=Decimal)
        rate = Decimal(arguments.rate)
    except (json.JSONDecodeError, InvalidOperation) as error:
        raise CliError(f"cannot read {arguments.file} or --rate: {error}") from None
    if arguments.source_currency and arguments.source_currency != settings.currency and arguments.rate == "1":
        raise CliError(f"the list is in {arguments.source_currency}: give --rate to convert to {settings.currency}")
    effective_from = _time(arguments.effective_from, "--effective-from") or clock(settings)
    table = await _conversion_table(effective_from) if settings.database_url else None
    try:
        document = book_document(price_map, arguments.models.split(",") if arguments.models else None,
                                 book_id=arguments.book_id, version=arguments.version, effective_from=effective_from,
                                 currency=settings.currency, rate=rate, source_currency=arguments.source_currency,
                                 table=table)
    except LiteLLMImportError as error:
        raise CliError(str(error)) from None
    document = {key: value for key, value in document.items() if value is not None}
    if arguments.output:
        Path(arguments.output).write_text(json.dumps(document, indent=2) + "\n")
        print(f"wrote {arguments.output}: {len(document['models'])} models")
    if arguments.publish:
        await _publish_book(document, arguments)
    if not arguments.output and not arguments.publish:
        print(json.dumps(document, indent=2))
    return 0


async def _conversion_table(moment: datetime) -> ConversionTable | None:
    settings = load_settings()
    pool = await create_pool(settings.database_url or "", size_max=1)
    try:
        async with pool.acquire() as connection:
            tables = [ConversionTable(version=row["version"], effective_from=row["effective_from"], rules=row["rules"])
                      for row in await connection.fetch(SELECT_CONVERSION_TABLES)]
    finally:
        await pool.close()
    in_force = [table for table in tables if table.effective_from <= moment]
    return max(in_force, key=lambda table: (table.effective_from, table.version), default=None)


async def parked(arguments: argparse.Namespace) -> int:
    settings = load_settings()
    _, database_url = settings.require_stack()
    pool = await create_pool(database_url, size_max=1)
    try:
        async with pool.acquire() as connection:
            rows = [dict(row) for row in await connection.fetch(store.SELECT_PARKED)]
    finally:
        await pool.close()
    if arguments.json:
        print(orjson.dumps(rows, default=str, option=orjson.OPT_INDENT_2 | orjson.OPT_PASSTHROUGH_DATETIME).decode())
    elif not rows:
        print("nothing parked: every consumption has a price")
    else:
        print(render.table(["consumed id", "payer", "model", "event time", "why"],
                           [[str(row["consumed_id"]), row["payer_bu"], row["model"], row["event_time"].isoformat(),
                             row["reason"]] for row in rows], right=set()))
    return 0


async def reprice(arguments: argparse.Namespace) -> int:
    settings = load_settings()
    bootstrap_servers, database_url = settings.require_stack()
    start, end = _time(arguments.start, "--from"), _time(arguments.end, "--to")
    if start is None or end is None or start >= end:
        raise CliError("give --from T1 --to T2 with T1 before T2")
    pool = await create_pool(database_url, size_max=2)
    producer = create_producer(bootstrap_servers, client_id="tokenhub-reprice")
    await producer.start()
    try:
        examined, corrected = await handlers.reprice(pool, start, end, arguments.model)
        published = await relay(pool, producer, handlers.SCHEMA)
    finally:
        await producer.stop()
        await pool.close()
    print(f"examined {examined} priced consumptions; corrected {corrected} "
          f"({2 * corrected} events: a reversal and a correction each); published {published}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    books = subparsers.add_parser("pricebook", help="price books").add_subparsers(dest="action", required=True)
    command = books.add_parser("publish", help="validate and publish a price book version (YAML or JSON)")
    command.add_argument("file")
    command.add_argument("--retroactive", action="store_true", help="allow a version effective in the past")
    command.add_argument("--actor", default=None)
    command.add_argument("--reason", default="published from the CLI")
    command.set_defaults(handler=publish)
    command = books.add_parser("show", help="the prices that apply to a model at a time")
    command.add_argument("model", nargs="?")
    command.add_argument("--at", help="ISO time with zone (default now)")
    command.add_argument("--json", action="store_true")
    command.set_defaults(handler=show)
    command = books.add_parser("import-litellm", help="build a book from a LiteLLM model price map")
    command.add_argument("file")
    command.add_argument("--models", help="comma-separated model names (default: all)")
    command.add_argument("--rate", default="1", help="settlement currency per unit of the list's currency")
    command.add_argument("--source-currency", help="the list's currency, for example USD")
    command.add_argument("--book-id", default="litellm")
    command.add_argument("--version", type=int, default=1)
    command.add_argument("--effective-from")
    command.add_argument("--output", help="write the book here")
    command.add_argument("--publish", action="store_true", help="validate and publish it")
    command.add_argument("--retroactive", action="store_true")
    command.add_argument("--actor", default=None)
    command.add_argument("--reason", default="imported from a LiteLLM price map")
    command.set_defaults(handler=import_litellm)

    pricing = subparsers.add_parser("pricing", help="pricing state").add_subparsers(dest="action", required=True)
    command = pricing.add_parser("parked", help="consumption waiting for a price")
    command.add_argument("--json", action="store_true")
    command.set_defaults(handler=parked)

    command = subparsers.add_parser("reprice", help="reverse and correct Priced events after a retroactive book")
    command.add_argument("--from", dest="start", required=True)
    command.add_argument("--to", dest="end", required=True)
    command.add_argument("--model")
    command.set_defaults(handler=reprice)
