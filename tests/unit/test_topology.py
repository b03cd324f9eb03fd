"""The topology declared in `contracts/topics.py` is the one the code runs:
every subscription and every topic a service publishes to is declared for that
service, every declared topic is used, and README's tables are generated from
the declaration. Adding a subscription or an outbox topic without declaring it
fails here."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from tokenhub.contracts import schema_export, topics
from tokenhub.contracts.topics import (
    ALL_TOPICS,
    EVERY_SERVICE_PRODUCES,
    FROM_OUTSIDE,
    SERVICES,
    TOPOLOGY,
    TopologyError,
    require_consumes,
    stage,
)
from tokenhub.infra.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SERVICES_DIR = ROOT / "services"
TOPIC_CONSTANTS = {name: value for name, value in vars(topics).items() if isinstance(value, topics.TopicSpec)}
REGENERATE = "run `make schemas`, which writes the tables from contracts/topics.py"
# Calls that name a topic without publishing to it.
NOT_PUBLISHING = {"subscribe", "require_consumes", "subscriber", "pack"}  # pack: the type of a payload stored (contracts.stored)


class TopicReferences(ast.NodeVisitor):
    """The topic constants a module names, and the ones it publishes to: a
    topic constant (or its `.name`) as the first argument of a call, or as a
    `topic=` keyword, is where a record goes (`OutboxRow(TOKENS_PRICED.name, ...)`,
    `producer.send(DEAD_LETTER.name, ...)`)."""

    def __init__(self) -> None:
        self.aliases: dict[str, str] = {}  # local name -> constant name
        self.modules: set[str] = set()  # local names of the topics module
        self.named: set[str] = set()
        self.published: set[str] = set()

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        for alias in node.names:
            if node.module == "tokenhub.contracts.topics" and alias.name in TOPIC_CONSTANTS:
                self.aliases[alias.asname or alias.name] = alias.name
            if node.module == "tokenhub.contracts" and alias.name == "topics":
                self.modules.add(alias.asname or alias.name)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name == "tokenhub.contracts.topics" and alias.asname:
                self.modules.add(alias.asname)

    def constant(self, node: ast.AST) -> str | None:
        if isinstance(node, ast.Attribute) and node.attr == "name":
            node = node.value
        if isinstance(node, ast.Name) and node.id in self.aliases:
            return self.aliases[node.id]
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in self.modules
                and node.attr in TOPIC_CONSTANTS):
            return node.attr
        return None

    def visit_Name(self, node: ast.Name) -> None:
        if node.id in self.aliases:
            self.named.add(self.aliases[node.id])

    def visit_Attribute(self, node: ast.Attribute) -> None:
        found = self.constant(node)
        if found:
            self.named.add(found)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        callee = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        if callee not in NOT_PUBLISHING:
            candidates = node.args[:1] + [keyword.value for keyword in node.keywords if keyword.arg == "topic"]
            self.published.update(name for name in map(self.constant, candidates) if name)
        self.generic_visit(node)


def references(source: str) -> TopicReferences:
    visitor = TopicReferences()
    tree = ast.parse(source)
    for node in ast.walk(tree):  # imports anywhere in the module, local ones included, before the uses
        if isinstance(node, ast.Import | ast.ImportFrom):
            visitor.visit(node)
    visitor.visit(tree)
    return visitor


def topic_names(constants: set[str]) -> set[str]:
    return {TOPIC_CONSTANTS[name].name for name in constants}


def scan(folder: Path) -> tuple[set[str], set[str]]:
    """(named, published) topic names over every module in `folder`."""
    named: set[str] = set()
    published: set[str] = set()
    for path in sorted(folder.rglob("*.py")):
        found = references(path.read_text())
        named |= topic_names(found.named)
        published |= topic_names(found.published)
    return named, published


def subscriptions(service: str) -> set[str]:
    """What the service's running code subscribes to: the FastStream app's
    subscribers, and for the ledger the partitions its own consumer assigns."""
    settings = Settings(bootstrap_servers="127.0.0.1:9", database_url="postgresql://tokenhub@localhost/tokenhub")
    app = importlib.import_module(f"tokenhub.services.{service}.app").build(settings)
    subscribed = {topic.name for subscriber in app.broker.subscribers for topic in subscriber.topics}
    if service == "ledger":
        consumer = importlib.import_module("tokenhub.services.ledger.consumer")
        subscribed |= set(consumer.TOPICS) | set(consumer.HANDLERS)
    return subscribed


def declared(specs: tuple[topics.TopicSpec, ...]) -> set[str]:
    return {spec.name for spec in specs}


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_subscribes_to_exactly_its_declared_inputs(service: str) -> None:
    assert subscriptions(service) == declared(stage(service).consumes), (
        f"{service}'s subscriptions differ from its inputs in contracts/topics.py TOPOLOGY")


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_publishes_to_exactly_its_declared_outputs(service: str) -> None:
    named, published = scan(SERVICES_DIR / service)
    outputs = declared(stage(service).produces)
    undeclared = published - outputs - declared(EVERY_SERVICE_PRODUCES)
    assert not undeclared, f"{service} publishes to {sorted(undeclared)}: declare them in contracts/topics.py TOPOLOGY"
    assert outputs <= published, f"{service} is declared to produce {sorted(outputs - published)} but never publishes there"
    strangers = named - outputs - declared(stage(service).consumes) - declared(EVERY_SERVICE_PRODUCES)
    assert not strangers, f"{service} names {sorted(strangers)}, which are neither its inputs nor its outputs"


def test_shared_service_code_publishes_only_what_every_service_may() -> None:
    _, published = scan(SERVICES_DIR / "common")
    assert published == declared(EVERY_SERVICE_PRODUCES)


def test_the_scan_sees_an_undeclared_output() -> None:
    """The check above can fail: a pricing module that stages an invoice is caught."""
    source = (
        "from tokenhub.contracts.topics import INVOICES_ISSUED as ISSUED, TOKENS_PRICED\n"
        "from tokenhub.contracts import topics\n"
        "rows = [OutboxRow(ISSUED.name, b'', b''), OutboxRow(TOKENS_PRICED.name, b'', b'')]\n"
        "producer.send(topic=topics.BUDGET_ALERTS.name)\n"
        "subscribe(broker, runtime, topics.LEDGER_POSTED.name, 'g', handle)\n"
    )
    found = references(source)
    assert topic_names(found.published) == {"invoices.issued", "tokens.priced", "budget.alerts"}
    assert topic_names(found.named) == {"invoices.issued", "tokens.priced", "budget.alerts", "ledger.posted"}


def test_wiring_refuses_an_undeclared_subscription() -> None:
    require_consumes("pricing", topics.TOKENS_CONSUMED.name)
    with pytest.raises(TopologyError, match="pricing subscribes to ledger.posted.*declare it in TOPOLOGY"):
        require_consumes("pricing", topics.LEDGER_POSTED.name)
    with pytest.raises(TopologyError, match="no service 'billing'"):
        stage("billing")


def test_every_topic_has_a_place_and_every_input_a_producer() -> None:
    produced = {spec.name for each in TOPOLOGY for spec in each.produces} | set(FROM_OUTSIDE)
    produced |= declared(EVERY_SERVICE_PRODUCES)
    consumed = {spec.name for each in TOPOLOGY for spec in each.consumes}
    assert consumed <= produced, f"nothing produces {sorted(consumed - produced)}"
    assert produced | consumed == {spec.name for spec in ALL_TOPICS}
    assert all(spec.carries for spec in ALL_TOPICS), "say what each topic carries"


def test_the_processes_run_the_declared_services() -> None:
    from tokenhub.infra.processes import SERVICES as RUN

    assert tuple(RUN) == SERVICES


@pytest.mark.parametrize("document", schema_export.TOPOLOGY_DOCUMENTS)
def test_documents_show_the_declared_topology(document: str) -> None:
    text = (ROOT / document).read_text()
    for name, table in schema_export.TOPOLOGY_TABLES.items():
        assert f"<!-- topology:{name} " in text, f"{document} has no {name} table"
        assert table() in text, f"{document}'s {name} table drifted: {REGENERATE}"
    assert schema_export.with_tables(text) == text, f"{document} drifted: {REGENERATE}"
