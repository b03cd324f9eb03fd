"""The ledger's operations for tools (the CLI, the HTTP API, tests): budgets are
set by publishing them on budgets.configured, which the ledger consumes."""

from __future__ import annotations

from tokenhub.contracts.budgets import BudgetSet
from tokenhub.contracts.canonical import canonical_json
from tokenhub.contracts.topics import BUDGETS_CONFIGURED
from tokenhub.infra.settings import Settings
from tokenhub.services.common.kafka import send_events


async def publish_budget(settings: Settings, budget: BudgetSet) -> None:
    await send_events(settings.require_stack()[0], BUDGETS_CONFIGURED.name, [(budget.payer_bu.encode(), canonical_json(budget))],
                      settings=settings)
