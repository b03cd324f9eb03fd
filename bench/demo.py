"""The demo's scenario: a realistic day of AI usage across the company, end
to end on the embedded stack, on an injected clock and a seeded generator so
that two runs give the same figures. It feeds the day, waits for the pipeline
to settle, closes the month, replays and verifies, and returns every figure;
`tokenhub demo` prints them. Its stack's data stays in the state folder it is
given (`infra.state`), with a finance API key and the demo's verify and replay
runs, so the dashboard that `tokenhub up` serves there shows all of it."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Final, TypeVar

import asyncpg

from tokenhub.api import keys
from tokenhub.api.adapters import store as api_store
from tokenhub.api.routes.audit import replay_report, verify_report
from tokenhub.api.settings import api_port
from tokenhub.audit.replay import ReplayReport, replay
from tokenhub.audit.verify import VerifyReport, verify
from tokenhub.bench.load import (
    BAD_EVENTS,
    CONSUMERS,
    DAY_END_DEFAULT,
    SEED_DEFAULT,
    ZONE,
    generate_usage,
    pricebook_document,
    recompute_spend,
    seed_company,
)
from tokenhub.client import UsageClient
from tokenhub.contracts.canonical import canonical_json
from tokenhub.contracts.events import InvoiceIssued, UsageReported
from tokenhub.contracts.periods import parse
from tokenhub.contracts.pricebook import BookIndex, book_from_document
from tokenhub.contracts.settlement import SettlementNetted
from tokenhub.infra.embedded import wait_for_port
from tokenhub.infra.pipeline import LocalPipeline, counters, settled, wait_until
from tokenhub.infra.settings import STACK_ENV_FILE, Settings
from tokenhub.services.common.db import create_pool
from tokenhub.services.common.outbox import relay_now
from tokenhub.services.invoicing import queries as invoicing_queries
from tokenhub.services.invoicing.handlers import SCHEMA as INVOICING_SCHEMA, close_period
from tokenhub.services.ledger import queries as ledger_queries
from tokenhub.services.ledger.queries import Balance
from tokenhub.services.metering import queries as metering_queries
from tokenhub.services.metering.queries import ClassTokens, FundingShare

EVENTS_DEFAULT: Final = 4_000
DAY: Final = datetime(2026, 3, 14, tzinfo=ZONE)
SETUP_TIME: Final = datetime(2026, 2, 27, 9, 0, tzinfo=ZONE)  # finance publishes March prices in February
NOW: Final = DAY_END_DEFAULT  # just after the demo day
SETTLE_TIMEOUT_S: Final = 150.0
REPLAY_IDLE_TIMEOUT_S: Final = 3.0
RECOMPUTED_BU: Final = "cainiao"
"""Pays only for itself (no funding agreement names it), so its spend can be recomputed from the files alone."""
INVOICE_SHOWN_BU: Final = "dingtalk"
"""Its invoice is printed whole: funded by others in part, with agent and reasoning lines."""
ACTOR: Final = "finance-ops"
API_START_TIMEOUT_S: Final = 60.0
KEPT_SETTINGS: Final = {"TOKENHUB_NOW": NOW.isoformat()}
"""What the demo's stack runs with and its state folder keeps (`infra.state`):
its clock, so the dashboard's month to date is the demo's month."""

T = TypeVar("T")


@dataclass(frozen=True)
class FinanceKey:
    key_id: str
    key: str
    """Shown once: only its SHA-256 is stored."""


@dataclass(frozen=True)
class DemoResult:
    usage_events: int
    malformed_events: int
    consumers: int
    counters: dict[str, int]
    tokens_by_class: list[ClassTokens]
    funding_shares: list[FundingShare]
    balances: list[Balance]
    recomputed_bu: str
    recomputed_spend: Decimal
    """`recomputed_bu`'s spend from the price book and the events alone."""
    ledger_spend: Decimal
    month: str
    issued: list[InvoiceIssued]
    invoices: list[InvoiceIssued]
    """The month's invoices as `tokenhub invoice list` shows them."""
    settlement: SettlementNetted
    settlement_final: bool
    replay: ReplayReport
    verify: VerifyReport
    finance_key: FinanceKey | None = None
    """A key stored with the demo's data, to sign in to the dashboard with."""

    @property
    def shown_invoice(self) -> InvoiceIssued:
        return next(invoice for invoice in self.issued if invoice.payer_bu == INVOICE_SHOWN_BU)

    @property
    def ok(self) -> bool:
        return self.replay.ok and self.verify.ok


def _as_is(items: Sequence[T], label: str) -> Iterable[T]:
    return items


async def run_demo(events_count: int = EVENTS_DEFAULT, seed: int = SEED_DEFAULT, *, state_dir: Path | None = None,
                   say: Callable[[str], None] = lambda text: None,
                   progress: Callable[[Sequence[T], str], Iterable[T]] = _as_is,
                   then: Callable[[DemoResult, LocalPipeline], Awaitable[None]] | None = None) -> DemoResult:
    """Start the embedded stack and the four services, feed the day, close the
    month, replay and verify; everything is stopped before it returns. The
    stack's data stays in `state_dir` (a temporary folder, dropped, when None).
    `say` hears what it is doing, `progress` wraps the events as they are sent,
    and `then` gets the result while the stack still runs (to serve the dashboard on it)."""
    environment = {**KEPT_SETTINGS, "TOKENHUB_LOG_LEVEL": "WARNING"}
    if state_dir is not None:
        # The services read this folder's files (stack.env), not the working directory's state folder's.
        state_dir = state_dir.resolve()
        environment["TOKENHUB_STATE_DIR"] = str(state_dir)
    pipeline = LocalPipeline(state_dir=state_dir, env=environment)
    try:
        say("starting the embedded broker, PostgreSQL and the four services ...")
        endpoints = await pipeline.start()
        settings = Settings(bootstrap_servers=endpoints.bootstrap_servers, database_url=endpoints.database_url, now=NOW)
        await seed_company(settings, actor=ACTOR, registry_reason="company registry for the demo",
                           book_reason="March internal transfer prices", at=SETUP_TIME, published_at=SETUP_TIME,
                           retroactive=False)
        events = generate_usage(events_count, seed=seed)
        values = [(event.data.consumer_bu.encode(), canonical_json(event)) for event in events]
        values += [(b"quark", bad) for bad in BAD_EVENTS]
        say(f"feeding {len(events)} usage events of {DAY:%Y-%m-%d} from {len(CONSUMERS)} business units "
            f"(and {len(BAD_EVENTS)} malformed ones) ...")
        async with UsageClient(endpoints.bootstrap_servers) as client:
            await client.send_raw(progress(values, "usage sent"))
        connection = await asyncpg.connect(endpoints.database_url)
        try:
            async def done() -> bool:
                return settled(await counters(connection), len(values))
            await wait_until(done, SETTLE_TIMEOUT_S, "the pipeline to settle")
            figures = await counters(connection)
        finally:
            await connection.close()
        pool = await create_pool(endpoints.database_url, size_max=2)
        try:
            result = await _gather(pool, settings, len(events), events, figures)
            result = replace(result, finance_key=await keep_for_dashboard(pool, result))
        finally:
            await pool.close()
        if then is not None:
            await then(result, pipeline)
        return result
    finally:
        pipeline.stop()


async def _gather(pool: asyncpg.Pool, settings: Settings, usage_events: int, events: list[UsageReported],
                  figures: dict[str, int]) -> DemoResult:
    by_class = await metering_queries.tokens_by_class(pool)
    shared = await metering_queries.funding_shares(pool)
    balances = await ledger_queries.balances(pool, names=await metering_queries.display_names(pool))
    ledger_spend = next(row.spend for row in balances if row.bu == RECOMPUTED_BU)
    month = f"{DAY:%Y-%m}"
    # The demo's month ends after its day: closed early, on purpose.
    issued = await close_period(pool, settings, month, actor=ACTOR, now=NOW, early=True)
    # invoices.issued and settlements.netted, published now as `tokenhub invoice close` does
    await relay_now(pool, settings.bootstrap_servers or "", INVOICING_SCHEMA, client_id="tokenhub-invoice-close",
                    settings=settings)
    listed = await invoicing_queries.invoices(pool, settings, bu=None, period=month)
    settlement, final = await invoicing_queries.settlement(pool, settings, parse(month, settings.timezone))
    replayed = await replay(pool, settings.bootstrap_servers, source="topic", idle_timeout_s=REPLAY_IDLE_TIMEOUT_S)
    verified = await verify(pool, settings.bootstrap_servers, minor_units=settings.currency_minor_units,
                            zone=settings.timezone, idle_timeout_s=REPLAY_IDLE_TIMEOUT_S)
    return DemoResult(usage_events, len(BAD_EVENTS), len(CONSUMERS), figures, by_class, shared, balances, RECOMPUTED_BU,
                      recompute_spend(events, RECOMPUTED_BU), ledger_spend, month, issued, listed, settlement, final,
                      replayed, verified)


async def keep_for_dashboard(pool: asyncpg.Pool, result: DemoResult) -> FinanceKey:
    """A finance key to sign in to the dashboard with, and the demo's verify and
    replay as audit runs for its Audit page, stored in the API's schema with the
    demo's data. Keys and runs go by the wall clock, as the API's own do."""
    now = datetime.now(UTC)
    async with pool.acquire() as connection, connection.transaction():
        key_id, key = await keys.create(connection, "finance", None, ACTOR, "the demo's dashboard", now, None)
        for kind, report in (("verify", verify_report(result.verify)), ("replay", replay_report(result.replay))):
            run_id = uuid.uuid4()
            await api_store.insert_run(connection, run_id, kind, None, ACTOR, now)
            await api_store.finish_run(connection, run_id, now, report["ok"], report, None)
    return FinanceKey(key_id, key)


@dataclass(frozen=True)
class DashboardAccess:
    url: str
    docs_url: str


async def serve_dashboard(pipeline: LocalPipeline) -> DashboardAccess:
    """Start the API and its dashboard on the demo's stack."""
    assert pipeline.services is not None
    port = api_port()
    pipeline.services.start("api", extra_env={"TOKENHUB_API_PORT": str(port)})
    await asyncio.to_thread(wait_for_port, "127.0.0.1", port, API_START_TIMEOUT_S, pipeline.state_dir / "logs" / "api.log")
    return DashboardAccess(f"http://127.0.0.1:{port}/dashboard/", f"http://127.0.0.1:{port}/docs")


def demo_books() -> BookIndex:
    """The one book the demo publishes, read from the same file, for naming
    which version and tier priced each invoice line."""
    book = book_from_document(pricebook_document(), actor="demo", reason="the demo's prices", retroactive=True,
                              published_at=NOW)
    return BookIndex.of([book])


async def until_stopped() -> None:
    """Until SIGINT or SIGTERM: a kept demo stays up until then."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signal_number, stopping.set)
    await stopping.wait()


async def keep_serving(pipeline: LocalPipeline, announce: Callable[[DashboardAccess], None]) -> None:
    """`tokenhub demo --keep`: the API and dashboard on the demo's stack, which
    commands in other terminals find as they find `tokenhub up`'s, until SIGINT
    or SIGTERM; `announce` hears where the dashboard is, once it answers."""
    access = await serve_dashboard(pipeline)
    pipeline.stack.write_env_file(pipeline.state_dir / STACK_ENV_FILE, KEPT_SETTINGS)
    try:
        announce(access)
        await until_stopped()
    finally:
        (pipeline.state_dir / STACK_ENV_FILE).unlink(missing_ok=True)
