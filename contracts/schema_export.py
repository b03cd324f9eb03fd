"""Export the JSON Schema of every event, and an AsyncAPI document, into
`contracts/schemas/`. Run `python -m tokenhub.contracts.schema_export` (or
`make schemas`) after changing a model; a test fails while they drift."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

from pydantic import BaseModel

from tokenhub.contracts import events, registry, settlement, topics

SCHEMAS_DIR: Final = Path(__file__).parent / "schemas"

# Which model travels on which topic. Topics without a model here carry events
# whose models live with the feature that publishes them.
TOPIC_MODELS: Final[dict[str, type[BaseModel]]] = {
    topics.USAGE_REPORTED.name: events.UsageReported,
    topics.USAGE_REJECTED.name: events.UsageRejected,
    topics.TOKENS_CONSUMED.name: events.TokenConsumed,
    topics.TOKENS_PRICED.name: events.Priced,
    topics.PRICEBOOK_PUBLISHED.name: events.PriceBookPublished,
    topics.REGISTRY_CHANGED.name: registry.RegistryChanged,
    topics.LEDGER_POSTED.name: events.LedgerPosted,
    topics.INVOICES_ISSUED.name: events.InvoiceIssued,
    topics.SETTLEMENTS_NETTED.name: settlement.SettlementNetted,
}


def schema_name(model: type[BaseModel]) -> str:
    return f"{model.__name__}.schema.json"


def _dump(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def documents() -> dict[str, str]:
    """File name -> content, for every schema and the AsyncAPI document."""
    models = list(dict.fromkeys([*events.EVENT_MODELS, *TOPIC_MODELS.values()]))
    files = {schema_name(model): _dump(model.model_json_schema(mode="serialization")) for model in models}
    files["asyncapi.json"] = _dump(asyncapi())
    return files


def asyncapi() -> dict[str, Any]:
    channels: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for spec in topics.ALL_TOPICS:
        channel: dict[str, Any] = {
            "address": spec.name,
            "description": f"key: {spec.key}; partitions: {spec.partitions}; retention.ms: {spec.retention_ms}",
        }
        model = TOPIC_MODELS.get(spec.name)
        if model is not None:
            messages[model.__name__] = {"name": model.__name__, "contentType": "application/json",
                                        "payload": {"$ref": f"./{schema_name(model)}"}}
            channel["messages"] = {model.__name__: {"$ref": f"#/components/messages/{model.__name__}"}}
        channels[spec.name.replace(".", "_")] = channel
    return {
        "asyncapi": "3.0.0",
        "info": {"title": "Token Hub", "version": "1.0.0",
                 "description": "Usage metered in Tokens, priced, posted to a double-entry ledger and billed."},
        "defaultContentType": "application/json",
        "channels": channels,
        "components": {"messages": messages},
    }


def export(directory: Path = SCHEMAS_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, content in documents().items():
        path = directory / name
        if not path.exists() or path.read_text() != content:
            path.write_text(content)
        written.append(path)
    return written


def main() -> None:
    for path in export():
        print(path.name)


if __name__ == "__main__":
    main()
