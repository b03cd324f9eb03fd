"""Usage in (`emit`), the registry (business units, models, funding, conversion
tables, from a file or one by one), API keys and rejected usage: metering's
commands. Changes are published as `registry.changed` events with actor and reason."""

from __future__ import annotations

import argparse
import sys
import uuid
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Final

from tokenhub.bench.load import usage_messages
from tokenhub.cli import args
from tokenhub.cli.errors import CliError, UsageError
from tokenhub.cli.progress import progress
from tokenhub.contracts.registry import (
    BusinessUnit,
    ConversionTable,
    FundingAgreement,
    ModelEntry,
    PayerShare,
    RegistryChanged,
    RegistryKind,
    registry_change,
    registry_changes,
)
from tokenhub.infra.settings import Settings, clock, load_settings
from tokenhub.services.metering import queries, registry, tools
from tokenhub.views import documents, metering as views

MODEL_OPTIONS: Final = {"provider_bu": "--provider", "token_classes": "--classes"}
FUNDING_OPTIONS: Final = {"consumer_bu": "--consumer", "payers": "--payer", "agreement_id": "AGREEMENT_ID"}
"""A refusal names the field as the command's option."""


def _refused(refusal: registry.Refusal | None, names: dict[str, str]) -> None:
    if refusal is not None:
        raise CliError(refusal.text(names) + "; nothing was published")


async def _publish_change(kind: RegistryKind, entity: Any, entity_id: str, arguments: argparse.Namespace) -> int:
    settings = load_settings()
    change = registry_change(kind, entity, entity_id, args.actor(arguments), arguments.reason, clock(settings))
    return await publish_changes(settings, [change], arguments.wait_s,
                                 f"{kind.replace('_', ' ')} {entity_id} (actor {change.actor}: {change.reason})")


async def publish_changes(settings: Settings, changes: list[RegistryChanged], wait_s: float, what: str) -> int:
    """Publish registry changes, then wait until metering has applied or refused
    each (like `pricebook publish`): 0 when it applied all of them, 1 with the
    reasons when it refused any, 1 when it has not answered within `wait_s`."""
    await tools.publish_changes(settings, changes)
    print(f"published {what}")
    if wait_s <= 0:
        print(views.NOT_WAITING_FOR_REGISTRY)
        return 0
    applied, reasons, failure = views.registry_answer(await tools.registry_outcomes(settings, changes, wait_s), wait_s)
    if applied:
        print(applied)
    for reason in reasons:
        print(reason, file=sys.stderr)
    if failure:
        raise CliError(failure)
    return 0


async def registry_import(arguments: argparse.Namespace) -> int:
    settings = load_settings()
    changes = registry_changes(args.read_document(arguments.file), args.actor(arguments), arguments.reason, clock(settings))
    refused = tools.refusals(changes, await args.query(queries.registry))
    if refused:
        more = f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
        raise CliError(f"{arguments.file}: {refused[0]}{more}; nothing was published")
    return await publish_changes(settings, changes, arguments.wait_s, f"{len(changes)} registry changes")


async def emit(arguments: argparse.Namespace) -> int:
    settings = load_settings()
    output = args.output_format(arguments)
    if arguments.generate:
        now = args.moment(arguments.now, "--now") or clock(settings)
        messages = usage_messages(arguments.generate, seed=arguments.seed, day_end=now)
    elif arguments.file:
        with sys.stdin if arguments.file == "-" else Path(arguments.file).open() as stream:
            messages = tools.usage_lines(stream)
    else:
        raise UsageError("give a FILE of JSON-lines CloudEvents (- for stdin) or --generate N")
    report = await tools.emit(settings, messages, arguments.wait_s,
                              progress=(lambda values: progress(values, "emit")) if output == "text" else None)
    print(documents.json(report) if output == "json" else views.emit_text(report))
    return 0


async def bu(arguments: argparse.Namespace) -> int:
    if arguments.action == "list":
        return await args.show(arguments, queries.business_units, ["bu_id", "display_name", "parent_group", "cost_centre", "active"],
                               "no business units yet: `tokenhub registry FILE` or `tokenhub bu add`")
    unit = BusinessUnit(bu_id=arguments.bu_id, display_name=arguments.name, parent_group=arguments.group,
                        cost_centre=arguments.cost_centre, active=not arguments.inactive)
    return await _publish_change("business_unit", unit, unit.bu_id, arguments)


async def model(arguments: argparse.Namespace) -> int:
    if arguments.action == "list":
        return await args.show(arguments, queries.models, ["model_id", "provider_bu", "modality", "token_classes", "active"],
                               "no models yet: `tokenhub registry FILE` or `tokenhub model add`")
    entry = ModelEntry(model_id=arguments.model_id, provider_bu=arguments.provider, display_name=arguments.name,
                       modality=arguments.modality, token_classes=tuple(arguments.classes.split(",")),
                       active=not arguments.inactive)
    _refused(registry.check_change(entry, await args.query(queries.registry)), MODEL_OPTIONS)
    return await _publish_change("model", entry, entry.model_id, arguments)


def _payer(text: str) -> PayerShare:
    bu_id, _, percent = text.partition("=")
    try:
        return PayerShare(bu=bu_id, percent=Decimal(percent))
    except (InvalidOperation, ValueError) as error:
        raise CliError(f"--payer {text}: expected BU=PERCENT, for example taobao-tmall=30") from error


async def funding(arguments: argparse.Namespace) -> int:
    if arguments.action == "list":
        return await args.show(arguments, queries.funding_agreements, ["agreement_id", "consumer_bu", "app", "model_pattern",
                                                                        "payers", "effective_from", "effective_to"],
                               "no funding agreements: every consumer pays for itself")
    settings = load_settings()
    known = await args.query(queries.registry)
    if arguments.action == "end":
        _refused(registry.check_funding_end(arguments.agreement_id, known), FUNDING_OPTIONS)
        row = next(row for row in await args.query(queries.funding_agreements) if row["agreement_id"] == arguments.agreement_id)
        agreement = tools.ended_agreement(row, args.moment(arguments.as_of, "--as-of") or clock(settings))
    else:
        payers = tuple(_payer(text) for text in arguments.payer)
        _refused(registry.check_shares(payers), FUNDING_OPTIONS)
        agreement = FundingAgreement(
            agreement_id=arguments.agreement_id, consumer_bu=arguments.consumer, app=arguments.app,
            model_pattern=arguments.model_pattern, payers=payers,
            effective_from=args.moment(arguments.effective_from, "--from") or clock(settings),
            effective_to=args.moment(arguments.effective_to, "--to"))
        _refused(registry.check_change(agreement, known), FUNDING_OPTIONS)
    return await _publish_change("funding_agreement", agreement, agreement.agreement_id, arguments)


async def conversion(arguments: argparse.Namespace) -> int:
    if arguments.action == "publish":
        table = ConversionTable.model_validate(args.read_document(arguments.file))
        _refused(registry.check_change(table, await args.query(queries.registry)), {"version": f"{arguments.file}: version"})
        return await _publish_change("conversion_table", table, str(table.version), arguments)
    rows = await args.query(queries.conversion_tables)
    if args.output_format(arguments) == "json":
        print(documents.json(rows))
        return 0
    print(views.conversion_tables(rows, load_settings().timezone) if rows
          else "no conversion table yet: `tokenhub conversion publish FILE`")
    return 0


async def rejected_command(arguments: argparse.Namespace) -> int:
    settings = load_settings()
    if arguments.action == "list":
        try:
            page = await args.query(queries.rejected_page, reason_code=arguments.reason_code, source=arguments.source,
                                    after=_uuid(arguments.after) if arguments.after else None, limit=arguments.limit)
        except (queries.UnknownRejected, ValueError) as error:
            raise CliError(str(error)) from None
        print(documents.json({"rejected": page.rows, "total": page.total, "next_after": page.next_after})
              if args.output_format(arguments) == "json" else views.rejected_page(page, arguments.reason_code, settings.timezone))
        return 0
    if arguments.action == "stats":
        stats = await args.query(queries.rejected_stats)
        print(documents.json(views.rejected_stats_document(stats)) if args.output_format(arguments) == "json"
              else views.rejected_stats(stats))
        return 0
    rejected_id = _uuid(arguments.rejected_id)
    try:
        verdict = await tools.resubmit(settings, rejected_id, Path(arguments.file) if arguments.file else None,
                                       f"{args.actor(arguments)}: {arguments.reason}", arguments.wait_s)
    except tools.NoSuchRejected:
        raise CliError(f"no rejected usage {arguments.rejected_id}; `tokenhub rejected list` shows their ids") from None
    how = f"corrected from {arguments.file}" if arguments.file else "as it was"
    print(f"resubmitted {arguments.rejected_id} ({how}): {views.resubmitted(verdict, arguments.wait_s)}")
    return 1 if isinstance(verdict, queries.Rejection) else 0


def _uuid(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError as error:
        raise CliError(f"{text} is not a rejected usage id") from error


async def api_keys(arguments: argparse.Namespace) -> int:
    if arguments.action == "list":
        return await args.show(arguments, queries.api_keys, ["key_id", "sources", "actor", "reason", "created_at", "revoked_at"],
                               "no API keys yet: `tokenhub keys create`")
    if arguments.action == "create":
        key_id, key = await args.query(tools.create_key, arguments.source, args.actor(arguments), arguments.reason)
        print(f"key {key_id} for sources {', '.join(arguments.source)}:\n{key}\n"
              "It is shown once; only its SHA-256 is stored.")
        return 0
    if not await args.query(tools.revoke_key, arguments.key_id):
        raise CliError(f"no active key {arguments.key_id}; `tokenhub keys list` shows the keys and which are revoked")
    print(f"revoked key {arguments.key_id}")
    return 0


REGISTRY_WAIT: Final = args.arg("--wait", dest="wait_s", type=float, default=tools.REGISTRY_WAIT_S, metavar="SECONDS",
                                 help="how long to wait for metering to apply or refuse the change; 0 does not wait "
                                      f"(default: {tools.REGISTRY_WAIT_S:g})")


def _wait(what: str) -> args.Argument:
    return args.arg("--wait", dest="wait_s", type=float, default=tools.ANSWER_WAIT_S, metavar="SECONDS",
                    help=f"how long to wait for metering's answer{what}; 0 does not wait (default: {tools.ANSWER_WAIT_S:g})")


def register(subparsers: argparse._SubParsersAction) -> None:
    command, arg = args.command, args.arg
    command(subparsers, "emit", "send usage events and report what metering made of them", emit,
            arg("file", nargs="?", help="JSON-lines file of CloudEvents, - for stdin"),
            arg("--generate", type=int, metavar="N", help="generate N realistic events instead of reading a file"),
            arg("--seed", type=int, default=7, help="seed of the generated events: the same seed, the same events (default: 7)"),
            arg("--now", metavar="TIME", help=f"end of the generated day (default: now); {args.TIME_HELP}"),
            _wait(" to every event"), output=True,
            examples=("tokenhub emit usage.jsonl", "tokenhub emit --generate 1000 --seed 3",
                      "cat usage.jsonl | tokenhub emit - --wait 0"))
    command(subparsers, "registry", "publish business units, models, conversion tables and funding from a file", registry_import,
            arg("file", help="a YAML or JSON registry document (see infra/demo/registry.yaml)"), change=True,
            examples=("tokenhub registry infra/demo/registry.yaml --reason 'the demo registry'",), after=(REGISTRY_WAIT,))

    units = args.actions(subparsers, "bu", "business units")
    command(units, "add", "register or update a business unit", bu,
            arg("bu_id", help="its id: a slug, for example taobao-tmall"), arg("--name", required=True, help="its display name"),
            arg("--group", help="the group it belongs to"), arg("--cost-centre", help="its cost centre, for finance"),
            arg("--inactive", action="store_true", help="registered but no longer reporting usage"), change=True,
            examples=("tokenhub bu add fliggy --name Fliggy --group 'Alibaba China E-commerce' --reason 'new BU'",), after=(REGISTRY_WAIT,))
    command(units, "list", "every registered business unit", bu, output=True,
            examples=("tokenhub bu list", "tokenhub bu list --json"))

    models = args.actions(subparsers, "model", "models, tools and agents")
    command(models, "add", "register or update a model, tool or agent", model,
            arg("model_id", help="its id, as usage events name it"),
            arg("--provider", required=True, metavar="BU", help="the business unit that provides it"),
            arg("--modality", required=True, choices=("text", "embedding", "image", "video", "audio", "agent", "tool"),
                help="what it serves"),
            arg("--classes", required=True, help="comma-separated Token classes, for example input,cache_read,output"),
            arg("--name", help="its display name"), arg("--inactive", action="store_true", help="registered but no longer served"),
            change=True, examples=("tokenhub model add qwen-flash --provider qwen-platform --modality text "
                                   "--classes input,output --reason 'new model'",), after=(REGISTRY_WAIT,))
    command(models, "list", "every registered model, tool and agent", model, output=True,
            examples=("tokenhub model list --json",))

    agreements = args.actions(subparsers, "funding", "who pays for whom")
    command(agreements, "set", "create or replace a funding agreement", funding,
            arg("agreement_id", help="its id, for example quark-sponsorship"),
            arg("--consumer", required=True, metavar="BU", help="the business unit whose usage it funds"),
            arg("--app", help="only this app's usage (default: all of it)"),
            arg("--model-pattern", help="only models matching this shell-style pattern, for example qwen-*"),
            arg("--payer", action="append", required=True, metavar="BU=PERCENT",
                help="a payer and its share, repeated; the shares sum to 100"),
            args.time_option("--from", "effective_from", "in force from (default: now)"),
            args.time_option("--to", "effective_to", "in force until (default: open-ended)"), change=True,
            examples=("tokenhub funding set quark-sponsorship --consumer quark --payer ai-innovation=100 --reason 'incubation'",
                      "tokenhub funding set shared --consumer dingtalk --payer dingtalk=50 --payer cainiao=50 "
                      "--reason 'shared cost'"), after=(REGISTRY_WAIT,))
    command(agreements, "list", "every funding agreement", funding, output=True, examples=("tokenhub funding list",))
    command(agreements, "end", "end an agreement as of a time (default now)", funding,
            arg("agreement_id", help="the agreement's id"), args.as_of_option("the agreement ends at this time"), change=True,
            examples=("tokenhub funding end quark-sponsorship --reason 'graduated'",
                      "tokenhub funding end quark-sponsorship --as-of 2026-04-01T00:00:00+08:00 --reason 'graduated'"), after=(REGISTRY_WAIT,))

    tables = args.actions(subparsers, "conversion", "conversion tables: non-text units to Tokens")
    command(tables, "publish", "publish a conversion table version (YAML or JSON)", conversion,
            arg("file", help="the table: version, effective_from and rules"), change=True,
            examples=("tokenhub conversion publish conversion-v2.yaml --reason '4k images'",), after=(REGISTRY_WAIT,))
    command(tables, "show", "every conversion table version", conversion, output=True,
            examples=("tokenhub conversion show",))

    key_actions = args.actions(subparsers, "keys", "API keys for HTTP ingest")
    command(key_actions, "create", "a new key, bound to the sources it may report for", api_keys,
            arg("--source", action="append", required=True,
                help="a source or shell-style pattern it may report for, repeated, for example 'gateway/*'"), change=True,
            examples=("tokenhub keys create --source 'gateway/*' --reason 'gateway onboarding'",))
    command(key_actions, "list", "every key (never the key itself)", api_keys, output=True, examples=("tokenhub keys list",))
    command(key_actions, "revoke", "revoke a key: its requests are refused from now on", api_keys,
            arg("key_id", help="the key's id, as `tokenhub keys list` shows it"), examples=("tokenhub keys revoke 3f9c2a1b",))

    rejects = args.actions(subparsers, "rejected", "rejected usage, stored with its original bytes")
    command(rejects, "list", "rejected usage in order of arrival, a page at a time, with the total", rejected_command,
            arg("--reason", dest="reason_code", choices=tools.REJECTION_REASONS, metavar="REASON",
                help=f"only this reason: {', '.join(tools.REJECTION_REASONS)}"),
            arg("--source", help="only usage from this source, for example gateway/taobao"),
            arg("--limit", type=int, default=100, metavar="N",
                help=f"rows per page, 1 to {queries.REJECTED_SHOWN_MAX} (default: 100)"),
            arg("--after", metavar="REJECTED_ID", help="the last rejected id of the previous page"), output=True,
            examples=("tokenhub rejected list", "tokenhub rejected list --reason unknown_bu --json",
                      "tokenhub rejected list --limit 50 --after 9b2e6c1e-5d0a-4c8e-9f61-2a7d3e0b4c11"))
    command(rejects, "stats", "how much usage was rejected, by reason and by source", rejected_command, output=True,
            examples=("tokenhub rejected stats", "tokenhub rejected stats --json"))
    command(rejects, "resubmit", "send a rejected event back, as it was or corrected, and say what metering made of it",
            rejected_command, arg("rejected_id", help="its id, as `tokenhub rejected list` shows it"),
            arg("--file", help="the corrected event, one JSON CloudEvent (default: send it back as it was)"),
            _wait(""), change=True,
            examples=("tokenhub rejected resubmit 9b2e6c1e-5d0a-4c8e-9f61-2a7d3e0b4c11 --file fixed.json "
                      "--reason 'BU registered'",))
