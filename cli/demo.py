"""`tokenhub demo`: a realistic day of AI usage across the company, end to end
(`bench.demo` runs it), printed section by section (`views.demo`). Everything
runs on an injected clock and a seeded generator, so two runs print the same
figures. The demo's data stays in the state folder (`infra.state`) for
`tokenhub up`, and the last lines say how to open the dashboard on it."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from tokenhub.api.settings import PORT_DEFAULT
from tokenhub.bench.demo import (EVENTS_DEFAULT, KEPT_SETTINGS, NOW, DashboardAccess, DemoResult, demo_books, keep_serving,
                                 run_demo)
from tokenhub.bench.load import SEED_DEFAULT
from tokenhub.cli import args
from tokenhub.cli.errors import CliError
from tokenhub.cli.progress import progress
from tokenhub.infra.pipeline import LocalPipeline
from tokenhub.infra.settings import Settings, load_settings
from tokenhub.infra.state import DEMO_ENV_FILE, DemoPlace, NoPlaceForDemo, demo_folder, demo_place
from tokenhub.infra.supervisor import AlreadyRunning
from tokenhub.services.common.logging import configure_logging
from tokenhub.views import demo as views
from tokenhub.views.stack import already_running

ZONE = Settings().timezone  # the demo runs in the default company zone


async def run(arguments: argparse.Namespace) -> int:
    started = time.monotonic()
    configure_logging(Settings(log_level="WARNING"))  # the demo speaks in tables; services log to files
    place = _place(Path(load_settings().state_dir))
    beside = _shown(place.beside) if place.beside is not None else None
    print(views.where(_shown(place.state_dir), beside, place.replaces_demo), flush=True)

    async def show(result: DemoResult, pipeline: LocalPipeline) -> None:
        print(views.demo(result, ZONE, demo_books()))
        if arguments.keep:
            print(f"\ndemo finished in {time.monotonic() - started:.0f} s.")
            assert result.finance_key is not None
            key = result.finance_key

            def announce(access: DashboardAccess) -> None:
                print(views.kept_up(access.url, access.docs_url, key, _shown(pipeline.state_dir)), flush=True)

            await keep_serving(pipeline, announce)
            print("stopping the demo's stack ...", flush=True)

    description = f"seed {arguments.seed}, {arguments.events} usage events"
    with demo_folder(place, KEPT_SETTINGS, description) as state_dir:
        result = await run_demo(arguments.events, arguments.seed, state_dir=state_dir,
                                say=lambda text: print(text, flush=True), progress=progress, then=show)
    if not arguments.keep:
        print(f"\ndemo finished in {time.monotonic() - started:.0f} s; everything stopped.")
        if result.finance_key is not None:
            print(views.how_to_open(
                _shown(place.state_dir), elsewhere=place.beside is not None,
                command=".venv/bin/tokenhub" if Path(".venv/bin/tokenhub").exists() else "tokenhub",
                port=os.environ.get("TOKENHUB_API_PORT") or str(PORT_DEFAULT), key=result.finance_key, now=NOW,
                demo_env_file=DEMO_ENV_FILE))
    return 0 if result.ok else 1


def _place(state_dir: Path) -> DemoPlace:
    try:
        return demo_place(state_dir)
    except AlreadyRunning as error:
        running = already_running(error, error.state_dir, ZONE)  # as tokenhub up says it
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


def register(subparsers: argparse._SubParsersAction) -> None:
    arg = args.arg
    args.command(
        subparsers, "demo", "run the whole pipeline on a realistic day and print the results", run,
        arg("--events", type=int, default=EVENTS_DEFAULT, help=f"usage events in the day (default: {EVENTS_DEFAULT:,})"),
        arg("--seed", type=int, default=SEED_DEFAULT,
            help=f"seed of the day's usage: the same seed, the same figures (default: {SEED_DEFAULT})"),
        arg("--keep", action="store_true",
            help="after the run, keep the demo's stack up and serve the API and dashboard on its data until "
                 "Ctrl-C (without it, `tokenhub up` starts on the demo's data later)"),
        examples=("tokenhub demo", "tokenhub demo --events 2000 --seed 11"))
