"""Price books, parked consumption and retroactive repricing."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Final


from tokenhub.cli import args, render
from tokenhub.cli.errors import CliError, UsageError
from tokenhub.contracts.canonical import canonical_json
from tokenhub.contracts.events import PriceBookPublished
from tokenhub.contracts.money import format_amount
from tokenhub.contracts.pricebook import book_from_document
from tokenhub.contracts.registry import ConversionTable
from tokenhub.contracts.topics import PRICEBOOK_PUBLISHED
from tokenhub.infra.pipeline import Timeout, wait_until
from tokenhub.infra.settings import clock, load_settings
from tokenhub.services.common.db import create_pool
from tokenhub.services.common.kafka import create_producer, send_events
from tokenhub.services.common.outbox import relay
from tokenhub.services.metering import queries as metering_queries
from tokenhub.services.pricing import handlers, queries
from tokenhub.services.pricing.litellm import LiteLLMImportError, import_book
from tokenhub.services.pricing.validation import PriceBookInvalid, validate_book

PUBLISH_CONFIRM_S: Final = 30.0  # pricing reads a new book within seconds; longer means it is not running


async def _publish_book(document: dict[str, Any], arguments: argparse.Namespace) -> PriceBookPublished:
    settings = load_settings()
    book = book_from_document(document, actor=args.actor(arguments), reason=arguments.reason,
                              retroactive=arguments.retroactive, published_at=clock(settings))
    try:
        validate_book(book, settings.currency, clock(settings), retroactive=arguments.retroactive)
    except PriceBookInvalid as error:
        raise CliError(str(error)) from None
    async with args.database(settings, size_max=1) as pool:
        existing = await queries.book_stored(pool, book.book_id, book.version)
        latest = await queries.latest_version(pool, book.book_id)
    if existing:
        raise CliError(f"version {book.version} of book {book.book_id} is already published and never changes; "
                       f"publish version {latest + 1} instead")
    await send_events(settings.require_stack()[0], PRICEBOOK_PUBLISHED.name, [(book.book_id.encode(), canonical_json(book))],
                      settings=settings)
    print(f"published price book {book.book_id} version {book.version} effective {book.effective_from.isoformat()} "
          f"({len(book.models)} models)")
    # Wait for pricing to store it, so a `tokenhub reprice` typed next sees the new version.
    async with args.database(settings, size_max=1) as pool:
        async def stored() -> bool:
            return await queries.book_stored(pool, book.book_id, book.version)
        try:
            await wait_until(stored, PUBLISH_CONFIRM_S, f"pricing to store {book.book_id} v{book.version}")
        except Timeout:
            print(f"pricing has not stored it within {PUBLISH_CONFIRM_S:.0f} s (is the pricing service running?); "
                  "it will when it reads pricebook.published", file=sys.stderr)
            return book
    print("pricing has stored it; parked consumption it prices is being priced")
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
        raise CliError(f"no price applies to {arguments.model or 'any model'} at {render.local(at, settings.timezone)}; "
                       "`tokenhub pricebook publish FILE` publishes one")
    if output == "json":
        print(render.json([{"book_id": book.book_id, "version": book.version, "effective_from": book.effective_from,
                            "currency": book.currency, **price.model_dump(exclude_none=True)} for book, price in found]))
        return 0
    for book, price in found:
        print(f"{price.model}: book {book.book_id} v{book.version}, effective {render.local(book.effective_from, settings.timezone)}, "
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
        # Numbers straight to Decimal: a binary float cannot hold 1.6e-06 exactly.
        price_map = json.loads(path.read_text(), parse_float=Decimal)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CliError(f"{arguments.file} is not a JSON price map: {error}") from None
    if not isinstance(price_map, dict):
        raise CliError(f"{arguments.file} is not a LiteLLM price map (an object of models)")
    try:
        rate = Decimal(arguments.rate)
    except InvalidOperation:
        raise CliError(f"--rate {arguments.rate} is not a decimal number") from None
    effective_from = args.moment(arguments.effective_from, "--effective-from") or clock(settings)
    table = await _conversion_table(effective_from) if settings.database_url else None
    models = [name.strip() for name in arguments.models.split(",") if name.strip()] if arguments.models else None
    try:
        imported = import_book(price_map, models, book_id=arguments.book_id, version=arguments.version,
                               effective_from=effective_from, currency=settings.currency, rate=rate,
                               source_currency=arguments.source_currency, table=table)
    except LiteLLMImportError as error:
        raise CliError(str(error)) from None
    for reason in imported.skipped.values():
        print(f"skipped: {reason}", file=sys.stderr)
    for model, keys in imported.ignored.items():
        print(f"{model}: left out {', '.join(keys)} (no such price in a book)", file=sys.stderr)
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


async def _conversion_table(moment: datetime) -> ConversionTable | None:
    # Only the database: the import works without a broker.
    pool = await create_pool(load_settings().database_url or "", size_max=1)
    try:
        return await metering_queries.conversion_table_at(pool, moment)
    finally:
        await pool.close()


async def parked(arguments: argparse.Namespace) -> int:
    if arguments.limit < 1:
        raise CliError("--limit must be at least 1")
    settings = load_settings()
    output = args.output_format(arguments)
    async with args.database(settings, size_max=1) as pool:
        rows, total = await queries.parked(pool, arguments.limit)
    if output == "json":
        print(render.json([{"consumed_id": row.consumed_id, "payer_bu": row.payer_bu, "model": row.model,
                            "event_time": row.event_time, "parked_at": row.parked_at, "reason": row.reason} for row in rows]))
    elif not rows:
        print("nothing parked: every consumption has a price")
    else:
        print(render.table(["consumed id", "payer", "model", "event time", "why"],
                           [[str(row.consumed_id), row.payer_bu, row.model, render.local(row.event_time, settings.timezone),
                             row.reason] for row in rows], right=set()))
        print(f"{total} parked" + (f", the first {len(rows)} shown (--limit)" if total > len(rows) else ""))
    return 0


async def reprice(arguments: argparse.Namespace) -> int:
    start, end = args.moment(arguments.start, "--from"), args.moment(arguments.end, "--to")
    if start is None or end is None or start >= end:
        raise CliError("--to must be after --from")
    settings = load_settings()
    bootstrap_servers, database_url = settings.require_stack()
    pool = await create_pool(database_url, size_max=2)
    producer = create_producer(bootstrap_servers, client_id="tokenhub-reprice")
    await producer.start()
    try:
        # Pricing's own code on pricing's own schema: the corrections are written
        # with their outbox rows in one transaction per page, then relayed, exactly
        # as the service publishes its Priced events (the service relays leftovers too).
        report = await handlers.reprice(pool, start, end, arguments.model,
                                        after_page=lambda: relay(pool, producer, handlers.SCHEMA))
        await relay(pool, producer, handlers.SCHEMA)
    finally:
        await producer.stop()
        await pool.close()
    if args.output_format(arguments) == "json":
        print(render.json({"examined": report.examined, "corrected": report.corrected, "events": 2 * report.corrected,
                           "unpriceable": report.unpriceable, "difference": report.difference}))
        return 0
    print(f"examined {report.examined} priced consumptions; corrected {report.corrected} "
          f"({2 * report.corrected} events: a reversal and a correction each); "
          f"spend changes by {format_amount(report.difference)} {settings.currency}")
    if report.unpriceable:
        print(f"{report.unpriceable} left as they were: the books in force no longer price them", file=sys.stderr)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    books = subparsers.add_parser("pricebook", help="price books").add_subparsers(dest="action", required=True)
    command = books.add_parser("publish", help="validate and publish a price book version (YAML or JSON)")
    command.add_argument("file", help="the book: book_id, version, effective_from, currency, models")
    command.add_argument("--retroactive", action="store_true",
                         help="allow a version effective in the past (then `tokenhub reprice` corrects what it changes)")
    args.add_change(command)
    args.examples(command, "tokenhub pricebook publish infra/demo/pricebook.yaml --retroactive --reason 'March prices'")
    command.set_defaults(handler=publish)
    command = books.add_parser("show", help="the prices that apply to a model at a time")
    command.add_argument("model", nargs="?", help="a model id (default: every model priced)")
    args.add_as_of(command, "the prices in force at this time")
    args.add_output(command)
    args.examples(command, "tokenhub pricebook show qwen-max", "tokenhub pricebook show --as-of 2026-03-01T00:00:00+08:00 --json")
    command.set_defaults(handler=show)
    command = books.add_parser("import-litellm", help="build a book from a LiteLLM model price map")
    command.add_argument("file", help="LiteLLM's model_prices_and_context_window.json")
    command.add_argument("--models", help="comma-separated model names (default: all)")
    command.add_argument("--rate", default="1", help="settlement currency per unit of the list's currency, for example 7.2")
    command.add_argument("--book-id", default="litellm", help="the new book's id (default: litellm)")
    command.add_argument("--version", type=int, default=1, help="the new book's version (default: 1)")
    command.add_argument("--effective-from", metavar="TIME",
                         help=f"when it takes effect (default: now); the conversion table in force then applies; {args.TIME_HELP}")
    command.add_argument("--source-currency", default="USD", help="the list's currency (default: USD, as LiteLLM's map is)")
    destination = command.add_mutually_exclusive_group()
    destination.add_argument("--output", help="write the book to this file (default: print it)")
    destination.add_argument("--publish", action="store_true", help="validate and publish it")
    command.add_argument("--retroactive", action="store_true", help="with --publish: allow an effective time in the past")
    command.add_argument("--actor", default=None, help="with --publish: who publishes it (default: your login name)")
    command.add_argument("--reason", default=None, help="with --publish: why, kept with the book")
    args.examples(command, "tokenhub pricebook import-litellm prices.json --models qwen-max-intl --rate 7.2 --output book.json",
                  "tokenhub pricebook import-litellm prices.json --rate 7.2 --publish --reason 'list prices'")
    command.set_defaults(handler=import_litellm)

    pricing = subparsers.add_parser("pricing", help="pricing state").add_subparsers(dest="action", required=True)
    command = pricing.add_parser("parked", help="consumption waiting for a price")
    command.add_argument("--limit", type=int, default=queries.PARKED_SHOWN_MAX,
                         help=f"rows shown, oldest first (default: {queries.PARKED_SHOWN_MAX})")
    args.add_output(command)
    args.examples(command, "tokenhub pricing parked", "tokenhub pricing parked --limit 10 --json")
    command.set_defaults(handler=parked)

    command = subparsers.add_parser("reprice", help="reverse and correct Priced events after a retroactive book")
    command.add_argument("--from", dest="start", required=True, metavar="TIME", help=f"from this event time; {args.TIME_HELP}")
    command.add_argument("--to", dest="end", required=True, metavar="TIME", help=f"to this event time (exclusive); {args.TIME_HELP}")
    command.add_argument("--model", help="only this model (default: every model)")
    args.add_output(command)
    args.examples(command, "tokenhub reprice --from 2026-03-01T00:00:00+08:00 --to 2026-04-01T00:00:00+08:00 --model qwen-max")
    command.set_defaults(handler=reprice)
