"""The shape of every `--json` output, as JSON Schema: one document per command,
versioned, exported into `views/schemas/` (`make schemas`, the one place in
this package that writes a file) and checked against what the commands print
(tests/e2e/test_cli_json.py). The forms are the ones `documents.jsonable`
writes: amounts and Tokens as strings in plain notation, times in one RFC 3339
form (UTC, `Z`, microseconds), ids as strings.

A change that removes or retypes a field is a new version of that output (its
`$id` ends in the version); adding a field is not."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

from tokenhub.contracts.schema_export import write_documents

VERSION: Final = 1
SCHEMAS_DIR: Final = Path(__file__).parent / "schemas"
DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"

AMOUNT: Final = {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]+)?$", "description": "exact decimal, plain notation"}
TOKENS: Final = {"type": "string", "pattern": r"^-?[0-9]+$", "description": "a whole number of Tokens"}
TIME: Final = {"type": "string", "pattern": r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z$",
               "format": "date-time", "description": "RFC 3339, UTC, to the microsecond"}
TEXT: Final = {"type": "string"}
COUNT: Final = {"type": "integer", "minimum": 0}
FLAG: Final = {"type": "boolean"}
UUID: Final = {"type": "string", "pattern": r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"}
PERIOD: Final = {"type": "string", "pattern": r"^[0-9]{4}-([0-9]{2}|W[0-9]{2}|[0-9]{2}-[0-9]{2}|[0-9]{2}-W[0-9]{2})$"}


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def record(properties: dict[str, Any], *, optional: tuple[str, ...] = (), closed: bool = True) -> dict[str, Any]:
    """An object with these fields, every one present unless `optional`."""
    return {"type": "object", "properties": properties,
            "required": [name for name in properties if name not in optional],
            "additionalProperties": not closed}


def many(item: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": item}


def figures() -> dict[str, Any]:
    return record({"spend": AMOUNT, "revenue": AMOUNT, "net": AMOUNT, "tokens_consumed": TOKENS, "tokens_served": TOKENS},
                  optional=("net",))


CHANGE: Final = {"actor": TEXT, "reason": TEXT}

INVOICE_LINE: Final = record({
    "kind": {"enum": ["usage", "adjustment", "credit", "period_tier"]}, "period": PERIOD, "provider_bu": TEXT,
    "consumer_bu": TEXT, "model": TEXT, "token_class": nullable(TEXT), "tokens": TOKENS,
    "unit_price_per_million": nullable(AMOUNT), "amount": AMOUNT,
    "overage": {"anyOf": [{"const": True}, {"type": "null"}],
                "description": "true: usage posted while the payer's quota was exhausted, in the total like any line"},
    "price_source": nullable(record({"book_id": TEXT, "version": COUNT, "context_tier": nullable(TEXT)})),
}, closed=False)

INVOICE: Final = record({
    "invoice_id": UUID, "payer_bu": TEXT, "period": PERIOD, "period_start": TIME, "period_end": TIME, "number": COUNT,
    "status": {"enum": ["draft", "issued", "credited"]}, "currency": TEXT, "lines": many(INVOICE_LINE),
    "consumer_subtotals": {"type": "object", "additionalProperties": AMOUNT}, "subtotal": AMOUNT, "rounding": AMOUNT,
    "total": AMOUNT, "rounding_mode": {"enum": ["half_even", "half_up", "down", "up"]}, "postings_count": COUNT,
    "chain_heads": many(record({"chain": TEXT, "sequence": COUNT, "entry_hash": TEXT})), "issued_at": nullable(TIME),
}, optional=("issued_at",), closed=False)

REGISTRY_ROW: Final = {"changed_at": TIME, **CHANGE}

OUTPUTS: Final[dict[str, tuple[str, dict[str, Any]]]] = {
    "balance": ("balances per business unit", many(record({
        "bu": TEXT, "display_name": TEXT, "spend": AMOUNT, "revenue": AMOUNT, "net": AMOUNT,
        "tokens_consumed": TOKENS, "tokens_served": TOKENS}))),
    "budget show": ("budgets in force with month-to-date spend", many(record({
        "payer_bu": TEXT, "consumer_bu": nullable(TEXT), "period": PERIOD, "budget_id": UUID, "amount": AMOUNT,
        "currency": TEXT, "thresholds_percent": many(AMOUNT), "hard_limit": nullable(AMOUNT), "spent": AMOUNT,
        "used_percent": AMOUNT, "thresholds_crossed": many(AMOUNT), "quota_exhausted": FLAG, "set_at": TIME,
        "period_from": PERIOD, **CHANGE}))),
    "emit": ("what metering made of the usage sent (null figures: not waited for)", record({
        "sent": COUNT, "waited_s": {"type": "number"}, "accepted": nullable(COUNT), "duplicates": nullable(COUNT),
        "rejected": nullable(COUNT), "rejected_by_reason": nullable({"type": "object", "additionalProperties": COUNT}),
        "unanswered": nullable(COUNT)})),
    "bu list": ("registered business units", many(record({
        "bu_id": TEXT, "display_name": TEXT, "parent_group": nullable(TEXT), "cost_centre": nullable(TEXT),
        "active": FLAG, **REGISTRY_ROW}))),
    "model list": ("registered models, tools and agents", many(record({
        "model_id": TEXT, "provider_bu": TEXT, "display_name": nullable(TEXT), "modality": TEXT,
        "token_classes": many(TEXT), "active": FLAG, **REGISTRY_ROW}))),
    "funding list": ("funding agreements", many(record({
        "agreement_id": TEXT, "consumer_bu": TEXT, "app": nullable(TEXT), "model_pattern": nullable(TEXT),
        "payers": many(record({"bu": TEXT, "percent": AMOUNT})), "effective_from": TIME, "effective_to": nullable(TIME),
        **REGISTRY_ROW}))),
    "conversion show": ("conversion table versions", many(record({
        "version": COUNT, "effective_from": TIME,
        "rules": many(record({"unit": TEXT, "token_class": TEXT, "tokens_per_unit": AMOUNT})),
        "published_at": TIME, **CHANGE}))),
    "keys list": ("API keys for HTTP ingest (never the keys)", many(record({
        "key_id": TEXT, "sources": many(TEXT), "created_at": TIME, "revoked_at": nullable(TIME), **CHANGE}))),
    "rejected list": ("one page of rejected usage in order of arrival, how many match, and the next page's --after",
                      record({"rejected": many(record({
                          "rejected_id": UUID, "reason_code": TEXT, "message": TEXT, "usage_source": nullable(TEXT),
                          "usage_id": nullable(TEXT), "topic": TEXT, "received_at": TIME, "resubmitted_at": nullable(TIME),
                          "resubmitted_by": nullable(TEXT), "size": COUNT})),
                          "total": COUNT, "next_after": nullable(UUID)})),
    "rejected stats": ("rejected usage counted by reason and by source", record({
        "total": COUNT, "by_reason": {"type": "object", "additionalProperties": COUNT},
        "by_source": {"type": "object", "additionalProperties": COUNT}, "other_sources": COUNT})),
    "pricebook show": ("the prices in force for each model", many(record({
        "book_id": TEXT, "version": COUNT, "effective_from": TIME, "currency": TEXT, "model": TEXT,
        "unit_prices_per_million": {"type": "object", "additionalProperties": AMOUNT}}, closed=False))),
    "pricing parked": ("consumption waiting for a price", many(record({
        "consumed_id": UUID, "payer_bu": TEXT, "model": TEXT, "event_time": TIME, "parked_at": TIME, "reason": TEXT}))),
    "reprice": ("what a repricing corrected", record({
        "examined": COUNT, "corrected": COUNT, "events": COUNT, "unpriceable": COUNT, "difference": AMOUNT})),
    "invoice list": ("invoices, each line with the book version and tier that priced it", many(INVOICE)),
    "invoice show": ("invoices, each line with the book version and tier that priced it", many(INVOICE)),
    "spend": ("month-to-date spend and the period tier reached", record({
        "bu": TEXT, "period": PERIOD, "period_start": TIME, "period_end": TIME, "spend": AMOUNT,
        "overage": AMOUNT,
        "lines": many(record({"consumer_bu": TEXT, "app": TEXT, "model": TEXT, "token_class": TEXT, "tokens": TOKENS,
                              "amount": AMOUNT, "overage": AMOUNT})),
        "period_tiers": many(record({"model": TEXT, "tokens": TOKENS, "charge": AMOUNT}))})),
    "settle": ("a month's settlement: matrix, net positions, transfers", record({
        "final": FLAG, "period": PERIOD, "currency": TEXT,
        "positions": {"type": "object", "additionalProperties": AMOUNT},
        "rounded_positions": {"type": "object", "additionalProperties": AMOUNT},
        "transfers": many(record({"from_bu": TEXT, "to_bu": TEXT, "amount": AMOUNT}, closed=False)),
        "matrix": many(record({"payer_bu": TEXT, "provider_bu": TEXT, "amount": AMOUNT}, closed=False))},
        closed=False)),
    "plan list": ("plans of period tiers", many(record({
        "plan_id": UUID, "payer_bu": TEXT, "book_id": TEXT, "model": TEXT, "provider_bu": TEXT, "first_month": PERIOD,
        "last_month": nullable(PERIOD), "ended_by": nullable(TEXT), "end_reason": nullable(TEXT),
        "ended_at": nullable(TIME)}, closed=False))),
    "replay": ("balances rebuilt from the log, and how they differ from the ledger's", record({
        "ok": FLAG, "source": {"enum": ["topic", "archive"]}, "as_of": nullable(TIME), "bu": nullable(TEXT),
        "events": COUNT, "conflicting_copies": COUNT,
        "differences": many(record({"bu": TEXT, "figure": TEXT, "rebuilt": AMOUNT, "projected": AMOUNT, "row": TEXT})),
        "balances": {"type": "object", "additionalProperties": figures()},
        "reprice": record({"recomputed": COUNT, "adjustments_kept": COUNT, "mismatches": many({"type": "object"}),
                           "unrecomputable": many({"type": "object"}), "differences": many({"type": "object"})})},
        optional=("reprice",))),
    "verify": ("every check, with every violation", record({
        "ok": FLAG, "scope": nullable(TEXT),
        "checks": many(record({"name": TEXT, "title": TEXT, "ok": FLAG, "examined": COUNT, "skipped": nullable(TEXT),
                               "violations": many(record({"subject": TEXT, "detail": TEXT}))}))})),
    "statement": ("the entries behind a balance, with opening and closing figures", record({
        "bu": TEXT, "from": TIME, "to": TIME, "by": {"enum": ["event-time", "posting-time"]},
        "opening": figures(), "movements": figures(), "closing": figures(), "truncated": FLAG, "overage": AMOUNT,
        "entries": many(record({
            "entry_id": TEXT, "priced_id": TEXT, "kind": TEXT, "corrects_id": nullable(TEXT), "chain": TEXT,
            "sequence": COUNT, "event_time": TIME, "posted_at": TIME, "payer_bu": TEXT, "consumer_bu": TEXT,
            "provider_bu": TEXT, "app": nullable(TEXT), "model": TEXT, "amount": AMOUNT, "tokens": TOKENS,
            "effect": figures(), "overage": FLAG}))})),
    "status": ("the local stack's processes, lags and faults; running false when nothing runs here",
               record({"state_dir": TEXT}, closed=False)),
    "apikey create": ("a new API key, shown once", record({
        "key_id": TEXT, "key": TEXT, "role": TEXT, "bu": nullable(TEXT), "owner": TEXT})),
    "apikey list": ("API keys of the HTTP API (never the keys)", many(record({
        "key_id": TEXT, "role": TEXT, "bu": nullable(TEXT), "owner": TEXT, "created_at": TIME,
        "expires_at": nullable(TIME), "revoked_at": nullable(TIME), "reason": TEXT}, closed=False))),
    "api bench-quota": ("latency of the quota check", {"type": "object"}),
}


def file_name(command: str) -> str:
    return f"{command.replace(' ', '-')}.schema.json"


def schema(command: str) -> dict[str, Any]:
    title, shape = OUTPUTS[command]
    return {"$schema": DIALECT, "$id": f"urn:tokenhub:cli:{command.replace(' ', '-')}:v{VERSION}",
            "title": f"tokenhub {command} --json", "description": title, **shape}


def documents() -> dict[str, str]:
    return {file_name(command): json.dumps(schema(command), indent=2, sort_keys=True) + "\n" for command in OUTPUTS}


def export(directory: Path = SCHEMAS_DIR) -> list[Path]:
    return write_documents(directory, documents())


if __name__ == "__main__":
    for path in export():
        print(path.name)
