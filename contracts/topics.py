"""Every topic, its key and its settings, in one place."""

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


USAGE_REPORTED: Final = TopicSpec("usage.reported", key="consumer BU")
USAGE_REJECTED: Final = TopicSpec("usage.rejected", key="usage source", retention_ms=90 * DAY_MS)
TOKENS_CONSUMED: Final = TopicSpec("tokens.consumed", key="payer BU")
TOKENS_PRICED: Final = TopicSpec("tokens.priced", key="payer BU")
PRICEBOOK_PUBLISHED: Final = TopicSpec("pricebook.published", key="book id", partitions=1)
REGISTRY_CHANGED: Final = TopicSpec("registry.changed", key="entity id", partitions=1)
LEDGER_POSTED: Final = TopicSpec("ledger.posted", key="payer BU")
BUDGET_ALERTS: Final = TopicSpec("budget.alerts", key="payer BU", partitions=1)
BUDGETS_CONFIGURED: Final = TopicSpec("budgets.configured", key="payer BU", partitions=1)
INVOICES_ISSUED: Final = TopicSpec("invoices.issued", key="payer BU", partitions=1)
SETTLEMENTS_NETTED: Final = TopicSpec("settlements.netted", key="period", partitions=1)
DEAD_LETTER: Final = TopicSpec("deadletter", key="source topic", partitions=1, retention_ms=90 * DAY_MS)

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
    INVOICES_ISSUED,
    SETTLEMENTS_NETTED,
    DEAD_LETTER,
)
