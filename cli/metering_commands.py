"""Usage in (`emit`), the registry (business units, models, funding, conversion
tables, from a file or one by one), API keys and rejected usage: metering's
commands. Changes are published as `registry.changed` events with actor and reason."""

from __future__ import annotations

import argparse
import contextlib
import sys
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Final, TypeVar

import orjson

from tokenhub.bench.load import generate_usage
from tokenhub.cli import args, render
from tokenhub.cli.errors import CliError, UsageError
from tokenhub.client import UsageClient
from tokenhub.contracts.canonical import canonical_json, sha256_hex
from tokenhub.contracts.registry import (
    BusinessUnit,
    RegistryChanged,
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
from tokenhub.services.common.kafka import client_options, send_events, usage_client_options
from tokenhub.infra.pipeline import Timeout, wait_until
from tokenhub.services.metering import queries
from tokenhub.services.metering import domain, registry
from tokenhub.services.metering.domain import Reason
from tokenhub.services.metering.adapters import keys, rejected

REGISTRY_WAIT_S: Final = 60.0
"""How long registry commands wait for metering's answer by default: it applies
or refuses a change within seconds; a minute covers a service starting (as emit's)."""
MODEL_OPTIONS: Final = {"provider_bu": "--provider", "token_classes": "--classes"}
FUNDING_OPTIONS: Final = {"consumer_bu": "--consumer", "payers": "--payer", "agreement_id": "AGREEMENT_ID"}
"""A refusal names the field as the command's option."""
EMIT_WAIT_S: Final = 60.0
"""How long emit and resubmit wait for metering's answer by default: metering
answers a batch within a second or two; a minute covers a service starting."""
REJECTION_REASONS: Final = tuple(sorted(value for name, value in vars(Reason).items() if name.isupper()))


async def _registry_now(settings: Settings) -> registry.Registry:
    """The registry as metering validates changes against it."""
    async with args.database(settings, size_max=1) as pool:
        return await queries.registry(pool)


def _refused(refusal: registry.Refusal | None, names: dict[str, str]) -> None:
    if refusal is not None:
        raise CliError(refusal.text(names) + "; nothing was published")


async def _publish_change(settings: Settings, kind: RegistryKind, entity: Any, entity_id: str,
                          arguments: argparse.Namespace) -> int:
    change = registry_change(kind, entity, entity_id, args.actor(arguments), arguments.reason, clock(settings))
    return await publish_changes(settings, [change], arguments.wait_s,
                                 f"{kind.replace('_', ' ')} {entity_id} (actor {change.actor}: {change.reason})")


async def publish_changes(settings: Settings, changes: list[RegistryChanged], wait_s: float, what: str) -> int:
    """Publish registry changes, then wait until metering has applied or refused
    each (like `pricebook publish`): 0 when it applied all of them, 1 with the
    reasons when it refused any, 1 when it has not answered within `wait_s`."""
    await send_events(settings.require_stack()[0], REGISTRY_CHANGED.name,
                      [(change.entity_id.encode(), canonical_json(change)) for change in changes], settings=settings)
    print(f"published {what}")
    if wait_s <= 0:
        print("not waiting for metering's answer (--wait 0): `tokenhub bu list`, `model list`, `funding list` and "
              "`conversion show` show what it applied")
        return 0
    ids = [change.id for change in changes]
    outcomes: list[queries.Outcome] = [None] * len(changes)
    async with args.database(settings, size_max=1) as pool:
        async def answered() -> bool:
            nonlocal outcomes
            outcomes = await queries.registry_outcomes(pool, ids)
            return all(outcome is not None for outcome in outcomes)
        try:
            await wait_until(answered, wait_s, "metering's answer to the registry changes")
        except Timeout:
            pass  # said below, with what was answered
    refused = [outcome.reason for outcome in outcomes if isinstance(outcome, queries.Refused)]
    unanswered = outcomes.count(None)
    applied = outcomes.count("applied")
    one = len(changes) == 1
    if applied:
        print(("metering applied it" if one else "metering applied "
               + ("them" if applied == len(changes) else f"{applied} of {len(changes)}"))
              + ": usage sent from now on is metered against " + ("it" if one else "them"))
    for reason in refused if not one else []:
        print(f"refused: {reason}", file=sys.stderr)
    if refused:
        unanswered_too = f"; {unanswered} not answered within {wait_s:g} s" if unanswered else ""
        raise CliError(f"metering refused it: {refused[0]}" if one else
                       f"metering refused {len(refused)} of {len(changes)} changes (reasons above){unanswered_too}")
    if unanswered:
        raise CliError(f"metering has not answered within {wait_s:g} s (is metering running? `tokenhub status`); "
                       + ("the change waits on registry.changed and metering applies or refuses it when it reads it"
                          if one else f"{unanswered} changes wait on registry.changed and metering applies or refuses "
                                      "them when it reads them"))
    return 0


T = TypeVar("T")


async def _read(query: Callable[..., Awaitable[T]], *parameters: Any, **options: Any) -> T:
    """One of metering's queries, on a pool opened for it."""
    async with args.database(load_settings(), size_max=1) as pool:
        return await query(pool, *parameters, **options)


def _show(rows: list[dict[str, Any]], columns: list[str], arguments: argparse.Namespace, zone: str, empty: str) -> None:
    if args.output_format(arguments) == "json":
        print(render.json(rows))
        return
    if not rows:
        print(empty)
        return
    print(render.table(columns, [[_cell(row[column], zone) for column in columns] for row in rows], right=set()))


def _cell(value: Any, zone: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return render.local(value, zone)
    if isinstance(value, list):
        return ", ".join(_cell(item, zone) if not isinstance(item, dict) else f"{item.get('bu')} {item.get('percent')}%"
                         for item in value)
    return str(value)


async def registry_import(arguments: argparse.Namespace) -> int:
    settings = load_settings()
    changes = registry_changes(args.read_document(arguments.file), args.actor(arguments), arguments.reason, clock(settings))
    # Checked as metering will check them, in order, against the registry as it
    # stands, so nothing is published that metering would refuse.
    received = [registry.read(canonical_json(change)) for change in changes]
    decision = registry.decide(received, await _registry_now(settings), answered=())
    if decision.refused:
        first = decision.refused[0][1]
        more = f" (and {len(decision.refused) - 1} more)" if len(decision.refused) > 1 else ""
        raise CliError(f"{arguments.file}: {first}{more}; nothing was published")
    return await publish_changes(settings, changes, arguments.wait_s, f"{len(changes)} registry changes")

async def emit(arguments: argparse.Namespace) -> int:
    settings = load_settings()
    output = args.output_format(arguments)
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
        raise UsageError("give a FILE of JSON-lines CloudEvents (- for stdin) or --generate N")
    bootstrap_servers, _ = settings.require_stack()
    sent = [sent_usage(value) for _, value in values]
    waiting = arguments.wait_s > 0
    async with contextlib.AsyncExitStack() as stack:
        pool = await stack.enter_async_context(args.database(settings, size_max=1)) if waiting else None
        before = await queries.snapshot(pool, sent) if pool is not None else None
        async with UsageClient(bootstrap_servers, **usage_client_options()) as client:
            count = await client.send_raw(render.progress(values, "emit") if output == "text" else values)
        verdicts = (await _answers(pool, settings, sent, before, client.last_offsets, arguments.wait_s)
                    if pool is not None and before else None)
    report = _emit_report(count, verdicts, arguments.wait_s)
    print(render.json(report) if output == "json" else _emit_text(report))
    return 0


def sent_usage(value: bytes, headers: Sequence[tuple[str, bytes]] = ()) -> queries.SentUsage:
    """How metering will know a message: by its key and content, or by its bytes
    (read with metering's own envelope parser, so the hash is the one it stores)."""
    original = sha256_hex(value)
    try:
        usage = domain.validate_envelope(domain.parse_envelope(domain.RawUsage(value, tuple(headers))))
    except domain.UsageError as error:
        found = error.rejection
        key = (found.usage_source, found.usage_id) if found.usage_source and found.usage_id else None
        return queries.SentUsage(key, None, original)
    return queries.SentUsage((usage.source, usage.id), sha256_hex(canonical_json(usage)), original)


async def _answers(pool: Any, settings: Settings, sent: list[queries.SentUsage], before: queries.Snapshot,
                   offsets: dict[int, int], wait_s: float) -> list[queries.Verdict]:
    """Metering's answers, polled until every message has one, or metering has
    read past everything sent, or `wait_s` passed."""
    verdicts: list[queries.Verdict] = []

    async def answered() -> bool:
        nonlocal verdicts
        verdicts = await queries.answers(pool, sent, before)
        if all(verdict is not None for verdict in verdicts):
            return True
        read = await queries.metering_read_through(settings.require_stack()[0], sorted(offsets),
                                                   **client_options(settings))
        if all(read[partition] > offset for partition, offset in offsets.items()):
            verdicts = await queries.answers(pool, sent, before, read_past=True)
            return True
        return False
    try:
        await wait_until(answered, wait_s, "metering's answers")
    except Timeout:
        pass  # the report says how many are still unanswered
    return verdicts


def _emit_report(count: int, verdicts: list[queries.Verdict] | None, wait_s: float) -> dict[str, Any]:
    report: dict[str, Any] = {"sent": count, "waited_s": wait_s if verdicts is not None else 0}
    if verdicts is None:
        return {**report, "accepted": None, "duplicates": None, "rejected": None, "rejected_by_reason": None,
                "unanswered": None}
    reasons: dict[str, int] = {}
    for verdict in verdicts:
        if isinstance(verdict, queries.Rejection):
            reasons[verdict.reason_code] = reasons.get(verdict.reason_code, 0) + 1
    return {**report, "accepted": verdicts.count("accepted"), "duplicates": verdicts.count("duplicate"),
            "rejected": sum(reasons.values()), "rejected_by_reason": dict(sorted(reasons.items())),
            "unanswered": verdicts.count(None)}


def _emit_text(report: dict[str, Any]) -> str:
    head = f"sent {report['sent']} usage events to usage.reported"
    if report["accepted"] is None:
        return f"{head}; not waiting for metering's answer (--wait 0): `tokenhub rejected list` shows what it refused"
    by_reason = ", ".join(f"{reason} {count}" for reason, count in report["rejected_by_reason"].items())
    text = (f"{head}; metering accepted {report['accepted']}, found {report['duplicates']} duplicates, "
            f"rejected {report['rejected']}" + (f" ({by_reason})" if by_reason else ""))
    if report["unanswered"]:
        text += (f"; {report['unanswered']} not answered within {report['waited_s']:g} s "
                 "(is metering running? `tokenhub status`)")
    return text


async def bu(arguments: argparse.Namespace) -> int:
    if arguments.action == "list":
        _show(await _read(queries.business_units), ["bu_id", "display_name", "parent_group", "cost_centre", "active"], arguments,
              load_settings().timezone, "no business units yet: `tokenhub registry FILE` or `tokenhub bu add`")
        return 0
    settings = load_settings()
    unit = BusinessUnit(bu_id=arguments.bu_id, display_name=arguments.name, parent_group=arguments.group,
                        cost_centre=arguments.cost_centre, active=not arguments.inactive)
    return await _publish_change(settings, "business_unit", unit, unit.bu_id, arguments)


async def model(arguments: argparse.Namespace) -> int:
    if arguments.action == "list":
        _show(await _read(queries.models), ["model_id", "provider_bu", "modality", "token_classes", "active"], arguments,
              load_settings().timezone, "no models yet: `tokenhub registry FILE` or `tokenhub model add`")
        return 0
    settings = load_settings()
    entry = ModelEntry(model_id=arguments.model_id, provider_bu=arguments.provider, display_name=arguments.name,
                       modality=arguments.modality, token_classes=tuple(arguments.classes.split(",")),
                       active=not arguments.inactive)
    _refused(registry.check_change(entry, await _registry_now(settings)), MODEL_OPTIONS)
    return await _publish_change(settings, "model", entry, entry.model_id, arguments)


def _payer(text: str) -> PayerShare:
    bu_id, _, percent = text.partition("=")
    try:
        return PayerShare(bu=bu_id, percent=Decimal(percent))
    except (InvalidOperation, ValueError) as error:
        raise CliError(f"--payer {text}: expected BU=PERCENT, for example taobao-tmall=30") from error


async def funding(arguments: argparse.Namespace) -> int:
    if arguments.action == "list":
        _show(await _read(queries.funding_agreements), ["agreement_id", "consumer_bu", "app", "model_pattern", "payers",
                                                        "effective_from", "effective_to"], arguments,
              load_settings().timezone, "no funding agreements: every consumer pays for itself")
        return 0
    settings = load_settings()
    known = await _registry_now(settings)
    if arguments.action == "end":
        _refused(registry.check_funding_end(arguments.agreement_id, known), FUNDING_OPTIONS)
        row = next(row for row in await _read(queries.funding_agreements) if row["agreement_id"] == arguments.agreement_id)
        agreement = FundingAgreement(
            agreement_id=row["agreement_id"], consumer_bu=row["consumer_bu"], app=row["app"],
            model_pattern=row["model_pattern"], payers=row["payers"], effective_from=row["effective_from"],
            effective_to=args.moment(arguments.as_of, "--as-of") or clock(settings))
    else:
        payers = tuple(_payer(text) for text in arguments.payer)
        _refused(registry.check_shares(payers), FUNDING_OPTIONS)
        agreement = FundingAgreement(
            agreement_id=arguments.agreement_id, consumer_bu=arguments.consumer, app=arguments.app,
            model_pattern=arguments.model_pattern, payers=payers,
            effective_from=args.moment(arguments.effective_from, "--from") or clock(settings),
            effective_to=args.moment(arguments.effective_to, "--to"))
        _refused(registry.check_change(agreement, known), FUNDING_OPTIONS)
    return await _publish_change(settings, "funding_agreement", agreement, agreement.agreement_id, arguments)

async def conversion(arguments: argparse.Namespace) -> int:
    if arguments.action == "show":
        rows = await _read(queries.conversion_tables)
        zone = load_settings().timezone
        if args.output_format(arguments) == "json":
            print(render.json(rows))
        elif not rows:
            print("no conversion table yet: `tokenhub conversion publish FILE`")
        for row in [] if args.output_format(arguments) == "json" else rows:
            print(f"version {row['version']} effective {render.local(row['effective_from'], zone)} ({row['actor']}: {row['reason']})")
            print(render.table(["unit", "class", "Tokens per unit"],
                               [[rule["unit"], rule["token_class"], rule["tokens_per_unit"]] for rule in row["rules"]], right={2}))
        return 0
    settings = load_settings()
    table = ConversionTable.model_validate(args.read_document(arguments.file))
    _refused(registry.check_change(table, await _registry_now(settings)), {"version": f"{arguments.file}: version"})
    return await _publish_change(settings, "conversion_table", table, str(table.version), arguments)


async def rejected_command(arguments: argparse.Namespace) -> int:
    settings = load_settings()
    if arguments.action == "list":
        try:
            page = await _read(queries.rejected_page, reason_code=arguments.reason_code, source=arguments.source,
                               after=_uuid(arguments.after) if arguments.after else None, limit=arguments.limit)
        except (queries.UnknownRejected, ValueError) as error:
            raise CliError(str(error)) from None
        if args.output_format(arguments) == "json":
            print(render.json({"rejected": page.rows, "total": page.total, "next_after": page.next_after}))
            return 0
        _show(page.rows, ["rejected_id", "reason_code", "usage_source", "usage_id", "message", "resubmitted_at"], arguments,
              settings.timezone, "nothing rejected" + (f" for {arguments.reason_code}" if arguments.reason_code else ""))
        more = f"; next page: --after {page.next_after}" if page.next_after else ""
        print(f"{len(page.rows)} shown of {page.total}{more}")
        return 0
    if arguments.action == "stats":
        stats = await _read(queries.rejected_stats)
        if args.output_format(arguments) == "json":
            print(render.json({"total": stats.total, "by_reason": stats.by_reason, "by_source": stats.by_source,
                               "other_sources": stats.others}))
            return 0
        print(render.table(["reason", "rejected"], [[reason, str(count)] for reason, count in stats.by_reason.items()],
                           right={1}))
        print()
        rows = [[source, str(count)] for source, count in stats.by_source.items()]
        if stats.others:
            rows.append(["(other sources)", str(stats.others)])
        print(render.table(["source", "rejected"], rows, right={1}))
        print(f"\n{stats.total} rejected in all")
        return 0
    bootstrap_servers, _ = settings.require_stack()
    rejected_id = _uuid(arguments.rejected_id)
    async with args.database(settings, size_max=1) as pool:
        original = await queries.rejected_original(pool, rejected_id)
        if original is None:
            raise CliError(f"no rejected usage {arguments.rejected_id}; `tokenhub rejected list` shows their ids")
        value = Path(arguments.file).read_bytes().strip() if arguments.file else original.value
        # Headers go back as received; a corrected file is sent without them.
        headers = [] if arguments.file else original.headers
        sent = [sent_usage(value, headers)]
        before = await queries.snapshot(pool, sent)
        async with UsageClient(bootstrap_servers, **usage_client_options()) as client:
            await client.send_raw([(b"", value)], headers=headers or None)
        await rejected.mark_resubmitted(pool, rejected_id, clock(settings), f"{args.actor(arguments)}: {arguments.reason}")
        verdict = ((await _answers(pool, settings, sent, before, client.last_offsets, arguments.wait_s))[0]
                   if arguments.wait_s > 0 else None)
    how = f"corrected from {arguments.file}" if arguments.file else "as it was"
    if arguments.wait_s <= 0:
        outcome = "not waiting for metering's answer (--wait 0)"
    elif verdict is None:
        outcome = f"metering has not answered within {arguments.wait_s:g} s (is metering running? `tokenhub status`)"
    elif isinstance(verdict, queries.Rejection):
        outcome = f"rejected again: {verdict.reason_code}: {verdict.message}"
    elif verdict == "duplicate":
        outcome = "a duplicate: metering had already accepted this event, so it counts once"
    else:
        outcome = "accepted: metered and on its way to pricing"
    print(f"resubmitted {arguments.rejected_id} ({how}): {outcome}")
    return 1 if isinstance(verdict, queries.Rejection) else 0


def _uuid(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError as error:
        raise CliError(f"{text} is not a rejected usage id") from error


async def api_keys(arguments: argparse.Namespace) -> int:
    if arguments.action == "list":
        _show(await _read(queries.api_keys), ["key_id", "sources", "actor", "reason", "created_at", "revoked_at"], arguments,
              load_settings().timezone, "no API keys yet: `tokenhub keys create`")
        return 0
    async with args.database(load_settings(), size_max=1) as pool, pool.acquire() as connection:
        if arguments.action == "create":
            key_id, key = await keys.create(connection, arguments.source, args.actor(arguments), arguments.reason)
            print(f"key {key_id} for sources {', '.join(arguments.source)}:\n{key}\n"
                  "It is shown once; only its SHA-256 is stored.")
            return 0
        if not await keys.revoke(connection, arguments.key_id):
            raise CliError(f"no active key {arguments.key_id}; `tokenhub keys list` shows the keys and which are revoked")
    print(f"revoked key {arguments.key_id}")
    return 0


def _reading(actions: argparse._SubParsersAction, name: str, help_text: str, handler: Any, *examples: str) -> None:
    command = actions.add_parser(name, help=help_text)
    args.add_output(command)
    args.examples(command, *examples)
    command.set_defaults(handler=handler)


def _add_wait(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--wait", dest="wait_s", type=float, default=REGISTRY_WAIT_S, metavar="SECONDS",
                        help="how long to wait for metering to apply or refuse the change; 0 does not wait "
                             f"(default: {REGISTRY_WAIT_S:g})")


def register(subparsers: argparse._SubParsersAction) -> None:
    emit_parser = subparsers.add_parser("emit", help="send usage events and report what metering made of them")
    emit_parser.add_argument("file", nargs="?", help="JSON-lines file of CloudEvents, - for stdin")
    emit_parser.add_argument("--generate", type=int, metavar="N", help="generate N realistic events instead of reading a file")
    emit_parser.add_argument("--seed", type=int, default=7, help="seed of the generated events: the same seed, the same events (default: 7)")
    emit_parser.add_argument("--now", metavar="TIME", help=f"end of the generated day (default: now); {args.TIME_HELP}")
    emit_parser.add_argument("--wait", dest="wait_s", type=float, default=EMIT_WAIT_S, metavar="SECONDS",
                             help=f"how long to wait for metering's answer to every event; 0 does not wait (default: {EMIT_WAIT_S:g})")
    args.add_output(emit_parser)
    args.examples(emit_parser, "tokenhub emit usage.jsonl", "tokenhub emit --generate 1000 --seed 3",
                  "cat usage.jsonl | tokenhub emit - --wait 0")
    emit_parser.set_defaults(handler=emit)

    registry_parser = subparsers.add_parser("registry", help="publish business units, models, conversion tables and funding from a file")
    registry_parser.add_argument("file", help="a YAML or JSON registry document (see infra/demo/registry.yaml)")
    args.add_change(registry_parser)
    _add_wait(registry_parser)
    args.examples(registry_parser, "tokenhub registry infra/demo/registry.yaml --reason 'the demo registry'")
    registry_parser.set_defaults(handler=registry_import)

    units = subparsers.add_parser("bu", help="business units").add_subparsers(dest="action", required=True)
    add = units.add_parser("add", help="register or update a business unit")
    add.add_argument("bu_id", help="its id: a slug, for example taobao-tmall")
    add.add_argument("--name", required=True, help="its display name")
    add.add_argument("--group", help="the group it belongs to")
    add.add_argument("--cost-centre", help="its cost centre, for finance")
    add.add_argument("--inactive", action="store_true", help="registered but no longer reporting usage")
    args.add_change(add)
    _add_wait(add)
    args.examples(add, "tokenhub bu add fliggy --name Fliggy --group 'Alibaba China E-commerce' --reason 'new BU'")
    add.set_defaults(handler=bu)
    _reading(units, "list", "every registered business unit", bu, "tokenhub bu list", "tokenhub bu list --json")

    models = subparsers.add_parser("model", help="models, tools and agents").add_subparsers(dest="action", required=True)
    add = models.add_parser("add", help="register or update a model, tool or agent")
    add.add_argument("model_id", help="its id, as usage events name it")
    add.add_argument("--provider", required=True, metavar="BU", help="the business unit that provides it")
    add.add_argument("--modality", required=True, choices=("text", "embedding", "image", "video", "audio", "agent", "tool"),
                     help="what it serves")
    add.add_argument("--classes", required=True, help="comma-separated Token classes, for example input,cache_read,output")
    add.add_argument("--name", help="its display name")
    add.add_argument("--inactive", action="store_true", help="registered but no longer served")
    args.add_change(add)
    _add_wait(add)
    args.examples(add, "tokenhub model add qwen-flash --provider qwen-platform --modality text --classes input,output "
                       "--reason 'new model'")
    add.set_defaults(handler=model)
    _reading(models, "list", "every registered model, tool and agent", model, "tokenhub model list --json")

    agreements = subparsers.add_parser("funding", help="who pays for whom").add_subparsers(dest="action", required=True)
    put = agreements.add_parser("set", help="create or replace a funding agreement")
    put.add_argument("agreement_id", help="its id, for example quark-sponsorship")
    put.add_argument("--consumer", required=True, metavar="BU", help="the business unit whose usage it funds")
    put.add_argument("--app", help="only this app's usage (default: all of it)")
    put.add_argument("--model-pattern", help="only models matching this shell-style pattern, for example qwen-*")
    put.add_argument("--payer", action="append", required=True, metavar="BU=PERCENT",
                     help="a payer and its share, repeated; the shares sum to 100")
    put.add_argument("--from", dest="effective_from", metavar="TIME", help=f"in force from (default: now); {args.TIME_HELP}")
    put.add_argument("--to", dest="effective_to", metavar="TIME", help=f"in force until (default: open-ended); {args.TIME_HELP}")
    args.add_change(put)
    _add_wait(put)
    args.examples(put, "tokenhub funding set quark-sponsorship --consumer quark --payer ai-innovation=100 --reason 'incubation'",
                  "tokenhub funding set shared --consumer dingtalk --payer dingtalk=50 --payer cainiao=50 --reason 'shared cost'")
    put.set_defaults(handler=funding)
    _reading(agreements, "list", "every funding agreement", funding, "tokenhub funding list")
    end = agreements.add_parser("end", help="end an agreement as of a time (default now)")
    end.add_argument("agreement_id", help="the agreement's id")
    args.add_as_of(end, "the agreement ends at this time")
    args.add_change(end)
    _add_wait(end)
    args.examples(end, "tokenhub funding end quark-sponsorship --reason 'graduated'",
                  "tokenhub funding end quark-sponsorship --as-of 2026-04-01T00:00:00+08:00 --reason 'graduated'")
    end.set_defaults(handler=funding)

    tables = subparsers.add_parser("conversion", help="conversion tables: non-text units to Tokens").add_subparsers(dest="action", required=True)
    publish = tables.add_parser("publish", help="publish a conversion table version (YAML or JSON)")
    publish.add_argument("file", help="the table: version, effective_from and rules")
    args.add_change(publish)
    _add_wait(publish)
    args.examples(publish, "tokenhub conversion publish conversion-v2.yaml --reason '4k images'")
    publish.set_defaults(handler=conversion)
    _reading(tables, "show", "every conversion table version", conversion, "tokenhub conversion show")

    key_actions = subparsers.add_parser("keys", help="API keys for HTTP ingest").add_subparsers(dest="action", required=True)
    create = key_actions.add_parser("create", help="a new key, bound to the sources it may report for")
    create.add_argument("--source", action="append", required=True,
                        help="a source or shell-style pattern it may report for, repeated, for example 'gateway/*'")
    args.add_change(create)
    args.examples(create, "tokenhub keys create --source 'gateway/*' --reason 'gateway onboarding'")
    create.set_defaults(handler=api_keys)
    _reading(key_actions, "list", "every key (never the key itself)", api_keys, "tokenhub keys list")
    revoke = key_actions.add_parser("revoke", help="revoke a key: its requests are refused from now on")
    revoke.add_argument("key_id", help="the key's id, as `tokenhub keys list` shows it")
    args.examples(revoke, "tokenhub keys revoke 3f9c2a1b")
    revoke.set_defaults(handler=api_keys)

    rejects = subparsers.add_parser("rejected", help="rejected usage, stored with its original bytes").add_subparsers(dest="action", required=True)
    listing = rejects.add_parser("list", help="rejected usage in order of arrival, a page at a time, with the total")
    listing.add_argument("--reason", dest="reason_code", choices=REJECTION_REASONS, metavar="REASON",
                         help=f"only this reason: {', '.join(REJECTION_REASONS)}")
    listing.add_argument("--source", help="only usage from this source, for example gateway/taobao")
    listing.add_argument("--limit", type=int, default=100, metavar="N",
                         help=f"rows per page, 1 to {queries.REJECTED_SHOWN_MAX} (default: 100)")
    listing.add_argument("--after", metavar="REJECTED_ID", help="the last rejected id of the previous page")
    args.add_output(listing)
    args.examples(listing, "tokenhub rejected list", "tokenhub rejected list --reason unknown_bu --json",
                  "tokenhub rejected list --limit 50 --after 9b2e6c1e-5d0a-4c8e-9f61-2a7d3e0b4c11")
    listing.set_defaults(handler=rejected_command)
    stats = rejects.add_parser("stats", help="how much usage was rejected, by reason and by source")
    args.add_output(stats)
    args.examples(stats, "tokenhub rejected stats", "tokenhub rejected stats --json")
    stats.set_defaults(handler=rejected_command)
    resubmit = rejects.add_parser("resubmit", help="send a rejected event back, as it was or corrected, and say what metering made of it")
    resubmit.add_argument("rejected_id", help="its id, as `tokenhub rejected list` shows it")
    resubmit.add_argument("--file", help="the corrected event, one JSON CloudEvent (default: send it back as it was)")
    resubmit.add_argument("--wait", dest="wait_s", type=float, default=EMIT_WAIT_S, metavar="SECONDS",
                          help=f"how long to wait for metering's answer; 0 does not wait (default: {EMIT_WAIT_S:g})")
    args.add_change(resubmit)
    args.examples(resubmit, "tokenhub rejected resubmit 9b2e6c1e-5d0a-4c8e-9f61-2a7d3e0b4c11 --file fixed.json --reason 'BU registered'")
    resubmit.set_defaults(handler=rejected_command)
