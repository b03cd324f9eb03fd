"""Export the JSON Schema of every event, and an AsyncAPI document, into
`contracts/schemas/`, and write the topology's tables into README.md and
docs/architecture.md. Run `python -m tokenhub.contracts.schema_export` (or
`make schemas`) after changing a model or the topology; tests fail while
they drift."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Final

from pydantic import BaseModel

from tokenhub.contracts import budgets, events, registry, settlement, topics

SCHEMAS_DIR: Final = Path(__file__).parent / "schemas"
REPOSITORY: Final = Path(__file__).resolve().parent.parent
TOPOLOGY_DOCUMENTS: Final = ("README.md", "docs/architecture.md")
TOPOLOGY_TABLES: Final = {"services": topics.services_table, "topics": topics.topics_table}
"""Each table sits between `<!-- topology:NAME ... -->` and `<!-- /topology:NAME -->`."""

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
    topics.BUDGETS_CONFIGURED.name: budgets.BudgetSet,
    topics.QUOTA_STATE.name: budgets.QuotaStateChanged,
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
            "description": f"{spec.carries}; key: {spec.key}; partitions: {spec.partitions}; retention.ms: {spec.retention_ms}"
                           + (f"; cleanup.policy: {spec.cleanup_policy}" if spec.cleanup_policy != "delete" else ""),
        }
        model = TOPIC_MODELS.get(spec.name)
        if model is not None:
            messages[model.__name__] = {"name": model.__name__, "contentType": "application/json",
                                        "payload": {"$ref": f"./{schema_name(model)}"}}
            channel["messages"] = {model.__name__: {"$ref": f"#/components/messages/{model.__name__}"}}
        channels[_channel(spec)] = channel
    return {
        "asyncapi": "3.0.0",
        "info": {"title": "Token Hub", "version": "1.0.0",
                 "description": "Usage metered in Tokens, priced, posted to a double-entry ledger and billed."},
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations(),
        "components": {"messages": messages},
    }


def _channel(spec: topics.TopicSpec) -> str:
    return spec.name.replace(".", "_")


def operations() -> dict[str, Any]:
    """The topology (`contracts.topics.TOPOLOGY`) as AsyncAPI operations: who
    receives from and who sends to each channel."""
    found: dict[str, Any] = {}
    for stage in topics.TOPOLOGY:
        for action, specs in (("receive", stage.consumes), ("send", stage.produces)):
            for spec in specs:
                found[f"{stage.service}_{action}s_{_channel(spec)}"] = {
                    "action": action, "channel": {"$ref": f"#/channels/{_channel(spec)}"},
                    "summary": f"{stage.service} {'consumes' if action == 'receive' else 'produces'} {spec.name}"}
    return found


def write_documents(directory: Path, named: dict[str, str]) -> list[Path]:
    """Write each document under its file name where it differs from what is
    there; the files written (the CLI's output schemas are written the same way)."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, content in named.items():
        path = directory / name
        if not path.exists() or path.read_text() != content:
            path.write_text(content)
            written.append(path)
    return written


def export(directory: Path = SCHEMAS_DIR) -> list[Path]:
    return write_documents(directory, documents())


def with_tables(text: str) -> str:
    """`text` with every marked topology table replaced by its current form."""
    for name, table in TOPOLOGY_TABLES.items():
        pattern = re.compile(rf"(<!-- topology:{name}\b[^>]*-->\n)(?:.*?\n)?(<!-- /topology:{name} -->)", re.DOTALL)
        text = pattern.sub(lambda match: f"{match.group(1)}{table()}\n{match.group(2)}", text)
    return text


def write_tables(repository: Path = REPOSITORY) -> list[Path]:
    """Rewrite the topology tables in the documents of a source checkout."""
    written = []
    for name in TOPOLOGY_DOCUMENTS:
        path = repository / name
        if not path.exists():
            continue  # an installed package has no documents to keep
        text = path.read_text()
        if with_tables(text) != text:
            path.write_text(with_tables(text))
            written.append(path)
    return written


def main() -> None:
    for path in export():
        print(path.name)
    for path in write_tables():
        print(path.relative_to(REPOSITORY))


if __name__ == "__main__":
    main()
