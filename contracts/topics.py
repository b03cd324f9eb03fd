"""Every topic, its key and its settings, and which service consumes and
produces it: the pipeline's topology, declared once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

DAY_MS: Final = 24 * 60 * 60 * 1000

# Four partitions let two instances of each service share the work on two
# cores while keeping per-key ordering; a real cluster raises this (see README).
PARTITIONS_DEFAULT: Final = 4


@dataclass(frozen=True)
class TopicSpec:
    name: str
    key: str  # what the record key is, for readers
    partitions: int = PARTITIONS_DEFAULT
    retention_ms: int = -1  # -1 keeps the public log forever: replay and audit read it
    replication_factor: int = 1
    carries: str = ""  # what a record is, for readers (README, AsyncAPI)
    cleanup_policy: str = "delete"  # compact: a key's latest record is what the topic holds


USAGE_REPORTED: Final = TopicSpec("usage.reported", key="consumer BU",
                                  carries="CloudEvents 1.0 usage (structured or binary mode)")
USAGE_REJECTED: Final = TopicSpec("usage.rejected", key="usage source", retention_ms=90 * DAY_MS,
                                  carries="`UsageRejected`: reason code, message, reference to the stored original")
TOKENS_CONSUMED: Final = TopicSpec("tokens.consumed", key="payer BU",
                                   carries="`TokenConsumed`: one payer's Tokens per class")
TOKENS_PRICED: Final = TopicSpec("tokens.priced", key="payer BU",
                                 carries="`Priced`: lines per class, total, book version; period-tier adjustments")
PRICEBOOK_PUBLISHED: Final = TopicSpec("pricebook.published", key="book id", partitions=1,
                                       carries="`PriceBookPublished`: one effective-dated version")
REGISTRY_CHANGED: Final = TopicSpec("registry.changed", key="entity id", partitions=1,
                                    carries="`RegistryChanged`: business units, models, conversion tables, funding agreements")
LEDGER_POSTED: Final = TopicSpec("ledger.posted", key="payer BU",
                                 carries="`LedgerPosted`: postings, chain sequence and hash")
BUDGET_ALERTS: Final = TopicSpec("budget.alerts", key="payer BU", partitions=1,
                                 carries="threshold crossings, quota exhausted / restored")
BUDGETS_CONFIGURED: Final = TopicSpec("budgets.configured", key="payer BU", partitions=1,
                                      carries="`BudgetSet`: a monthly budget, thresholds, hard limit (actor, reason)")
QUOTA_STATE: Final = TopicSpec("quota.state", key="payer BU", partitions=1, cleanup_policy="compact",
                               carries="`QuotaStateChanged`: a payer's current quota (limit, spent, remaining, "
                                       "allowed or exhausted), the latest per payer")
INVOICES_ISSUED: Final = TopicSpec("invoices.issued", key="payer BU", partitions=1, carries="`InvoiceIssued`")
SETTLEMENTS_NETTED: Final = TopicSpec("settlements.netted", key="period", partitions=1,
                                      carries="`SettlementNetted`: net positions and transfers between BUs")
DEAD_LETTER: Final = TopicSpec("deadletter", key="source topic", partitions=1, retention_ms=90 * DAY_MS,
                               carries="records that failed their bounded retries, with the reason")

ALL_TOPICS: Final = (
    USAGE_REPORTED,
    USAGE_REJECTED,
    TOKENS_CONSUMED,
    TOKENS_PRICED,
    PRICEBOOK_PUBLISHED,
    REGISTRY_CHANGED,
    LEDGER_POSTED,
    BUDGET_ALERTS,
    BUDGETS_CONFIGURED,
    QUOTA_STATE,
    INVOICES_ISSUED,
    SETTLEMENTS_NETTED,
    DEAD_LETTER,
)


# The topology: which service consumes and produces which topic, declared once.
# Services never call each other; these topics are their only coupling, so this
# table is the architecture (docs/architecture.md, "The pipeline"). The wiring
# refuses to subscribe a service to a topic not declared here, and
# tests/unit/test_topology.py holds every subscription and every topic a
# service publishes to against it, and README's tables against it too.


class TopologyError(ValueError):
    """Code and the declared topology disagree."""


@dataclass(frozen=True)
class Stage:
    """One service's place in the pipeline."""

    service: str
    consumes: tuple[TopicSpec, ...]
    produces: tuple[TopicSpec, ...]
    why: str  # one line for readers: what the service does with them


TOPOLOGY: Final = (
    Stage("metering", consumes=(USAGE_REPORTED, REGISTRY_CHANGED),
          produces=(TOKENS_CONSUMED, USAGE_REJECTED, USAGE_REPORTED),
          why="validates usage, dedups it, turns it into Tokens and splits it among payers; "
              "puts usage it accepted over HTTP on usage.reported"),
    Stage("pricing", consumes=(TOKENS_CONSUMED, PRICEBOOK_PUBLISHED), produces=(TOKENS_PRICED,),
          why="prices each payer's Tokens with the book version in force at event time"),
    Stage("ledger", consumes=(TOKENS_PRICED, BUDGETS_CONFIGURED), produces=(LEDGER_POSTED, BUDGET_ALERTS, QUOTA_STATE),
          why="posts double entries, hash-chained per payer, watches budgets, marks usage posted over quota "
              "and publishes each payer's quota state"),
    Stage("invoicing", consumes=(LEDGER_POSTED, PRICEBOOK_PUBLISHED),
          produces=(INVOICES_ISSUED, SETTLEMENTS_NETTED, TOKENS_PRICED),
          why="closes periods into invoices, posts period-tier lines back as priced adjustments, nets settlements"),
)

EVERY_SERVICE_PRODUCES: Final = (DEAD_LETTER,)
"""Records that failed their bounded retries, from whichever service held them."""

FROM_OUTSIDE: Final = {
    USAGE_REPORTED.name: "producers (Kafka, the client, `tokenhub emit`)",
    REGISTRY_CHANGED.name: "people, through `tokenhub`",
    PRICEBOOK_PUBLISHED.name: "people, through `tokenhub`",
    BUDGETS_CONFIGURED.name: "people, through `tokenhub`",
}
"""Topics no service produces: usage from gateways, agents and tools, and
configuration that people publish, each change with its actor and reason
(docs/architecture.md, decision 12)."""

SERVICES: Final = tuple(stage.service for stage in TOPOLOGY)


def stage(service: str) -> Stage:
    for each in TOPOLOGY:
        if each.service == service:
            return each
    raise TopologyError(f"no service {service!r} in the topology; one of {', '.join(SERVICES)}")


def require_consumes(service: str, topic: str) -> None:
    """Raise unless `service` is declared to consume `topic`: called where a
    subscription is wired, so an undeclared one fails at start, not in review."""
    declared = stage(service).consumes
    if topic not in {spec.name for spec in declared}:
        raise TopologyError(
            f"{service} subscribes to {topic}, which contracts/topics.py does not declare as its input "
            f"(declared: {', '.join(spec.name for spec in declared)}); declare it in TOPOLOGY first")


def producers_of(topic: str) -> tuple[str, ...]:
    return tuple(each.service for each in TOPOLOGY if any(spec.name == topic for spec in each.produces))


def consumers_of(topic: str) -> tuple[str, ...]:
    return tuple(each.service for each in TOPOLOGY if any(spec.name == topic for spec in each.consumes))


def _names(specs: tuple[TopicSpec, ...]) -> str:
    return ", ".join(f"`{spec.name}`" for spec in specs)


def services_table() -> str:
    """README's and docs/architecture.md's table of services, from TOPOLOGY."""
    lines = ["| service | consumes | produces | does |", "|---|---|---|---|"]
    lines += [f"| {each.service} | {_names(each.consumes)} | {_names(each.produces)} | {each.why} |" for each in TOPOLOGY]
    return "\n".join(lines)


def topics_table() -> str:
    """README's table of topics, from ALL_TOPICS and TOPOLOGY."""
    lines = ["| topic | key | carries | produced by | consumed by |", "|---|---|---|---|---|"]
    for spec in ALL_TOPICS:
        produced = ([FROM_OUTSIDE[spec.name]] if spec.name in FROM_OUTSIDE else []) + list(producers_of(spec.name))
        if spec in EVERY_SERVICE_PRODUCES:
            produced.append("every service")
        consumed = consumers_of(spec.name) or ("downstream subscribers",)
        lines.append(f"| `{spec.name}` | {spec.key} | {spec.carries} | {', '.join(produced)} | {', '.join(consumed)} |")
    return "\n".join(lines)
