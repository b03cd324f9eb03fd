"""Usage in (`emit`), the registry (business units, models, funding, conversion
tables, from a file or one by one), API keys and rejected usage: metering's
commands. Changes are published as `registry.changed` events with actor and reason."""

from __future__ import annotations

import argparse
import base64
import sys
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, TypeVar

import orjson

from tokenhub.bench.load import generate_usage
from tokenhub.cli import args, render
from tokenhub.cli.errors import CliError
from tokenhub.client import UsageClient
from tokenhub.contracts.canonical import canonical_json
from tokenhub.contracts.registry import (
    BusinessUnit,
    ConversionTable,
    FundingAgreement,
    ModelEntry,
    PayerShare,
    RegistryKind,
    registry_change,
    registry_changes,
)
from tokenhub.contracts.topics import REGISTRY_CHANGED
from tokenhub.infra.settings import Settings, clock, load_settings
from tokenhub.services.common.kafka import send_events, usage_client_options
from tokenhub.services.metering import queries
from tokenhub.services.metering.adapters import keys, rejected

async def _publish_change(settings: Settings, kind: RegistryKind, entity: Any, entity_id: str, arguments: argparse.Namespace) -> None:
    change = registry_change(kind, entity, entity_id, args.actor(arguments), arguments.reason, clock(settings))
    await send_events(settings.require_stack()[0], REGISTRY_CHANGED.name, [(entity_id.encode(), canonical_json(change))],
                      settings=settings)
    print(f"published {kind.replace('_', ' ')} {entity_id} (actor {change.actor}: {change.reason})")


T = TypeVar("T")


async def _read(query: Callable[..., Awaitable[T]], *parameters: Any, **options: Any) -> T:
    """One of metering's queries, on a pool opened for it."""
    async with args.database(load_settings(), size_max=1) as pool:
        return await query(pool, *parameters, **options)


def _jsonable(rows: list[dict[str, Any]]) -> str:
    def default(value: Any) -> Any:
        if isinstance(value, Decimal):
            return f"{value:f}"
        if isinstance(value, bytes):
            return base64.b64encode(value).decode()
        return str(value)
    return orjson.dumps(rows, default=default, option=orjson.OPT_INDENT_2 | orjson.OPT_PASSTHROUGH_DATETIME).decode()


def _show(rows: list[dict[str, Any]], columns: list[str], as_json: bool) -> None:
    if as_json:
        print(_jsonable(rows))
        return
    if not rows:
        print("(none)")
        return
    print(render.table(columns, [[_cell(row[column]) for column in columns] for row in rows], right=set()))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, list):
        return ", ".join(_cell(item) if not isinstance(item, dict) else f"{item.get('bu')} {item.get('percent')}%" for item in value)
    return str(value)


async def registry(arguments: argparse.Namespace) -> int:
    settings = load_settings()
    bootstrap_servers, _ = settings.require_stack()
    changes = registry_changes(args.read_document(arguments.file), args.actor(arguments), arguments.reason, clock(settings))
    await send_events(bootstrap_servers, REGISTRY_CHANGED.name,
                      [(change.entity_id.encode(), canonical_json(change)) for change in changes], settings=settings)
    print(f"published {len(changes)} registry changes")
    return 0


async def emit(arguments: argparse.Namespace) -> int:
    settings = load_settings()
    bootstrap_servers, _ = settings.require_stack()
    if arguments.generate:
        now = args.moment(arguments.now, "--now") or clock(settings)
        values = [(event.data.consumer_bu.encode(), canonical_json(event))
                  for event in generate_usage(arguments.generate, seed=arguments.seed, day_end=now)]
    elif arguments.file:
        stream = sys.stdin if arguments.file == "-" else Path(arguments.file).open()
        values = []
        with stream:
            for line in stream:
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


async def bu(arguments: argparse.Namespace) -> int:
    if arguments.action == "list":
        _show(await _read(queries.business_units), ["bu_id", "display_name", "parent_group", "cost_centre", "active"], arguments.json)
        return 0
    settings = load_settings()
    unit = BusinessUnit(bu_id=arguments.bu_id, display_name=arguments.name, parent_group=arguments.group,
                        cost_centre=arguments.cost_centre, active=not arguments.inactive)
    await _publish_change(settings, "business_unit", unit, unit.bu_id, arguments)
    return 0


async def model(arguments: argparse.Namespace) -> int:
    if arguments.action == "list":
        _show(await _read(queries.models), ["model_id", "provider_bu", "modality", "token_classes", "active"], arguments.json)
        return 0
    settings = load_settings()
    entry = ModelEntry(model_id=arguments.model_id, provider_bu=arguments.provider, display_name=arguments.name,
                       modality=arguments.modality, token_classes=tuple(arguments.classes.split(",")),
                       active=not arguments.inactive)
    await _publish_change(settings, "model", entry, entry.model_id, arguments)
    return 0


def _payer(text: str) -> PayerShare:
    bu_id, _, percent = text.partition("=")
    try:
        return PayerShare(bu=bu_id, percent=Decimal(percent))
    except (InvalidOperation, ValueError) as error:
        raise CliError(f"--payer {text}: expected BU=PERCENT, for example taobao-tmall=30") from error


async def funding(arguments: argparse.Namespace) -> int:
    if arguments.action == "list":
        _show(await _read(queries.funding_agreements), ["agreement_id", "consumer_bu", "app", "model_pattern", "payers",
                                            "effective_from", "effective_to"], arguments.json)
        return 0
    settings = load_settings()
    if arguments.action == "end":
        rows = [row for row in await _read(queries.funding_agreements) if row["agreement_id"] == arguments.agreement_id]
        if not rows:
            raise CliError(f"no funding agreement {arguments.agreement_id}")
        row = rows[0]
        agreement = FundingAgreement(
            agreement_id=row["agreement_id"], consumer_bu=row["consumer_bu"], app=row["app"],
            model_pattern=row["model_pattern"], payers=row["payers"], effective_from=row["effective_from"],
            effective_to=args.moment(arguments.at, "--at") or clock(settings))
    else:
        agreement = FundingAgreement(
            agreement_id=arguments.agreement_id, consumer_bu=arguments.consumer, app=arguments.app,
            model_pattern=arguments.model_pattern, payers=tuple(_payer(text) for text in arguments.payer),
            effective_from=args.moment(arguments.effective_from, "--from") or clock(settings),
            effective_to=args.moment(arguments.effective_to, "--to"))
    await _publish_change(settings, "funding_agreement", agreement, agreement.agreement_id, arguments)
    return 0


async def conversion(arguments: argparse.Namespace) -> int:
    if arguments.action == "show":
        rows = await _read(queries.conversion_tables)
        if arguments.json:
            print(_jsonable(rows))
        for row in [] if arguments.json else rows:
            print(f"version {row['version']} effective {row['effective_from'].isoformat()} ({row['actor']}: {row['reason']})")
            print(render.table(["unit", "class", "Tokens per unit"],
                               [[rule["unit"], rule["token_class"], rule["tokens_per_unit"]] for rule in row["rules"]], right={2}))
        return 0
    settings = load_settings()
    table = ConversionTable.model_validate(args.read_document(arguments.file))
    await _publish_change(settings, "conversion_table", table, str(table.version), arguments)
    return 0


async def rejected_command(arguments: argparse.Namespace) -> int:
    if arguments.action == "list":
        rows = await _read(queries.rejected_usage, reason_code=arguments.reason_code)
        _show(rows, ["rejected_id", "reason_code", "usage_source", "usage_id", "message", "resubmitted_at"], arguments.json)
        return 0
    settings = load_settings()
    bootstrap_servers, _ = settings.require_stack()
    rejected_id = _uuid(arguments.rejected_id)
    async with args.database(settings, size_max=1) as pool:
        original = await queries.rejected_original(pool, rejected_id)
        if original is None:
            raise CliError(f"no rejected usage {arguments.rejected_id}")
        value = Path(arguments.file).read_bytes() if arguments.file else original.value
        # Headers go back as received; a corrected file is sent without them.
        headers = [] if arguments.file else original.headers
        async with UsageClient(bootstrap_servers, **usage_client_options()) as client:
            await client.send_raw([(b"", value)], headers=headers or None)
        await rejected.mark_resubmitted(pool, rejected_id, clock(settings), f"{args.actor(arguments)}: {arguments.reason}")
    print(f"resubmitted {arguments.rejected_id} ({'corrected from ' + arguments.file if arguments.file else 'as it was'}); "
          "metering validates it again")
    return 0


def _uuid(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError as error:
        raise CliError(f"{text} is not a rejected usage id") from error


async def api_keys(arguments: argparse.Namespace) -> int:
    if arguments.action == "list":
        _show(await _read(queries.api_keys), ["key_id", "sources", "actor", "reason", "created_at", "revoked_at"], arguments.json)
        return 0
    async with args.database(load_settings(), size_max=1) as pool, pool.acquire() as connection:
        if arguments.action == "create":
            key_id, key = await keys.create(connection, arguments.source, args.actor(arguments), arguments.reason)
            print(f"key {key_id} for sources {', '.join(arguments.source)}:\n{key}\n"
                  "It is shown once; only its SHA-256 is stored.")
            return 0
        if not await keys.revoke(connection, arguments.key_id):
            raise CliError(f"no active key {arguments.key_id}")
    print(f"revoked key {arguments.key_id}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    emit_parser = subparsers.add_parser("emit", help="send usage events (JSON lines) or generate them")
    emit_parser.add_argument("file", nargs="?", help="JSON-lines file of CloudEvents, - for stdin")
    emit_parser.add_argument("--generate", type=int, metavar="N", help="generate N realistic events instead")
    emit_parser.add_argument("--seed", type=int, default=7)
    emit_parser.add_argument("--now", help=f"injected clock for generated events: {args.TIME_HELP}")
    emit_parser.set_defaults(handler=emit)

    registry_parser = subparsers.add_parser("registry", help="publish business units, models, conversion tables and funding from a file")
    registry_parser.add_argument("file")
    args.add_change(registry_parser, reason_default="registered from the CLI")
    registry_parser.set_defaults(handler=registry)

    units = subparsers.add_parser("bu", help="business units").add_subparsers(dest="action", required=True)
    add = units.add_parser("add", help="register or update a business unit")
    add.add_argument("bu_id")
    add.add_argument("--name", required=True)
    add.add_argument("--group")
    add.add_argument("--cost-centre")
    add.add_argument("--inactive", action="store_true")
    args.add_change(add)
    add.set_defaults(handler=bu)
    units.add_parser("list").add_argument("--json", action="store_true", help="print JSON of a stable shape")
    units.choices["list"].set_defaults(handler=bu)

    models = subparsers.add_parser("model", help="models, tools and agents").add_subparsers(dest="action", required=True)
    add = models.add_parser("add", help="register or update a model, tool or agent")
    add.add_argument("model_id")
    add.add_argument("--provider", required=True, help="the BU that provides it")
    add.add_argument("--modality", required=True, choices=("text", "embedding", "image", "video", "audio", "agent", "tool"))
    add.add_argument("--classes", required=True, help="comma-separated Token classes, e.g. input,cache_read,output")
    add.add_argument("--name")
    add.add_argument("--inactive", action="store_true")
    args.add_change(add)
    add.set_defaults(handler=model)
    models.add_parser("list").add_argument("--json", action="store_true", help="print JSON of a stable shape")
    models.choices["list"].set_defaults(handler=model)

    agreements = subparsers.add_parser("funding", help="who pays for whom").add_subparsers(dest="action", required=True)
    put = agreements.add_parser("set", help="create or replace a funding agreement")
    put.add_argument("agreement_id")
    put.add_argument("--consumer", required=True)
    put.add_argument("--app")
    put.add_argument("--model-pattern", help="shell-style, for example qwen-*")
    put.add_argument("--payer", action="append", required=True, help="BU=PERCENT, repeated; shares sum to 100")
    put.add_argument("--from", dest="effective_from", help="effective from (ISO time with zone; default now)")
    put.add_argument("--to", dest="effective_to")
    args.add_change(put)
    put.set_defaults(handler=funding)
    agreements.add_parser("list").add_argument("--json", action="store_true", help="print JSON of a stable shape")
    agreements.choices["list"].set_defaults(handler=funding)
    end = agreements.add_parser("end", help="end an agreement at a time (default now)")
    end.add_argument("agreement_id")
    end.add_argument("--at")
    args.add_change(end)
    end.set_defaults(handler=funding)

    tables = subparsers.add_parser("conversion", help="conversion tables: non-text units to Tokens").add_subparsers(dest="action", required=True)
    publish = tables.add_parser("publish", help="publish a conversion table version (YAML or JSON)")
    publish.add_argument("file")
    args.add_change(publish)
    publish.set_defaults(handler=conversion)
    tables.add_parser("show").add_argument("--json", action="store_true", help="print JSON of a stable shape")
    tables.choices["show"].set_defaults(handler=conversion)

    key_actions = subparsers.add_parser("keys", help="API keys for HTTP ingest").add_subparsers(dest="action", required=True)
    create = key_actions.add_parser("create", help="a new key, bound to the sources it may report for")
    create.add_argument("--source", action="append", required=True, help="a source or shell-style pattern, repeated")
    args.add_change(create)
    create.set_defaults(handler=api_keys)
    key_actions.add_parser("list").add_argument("--json", action="store_true", help="print JSON of a stable shape")
    key_actions.choices["list"].set_defaults(handler=api_keys)
    revoke = key_actions.add_parser("revoke")
    revoke.add_argument("key_id")
    revoke.set_defaults(handler=api_keys)

    rejects = subparsers.add_parser("rejected", help="rejected usage, stored with its original bytes").add_subparsers(dest="action", required=True)
    listing = rejects.add_parser("list")
    listing.add_argument("--reason", dest="reason_code", help="a reason code, e.g. unknown_bu")
    args.add_json(listing)
    listing.set_defaults(handler=rejected_command)
    resubmit = rejects.add_parser("resubmit", help="send a rejected event back, as it was or corrected")
    resubmit.add_argument("rejected_id")
    resubmit.add_argument("--file", help="the corrected event (JSON)")
    args.add_change(resubmit, reason_default="resubmitted after correction")
    resubmit.set_defaults(handler=rejected_command)
