"""`tokenhub demo`: a realistic day of AI usage across the company, end to end
(`bench.demo` runs it), printed section by section. Everything runs on an
injected clock and a seeded generator, so two runs print the same figures. The
demo's data stays in the state folder (`infra.state`) for `tokenhub up`, and
the last lines say how to open the dashboard on it."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import time
from pathlib import Path

from tokenhub.api.settings import PORT_DEFAULT
from tokenhub.bench.demo import EVENTS_DEFAULT, KEPT_SETTINGS, NOW, DemoResult, FinanceKey, run_demo, serve_dashboard
from tokenhub.bench.load import SEED_DEFAULT, pricebook_document
from tokenhub.cli import args, render
from tokenhub.contracts.pricebook import BookIndex, book_from_document
from tokenhub.cli.audit_commands import replay_text, verify_text
from tokenhub.cli.errors import CliError
from tokenhub.cli.invoicing_commands import render_settlement
from tokenhub.cli.stack import _already_running
from tokenhub.infra.pipeline import LocalPipeline
from tokenhub.infra.settings import STACK_ENV_FILE, Settings, load_settings
from tokenhub.infra.state import DEMO_ENV_FILE, DemoPlace, NoPlaceForDemo, demo_folder, demo_place
from tokenhub.infra.supervisor import AlreadyRunning
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
    place = _place(Path(load_settings().state_dir))
    print(_where(place), flush=True)

    async def show(result: DemoResult, pipeline: LocalPipeline) -> None:
        print(demo_text(result))
        if arguments.keep:
            print(f"\ndemo finished in {time.monotonic() - started:.0f} s.")
            access = await serve_dashboard(pipeline)
            assert result.finance_key is not None
            # Commands in other terminals in this folder find the stack, as they find `tokenhub up`'s.
            pipeline.stack.write_env_file(pipeline.state_dir / STACK_ENV_FILE, KEPT_SETTINGS)
            try:
                print(f"\ndashboard on the demo's data: {access.url}\n"
                      f"  {_key_line(result.finance_key)}\n"
                      f"  api {access.docs_url}; the data stays in {_shown(pipeline.state_dir)} for tokenhub up\n"
                      "Ctrl-C stops everything.", flush=True)
                await _until_stopped()
                print("stopping the demo's stack ...", flush=True)
            finally:
                (pipeline.state_dir / STACK_ENV_FILE).unlink(missing_ok=True)

    description = f"seed {arguments.seed}, {arguments.events} usage events"
    with demo_folder(place, KEPT_SETTINGS, description) as state_dir:
        result = await run_demo(arguments.events, arguments.seed, state_dir=state_dir,
                                say=lambda text: print(text, flush=True), progress=render.progress, then=show)
    if not arguments.keep:
        print(f"\ndemo finished in {time.monotonic() - started:.0f} s; everything stopped.")
        if result.finance_key is not None:
            print(_how_to_open(place, result.finance_key))
    return 0 if result.ok else 1


def _place(state_dir: Path) -> DemoPlace:
    try:
        return demo_place(state_dir)
    except AlreadyRunning as error:
        running = _already_running(error, error.state_dir, ZONE)  # as tokenhub up says it
        raise CliError(f"{running}: the demo keeps its data there; stop that stack first (Ctrl-C where it runs), "
                       "then run the demo again") from None
    except NoPlaceForDemo as error:
        raise CliError(str(error)) from None


def _shown(path: Path) -> str:
    """`path` as people typed it: relative to the working directory where it is inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _where(place: DemoPlace) -> str:
    folder = _shown(place.state_dir)
    if place.beside is not None:
        return (f"{_shown(place.beside)} holds a stack that is not a demo's: it is left as it is, "
                f"and the demo keeps its data in {folder} instead.")
    if place.replaces_demo:
        return f"replacing the previous demo's data in {folder} (each run starts afresh, so its figures are the same)."
    return f"the demo keeps its data in {folder}, for tokenhub up to start on."


def _key_line(key: FinanceKey) -> str:
    return f"sign in with this finance API key ({key.key_id}, shown once): {key.key}"


def _how_to_open(place: DemoPlace, key: FinanceKey) -> str:
    """The last lines: how to open the dashboard on the data the demo kept."""
    command = ".venv/bin/tokenhub" if Path(".venv/bin/tokenhub").exists() else "tokenhub"
    folder = _shown(place.state_dir)
    prefix = f"TOKENHUB_STATE_DIR={folder} " if place.beside is not None else ""
    port = os.environ.get("TOKENHUB_API_PORT") or PORT_DEFAULT
    return (f"The demo's data stays in {folder}; to open the dashboard on it:\n"
            f"  {prefix}{command} up      (in this folder; Ctrl-C stops it)\n"
            f"  then open http://127.0.0.1:{port}/dashboard/ (tokenhub up prints the address: "
            f"another port when {port} is taken)\n"
            f"  {_key_line(key)}\n"
            f"  another key, while it is up: {prefix}{command} apikey create --role finance --reason \"the demo\"\n"
            f"The stack keeps the demo's clock ({NOW.isoformat()}, in {folder}/{DEMO_ENV_FILE}), "
            f"so the pages show {NOW:%Y-%m}; the next tokenhub demo here replaces this data.")


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
                      help="after the run, keep the demo's stack up and serve the API and dashboard on its data until "
                           "Ctrl-C (without it, `tokenhub up` starts on the demo's data later)")
    args.examples(demo, "tokenhub demo", "tokenhub demo --events 2000 --seed 11")
    demo.set_defaults(handler=run)
