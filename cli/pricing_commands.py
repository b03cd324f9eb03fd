"""Price books, parked consumption and retroactive repricing."""

from __future__ import annotations

import argparse
import json
import sys
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from tokenhub.cli import args
from tokenhub.cli.errors import CliError, UsageError
from tokenhub.contracts.events import PriceBookPublished
from tokenhub.contracts.pricebook import book_from_document
from tokenhub.infra.settings import clock, load_settings
from tokenhub.services.metering import tools as metering_tools
from tokenhub.services.pricing import queries, tools
from tokenhub.services.pricing.litellm import LiteLLMImportError, import_book
from tokenhub.services.pricing.validation import PriceBookInvalid
from tokenhub.views import documents, pricing as views, text


async def _publish_book(document: dict[str, Any], arguments: argparse.Namespace) -> PriceBookPublished:
    settings = load_settings()
    book = book_from_document(document, actor=args.actor(arguments), reason=arguments.reason,
                              retroactive=arguments.retroactive, published_at=clock(settings))
    try:
        await tools.publish_book(settings, book, retroactive=arguments.retroactive)
    except (PriceBookInvalid, tools.BookExists) as error:
        raise CliError(str(error)) from None
    print(views.book_published(book))
    # Wait for pricing to store it, so a `tokenhub reprice` typed next sees the new version.
    stored = await tools.book_stored(settings, book)
    print(views.book_stored(stored, tools.PUBLISH_CONFIRM_S), file=sys.stdout if stored else sys.stderr)
    return book


async def publish(arguments: argparse.Namespace) -> int:
    await _publish_book(args.read_document(arguments.file), arguments)
    return 0


async def show(arguments: argparse.Namespace) -> int:
    settings = load_settings()
    output = args.output_format(arguments)
    at = args.moment(arguments.as_of, "--as-of") or clock(settings)
    async with args.database(settings, size_max=1) as pool:
        found = await queries.prices_in_force(pool, at, arguments.model)
    if not found:
        raise CliError(f"no price applies to {arguments.model or 'any model'} at {text.local(at, settings.timezone)}; "
                       "`tokenhub pricebook publish FILE` publishes one")
    if output == "json":
        print(documents.json(views.prices_document(found)))
        return 0
    print(views.prices(found, settings.timezone))
    return 0


async def import_litellm(arguments: argparse.Namespace) -> int:
    settings = load_settings()
    try:
        price_map = tools.read_price_map(Path(arguments.file), arguments.file)
    except tools.PriceMapError as error:
        raise CliError(str(error)) from None
    try:
        rate = Decimal(arguments.rate)
    except InvalidOperation:
        raise CliError(f"--rate {arguments.rate} is not a decimal number") from None
    effective_from = args.moment(arguments.effective_from, "--effective-from") or clock(settings)
    table = await metering_tools.conversion_table_at(settings.database_url, effective_from) if settings.database_url else None
    models = [name.strip() for name in arguments.models.split(",") if name.strip()] if arguments.models else None
    try:
        imported = import_book(price_map, models, book_id=arguments.book_id, version=arguments.version,
                               effective_from=effective_from, currency=settings.currency, rate=rate,
                               source_currency=arguments.source_currency, table=table)
    except LiteLLMImportError as error:
        raise CliError(str(error)) from None
    for line in views.left_out(imported):
        print(line, file=sys.stderr)
    document = imported.document
    if arguments.output:
        Path(arguments.output).write_text(json.dumps(document, indent=2) + "\n")
        print(f"wrote {arguments.output}: {len(document['models'])} models")
    elif arguments.publish:
        if not arguments.reason:
            raise UsageError("--publish needs --reason: why the book is published")
        await _publish_book(document, arguments)
    else:
        print(json.dumps(document, indent=2))
    return 0


async def parked(arguments: argparse.Namespace) -> int:
    if arguments.limit < 1:
        raise CliError("--limit must be at least 1")
    settings = load_settings()
    output = args.output_format(arguments)
    async with args.database(settings, size_max=1) as pool:
        rows, total = await queries.parked(pool, arguments.limit)
    if output == "json":
        print(documents.json(views.parked_document(rows)))
    else:
        print(views.parked(rows, total, settings.timezone) if rows else "nothing parked: every consumption has a price")
    return 0


async def reprice(arguments: argparse.Namespace) -> int:
    start, end = args.moment(arguments.start, "--from"), args.moment(arguments.end, "--to")
    if start is None or end is None or start >= end:
        raise CliError("--to must be after --from")
    settings = load_settings()
    report = await tools.reprice(settings, start, end, arguments.model)
    if args.output_format(arguments) == "json":
        print(documents.json(views.repriced_document(report)))
        return 0
    print(views.repriced(report, settings.currency))
    if report.unpriceable:
        print(f"{report.unpriceable} left as they were: the books in force no longer price them", file=sys.stderr)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    command, arg = args.command, args.arg
    books = args.actions(subparsers, "pricebook", "price books")
    command(books, "publish", "validate and publish a price book version (YAML or JSON)", publish,
            arg("file", help="the book: book_id, version, effective_from, currency, models"),
            arg("--retroactive", action="store_true",
                help="allow a version effective in the past (then `tokenhub reprice` corrects what it changes)"), change=True,
            examples=("tokenhub pricebook publish infra/demo/pricebook.yaml --retroactive --reason 'March prices'",))
    command(books, "show", "the prices that apply to a model at a time", show,
            arg("model", nargs="?", help="a model id (default: every model priced)"),
            args.as_of_option("the prices in force at this time"), output=True,
            examples=("tokenhub pricebook show qwen-max", "tokenhub pricebook show --as-of 2026-03-01T00:00:00+08:00 --json"))
    litellm = command(
        books, "import-litellm", "build a book from a LiteLLM model price map", import_litellm,
        arg("file", help="LiteLLM's model_prices_and_context_window.json"),
        arg("--models", help="comma-separated model names (default: all)"),
        arg("--rate", default="1", help="settlement currency per unit of the list's currency, for example 7.2"),
        arg("--book-id", default="litellm", help="the new book's id (default: litellm)"),
        arg("--version", type=int, default=1, help="the new book's version (default: 1)"),
        args.time_option("--effective-from", "effective_from",
                         "when it takes effect (default: now); the conversion table in force then applies"),
        arg("--source-currency", default="USD", help="the list's currency (default: USD, as LiteLLM's map is)"),
        examples=("tokenhub pricebook import-litellm prices.json --models qwen-max-intl --rate 7.2 --output book.json",
                  "tokenhub pricebook import-litellm prices.json --rate 7.2 --publish --reason 'list prices'"))
    destination = litellm.add_mutually_exclusive_group()
    destination.add_argument("--output", help="write the book to this file (default: print it)")
    destination.add_argument("--publish", action="store_true", help="validate and publish it")
    litellm.add_argument("--retroactive", action="store_true", help="with --publish: allow an effective time in the past")
    litellm.add_argument("--actor", default=None, help="with --publish: who publishes it (default: your login name)")
    litellm.add_argument("--reason", default=None, help="with --publish: why, kept with the book")

    command(args.actions(subparsers, "pricing", "pricing state"), "parked", "consumption waiting for a price", parked,
            arg("--limit", type=int, default=queries.PARKED_SHOWN_MAX,
                help=f"rows shown, oldest first (default: {queries.PARKED_SHOWN_MAX})"), output=True,
            examples=("tokenhub pricing parked", "tokenhub pricing parked --limit 10 --json"))
    command(subparsers, "reprice", "reverse and correct Priced events after a retroactive book", reprice,
            args.time_option("--from", "start", "from this event time", required=True),
            args.time_option("--to", "end", "to this event time (exclusive)", required=True),
            arg("--model", help="only this model (default: every model)"), output=True,
            examples=("tokenhub reprice --from 2026-03-01T00:00:00+08:00 --to 2026-04-01T00:00:00+08:00 --model qwen-max",))
