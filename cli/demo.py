"""`tokenhub demo`: a realistic day of AI usage across the company, end to end
(`bench.demo` runs it), printed section by section. Everything runs on an
injected clock and a seeded generator, so two runs print the same figures."""

from __future__ import annotations

import argparse
import asyncio
import signal
import time

from tokenhub.bench.demo import EVENTS_DEFAULT, NOW, DemoResult, run_demo, serve_dashboard
from tokenhub.bench.load import SEED_DEFAULT, pricebook_document
from tokenhub.cli import args, render
from tokenhub.contracts.pricebook import BookIndex, book_from_document
from tokenhub.cli.audit_commands import replay_text, verify_text
from tokenhub.cli.invoicing_commands import render_settlement
from tokenhub.infra.pipeline import LocalPipeline
from tokenhub.infra.settings import Settings
from tokenhub.services.common.logging import configure_logging

ZONE = Settings().timezone  # the demo runs in the default company zone


def _section(title: str) -> str:
    return f"\n== {title} " + "=" * max(0, 70 - len(title))


def _demo_books() -> BookIndex:
    """The one book the demo publishes, read from the same file, for naming
    which version and tier priced each invoice line."""
    book = book_from_document(pricebook_document(), actor="demo", reason="the demo's prices", retroactive=True,
                              published_at=NOW)
    return BookIndex.of([book])


def demo_text(result: DemoResult) -> str:
    figures = result.counters
    parts = [
        _section("pipeline"),
        f"metered {figures.get('metering.accepted', 0)} events into {figures.get('metering.consumed', 0)} "
        f"TokenConsumed (funding splits), rejected {figures.get('metering.rejected', 0)} with reasons, "
        f"priced {figures.get('pricing.priced', 0)}, posted {figures.get('ledger.posted', 0)}",
        _section("Tokens by class: text, image, video and agent usage"),
        render.table(["class", "models", "Tokens"], [[row.token_class, row.models, f"{row.tokens:,}"]
                                                     for row in result.tokens_by_class], right={2}),
        _section("shared costs: funding agreements applied"),
        render.table(["agreement", "consumer", "payer", "share %", "events", "Tokens"],
                     [[row.agreement, row.consumer_bu, row.payer_bu, row.share_percent, str(row.events), f"{row.tokens:,}"]
                      for row in result.funding_shares], right={3, 4, 5}),
        _section("balances per business unit (CNY, Tokens)"),
        render.balances_table(result.balances, "CNY"),
        _section(f"independent recomputation of {result.recomputed_bu}'s spend"),
        f"from the price book and the events: {result.recomputed_spend:f} CNY\n"
        f"ledger:                             {result.ledger_spend:f} CNY\n"
        f"{'MATCH' if result.recomputed_spend == result.ledger_spend else 'MISMATCH'}",
        _section(f"month end: {len(result.issued)} invoices issued for {result.month}"),
        render.invoice_list(result.invoices, ZONE),
        "",
        render.invoice_text(result.shown_invoice, ZONE, _demo_books()),
        _section(f"settlement between business units for {result.month}"),
        render_settlement(result.settlement, result.settlement_final),
        _section("replay from tokens.priced"),
        replay_text(result.replay),
        _section("audit: tokenhub verify"),
        verify_text(result.verify),
    ]
    return "\n".join(parts)


async def run(arguments: argparse.Namespace) -> int:
    started = time.monotonic()
    configure_logging(Settings(log_level="WARNING"))  # the demo speaks in tables; services log to files

    async def show(result: DemoResult, pipeline: LocalPipeline) -> None:
        print(demo_text(result))
        if arguments.keep:
            print(f"\ndemo finished in {time.monotonic() - started:.0f} s.")
            access = await serve_dashboard(pipeline)
            print(f"\ndashboard on the demo's data: {access.url}\n"
                  f"  sign in with this finance key ({access.key_id}): {access.key}\n"
                  f"  api {access.docs_url}; the data lives in {pipeline.state_dir} until you stop\n"
                  "Ctrl-C stops everything.", flush=True)
            await _until_stopped()
            print("stopping the demo's stack ...", flush=True)

    result = await run_demo(arguments.events, arguments.seed, say=lambda text: print(text, flush=True),
                            progress=render.progress, then=show)
    if not arguments.keep:
        print(f"\ndemo finished in {time.monotonic() - started:.0f} s; everything stopped.\n"
              "To see the demo's data in the dashboard: tokenhub demo --keep (the same run, then its stack stays up,\n"
              "serves the dashboard and prints a finance API key to sign in with; Ctrl-C stops everything).")
    return 0 if result.ok else 1


async def _until_stopped() -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signal_number, stopping.set)
    await stopping.wait()


def register(subparsers: argparse._SubParsersAction) -> None:
    demo = subparsers.add_parser("demo", help="run the whole pipeline on a realistic day and print the results")
    demo.add_argument("--events", type=int, default=EVENTS_DEFAULT, help=f"usage events in the day (default: {EVENTS_DEFAULT:,})")
    demo.add_argument("--seed", type=int, default=SEED_DEFAULT,
                      help=f"seed of the day's usage: the same seed, the same figures (default: {SEED_DEFAULT})")
    demo.add_argument("--keep", action="store_true",
                      help="after the run, keep the demo's stack up and serve the API and dashboard on its data until Ctrl-C")
    args.examples(demo, "tokenhub demo", "tokenhub demo --events 2000 --seed 11")
    demo.set_defaults(handler=run)
