"""CLI commands that publish configuration, send usage and read state."""

from __future__ import annotations

import argparse
import getpass
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import yaml

from tokenhub.cli import render
from tokenhub.cli.errors import CliError
from tokenhub.client import UsageClient
from tokenhub.contracts.canonical import canonical_json
from tokenhub.contracts.events import PriceBookPublished
from tokenhub.contracts.ids import derive_id
from tokenhub.contracts.periods import parse
from tokenhub.contracts.registry import PAYLOAD_MODELS, registry_change
from tokenhub.contracts.topics import REGISTRY_CHANGED
from tokenhub.infra.settings import Settings, clock, load_settings
from tokenhub.services.common.db import create_pool
from tokenhub.services.common.kafka import create_producer, usage_client_options
from tokenhub.services.common.outbox import relay
from tokenhub.services.invoicing import queries as invoicing_queries
from tokenhub.services.invoicing.domain import PeriodNotEnded, what_follows_an_early_close
from tokenhub.services.invoicing.handlers import SCHEMA as INVOICING_SCHEMA, close_period
from tokenhub.services.ledger import queries as ledger_queries
from tokenhub.services.metering import queries as metering_queries


def _actor(arguments: argparse.Namespace) -> str:
    return getattr(arguments, "actor", None) or getpass.getuser()


def _read_document(path: str) -> Any:
    file = Path(path)
    if not file.exists():
        raise CliError(f"no such file: {path}")
    text = file.read_text()
    try:
        return yaml.safe_load(text) if file.suffix in (".yaml", ".yml") else orjson.loads(text)
    except (yaml.YAMLError, orjson.JSONDecodeError) as error:
        raise CliError(f"{path} is not valid {'YAML' if file.suffix in ('.yaml', '.yml') else 'JSON'}: {error}") from None


async def publish_events(settings: Settings, topic: str, events: list[tuple[bytes, bytes]]) -> None:
    bootstrap_servers, _ = settings.require_stack()
    producer = create_producer(bootstrap_servers, client_id="tokenhub-cli", settings=settings)
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=key) for key, value in events]
        for future in futures:
            await future
    finally:
        await producer.stop()


def build_book(document: dict[str, Any], settings: Settings, actor: str, reason: str, retroactive: bool) -> PriceBookPublished:
    now = clock(settings)
    book_id = str(document.get("book_id", ""))
    version = document.get("version")
    return PriceBookPublished.model_validate({
        **document,
        "id": str(derive_id("pricebook", book_id, str(version))),
        "event_time": document.get("effective_from"),
        "cause_id": f"{actor}:{book_id}:{version}",
        "retroactive": retroactive,
        "actor": actor,
        "reason": document.get("reason", reason),
        "published_at": now,
    })


def registry_events(document: dict[str, Any], actor: str, reason: str, at: datetime) -> list[tuple[bytes, bytes]]:
    sections = {"business_units": "business_unit", "models": "model", "conversion_tables": "conversion_table",
                "funding_agreements": "funding_agreement"}
    unknown = set(document) - set(sections)
    if unknown:
        raise CliError(f"unknown sections {sorted(unknown)}; expected {sorted(sections)}")
    events = []
    for section, kind in sections.items():
        for item in document.get(section) or []:
            entity = PAYLOAD_MODELS[kind].model_validate(item)
            entity_id = str(item.get("bu_id") or item.get("model_id") or item.get("agreement_id") or item.get("version"))
            change = registry_change(kind, entity, entity_id, actor, reason, at)  # type: ignore[arg-type]
            events.append((entity_id.encode(), canonical_json(change)))
    return events


async def registry(arguments: argparse.Namespace) -> int:
    settings = load_settings()
    events = registry_events(_read_document(arguments.file), _actor(arguments), arguments.reason, clock(settings))
    await publish_events(settings, REGISTRY_CHANGED.name, events)
    print(f"published {len(events)} registry changes")
    return 0


async def emit(arguments: argparse.Namespace) -> int:
    from tokenhub.cli.demo import generate_usage

    settings = load_settings()
    bootstrap_servers, _ = settings.require_stack()
    if arguments.generate:
        now = datetime.fromisoformat(arguments.now) if arguments.now else clock(settings)
        values = [(event.data.consumer_bu.encode(), canonical_json(event))
                  for event in generate_usage(arguments.generate, seed=arguments.seed, day_end=now)]
    elif arguments.file:
        stream = sys.stdin if arguments.file == "-" else Path(arguments.file).open()
        values = []
        with stream:
            for number, line in enumerate(stream, start=1):
                if not line.strip():
                    continue
                try:
                    consumer = orjson.loads(line).get("data", {}).get("consumer_bu", "")
                except (orjson.JSONDecodeError, AttributeError):
                    consumer = ""  # metering stores and rejects it with its reason
                values.append((str(consumer).encode(), line.strip().encode()))
    else:
        raise CliError("give a FILE of JSON-lines CloudEvents or --generate N")
    async with UsageClient(bootstrap_servers, **usage_client_options()) as client:
        sent = await client.send_raw(render.progress(values, "emit"))
    print(f"sent {sent} usage events to usage.reported")
    return 0


async def _pool(settings: Settings) -> asyncpg.Pool:
    _, database_url = settings.require_stack()
    return await create_pool(database_url, size_max=2)


async def relay_invoicing(settings: Settings, pool: asyncpg.Pool) -> int:
    """Publish what a close staged in invoicing's outbox (invoices, settlement, tier adjustments)."""
    bootstrap_servers, _ = settings.require_stack()
    producer = create_producer(bootstrap_servers, client_id="tokenhub-invoice-close")
    await producer.start()
    try:
        return await relay(pool, producer, INVOICING_SCHEMA)
    finally:
        await producer.stop()


def _as_of(text: str | None) -> datetime | None:
    if text is None:
        return None
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise CliError(f"--as-of {text} needs a time zone, for example {text}+08:00")
    return moment


async def balance(arguments: argparse.Namespace) -> int:
    settings = load_settings()
    pool = await _pool(settings)
    try:
        rows = await ledger_queries.balances(pool, names=await metering_queries.display_names(pool), bu=arguments.bu,
                                             as_of=_as_of(arguments.as_of), by=arguments.by)
    finally:
        await pool.close()
    if arguments.bu and not rows:
        raise CliError(f"no postings for business unit {arguments.bu}")
    print(render.balances_json(rows) if arguments.json else render.balances_table(rows, settings.currency))
    return 0


async def invoice(arguments: argparse.Namespace) -> int:
    settings = load_settings()
    pool = await _pool(settings)
    try:
        if arguments.action == "close":
            period = parse(arguments.period, settings.timezone)
            now = clock(settings)
            try:
                issued = await close_period(pool, settings, arguments.period, actor=_actor(arguments), now=now,
                                            early=arguments.early)
            except PeriodNotEnded as error:
                raise CliError(f"{error} Pass --early to close it now.") from error
            # Published now, as the service publishes what it closes; left in the outbox,
            # they would wait for the service's next batch of postings.
            published = await relay_invoicing(settings, pool)
            print(f"closed {arguments.period}: {len(issued)} invoices issued, {published} events published")
            if now < period.end:
                print(what_follows_an_early_close(period))
            return 0
        found = await invoicing_queries.invoices(pool, settings, bu=arguments.bu, period=arguments.period)
        # A finance person reads names, not slugs: the page shows both.
        names = await metering_queries.display_names(pool) if arguments.format == "html" and not arguments.json else {}
    finally:
        await pool.close()
    if arguments.action == "show" and not found:
        raise CliError("no invoice matches" + (f" {arguments.bu}" if arguments.bu else "")
                       + (f" for {arguments.period}" if arguments.period else ""))
    output_format = "json" if arguments.json else arguments.format
    if output_format == "json":
        print(render.invoices_json(found))
    elif output_format == "csv":
        print(render.invoice_csv(found))
    elif output_format == "html":
        print(render.invoice_html(found, names))
    elif arguments.action == "list":
        print(render.invoice_list(found))
    else:
        print("\n\n".join(render.invoice_text(invoice) for invoice in found))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    emit_parser = subparsers.add_parser("emit", help="send usage events (JSON lines) or generate them")
    emit_parser.add_argument("file", nargs="?", help="JSON-lines file of CloudEvents, - for stdin")
    emit_parser.add_argument("--generate", type=int, metavar="N", help="generate N realistic events instead")
    emit_parser.add_argument("--seed", type=int, default=7)
    emit_parser.add_argument("--now", help="injected clock for generated events (ISO time with zone)")
    emit_parser.set_defaults(handler=emit)

    registry_parser = subparsers.add_parser("registry", help="publish business units, models, conversion tables and funding from a file")
    registry_parser.add_argument("file")
    registry_parser.add_argument("--actor", default=None)
    registry_parser.add_argument("--reason", default="registered from the CLI")
    registry_parser.set_defaults(handler=registry)

    balance_parser = subparsers.add_parser("balance", help="balances per business unit")
    balance_parser.add_argument("bu", nargs="?")
    balance_parser.add_argument("--as-of", help="ISO time with zone")
    balance_parser.add_argument("--by", choices=("event-time", "posting-time"), default="event-time")
    balance_parser.add_argument("--json", action="store_true")
    balance_parser.set_defaults(handler=balance)

    invoice_actions = subparsers.add_parser("invoice", help="invoices").add_subparsers(dest="action", required=True)
    for name in ("list", "show"):
        command = invoice_actions.add_parser(name)
        command.add_argument("bu", nargs="?")
        command.add_argument("--period", help="for example 2026-03")
        command.add_argument("--json", action="store_true")
        command.add_argument("--format", choices=("text", "csv", "html"), default="text")
        command.set_defaults(handler=invoice)
    close = invoice_actions.add_parser("close", help="close a period: issue its invoices")
    close.add_argument("period")
    close.add_argument("--actor", default=None)
    close.add_argument("--early", action="store_true",
                       help="close a period that has not ended yet (its invoices are final; later usage of it goes on the next ones)")
    close.set_defaults(handler=invoice)
