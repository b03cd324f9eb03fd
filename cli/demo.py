"""`tokenhub demo`: a realistic day of AI usage across the company, end to end
(`bench.demo` runs it), printed section by section. Everything runs on an
injected clock and a seeded generator, so two runs print the same figures. The
demo's data stays in the state folder (`infra.state`) for `tokenhub up`, and
the last lines say how to open the dashboard on it."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from tokenhub.api.settings import PORT_DEFAULT
from tokenhub.bench.demo import (EVENTS_DEFAULT, KEPT_SETTINGS, NOW, DemoResult, FinanceKey, demo_books, run_demo,
                                 serve_dashboard, until_stopped)
from tokenhub.bench.load import SEED_DEFAULT
from tokenhub.cli import args, render
from tokenhub.cli.errors import CliError
from tokenhub.infra.pipeline import LocalPipeline
from tokenhub.infra.settings import STACK_ENV_FILE, Settings, load_settings
from tokenhub.infra.state import DEMO_ENV_FILE, DemoPlace, NoPlaceForDemo, demo_folder, demo_place
from tokenhub.infra.supervisor import AlreadyRunning
from tokenhub.services.common.logging import configure_logging

ZONE = Settings().timezone  # the demo runs in the default company zone


async def run(arguments: argparse.Namespace) -> int:
    started = time.monotonic()
    configure_logging(Settings(log_level="WARNING"))  # the demo speaks in tables; services log to files
    place = _place(Path(load_settings().state_dir))
    print(_where(place), flush=True)

    async def show(result: DemoResult, pipeline: LocalPipeline) -> None:
        print(render.demo(result, ZONE, demo_books()))
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
                await until_stopped()
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
        running = render.already_running(error, error.state_dir, ZONE)  # as tokenhub up says it
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
