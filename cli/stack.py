"""`tokenhub up`, `run` and `init`: the local stack and the services."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import signal
import sys
from pathlib import Path
from typing import Final

import structlog

from tokenhub.api.settings import api_port
from tokenhub.cli import args
from tokenhub.cli.errors import CliError
from tokenhub.infra.deployment import recorded_currency
from tokenhub.infra.boot import prepare
from tokenhub.infra.embedded import StackError
from tokenhub.infra.kafka.stack import open_stack
from tokenhub.infra.pipeline import with_http_port
from tokenhub.infra.processes import SERVICES
from tokenhub.infra.settings import load_settings
from tokenhub.infra.state import DEMO_ENV_FILE, kept_settings
from tokenhub.infra.status import stack_status
from tokenhub.infra.supervisor import AlreadyRunning, GaveUp, StackSupervisor, lock_holder
from tokenhub.views import documents, stack as views

__all__ = ["SERVICES", "init", "up", "run_service", "status", "register"]

EXIT_GAVE_UP: Final = 1
EXIT_NOT_RUNNING: Final = 3

log = structlog.get_logger()


async def init(arguments: argparse.Namespace) -> int:
    settings = load_settings()
    bootstrap_servers, database_url = settings.require_stack()
    print(views.prepared(await prepare(bootstrap_servers, database_url)))
    return 0


async def run_service(arguments: argparse.Namespace) -> int:
    settings = load_settings()
    settings.require_stack()
    module = importlib.import_module(f"tokenhub.services.{arguments.service}.app")
    await module.build(settings).run()
    return 0


async def up(arguments: argparse.Namespace) -> int:
    settings = load_settings()
    state_dir = Path(settings.state_dir)
    holder = lock_holder(state_dir)
    if holder is not None:  # checked again under the lock: this is only the early, clear answer
        raise CliError(views.already_running(AlreadyRunning(state_dir, holder.get("pid"), holder.get("since")),
                                              state_dir, settings.timezone))
    stack = open_stack(arguments.broker, state_dir=state_dir, durable=True, brokers=arguments.brokers)
    # On a demo's data, the demo's clock (the environment's settings go first).
    kept = {name: value for name, value in kept_settings(state_dir).items() if name not in os.environ}
    supervisor = StackSupervisor(stack, state_dir, {**with_http_port({}), "TOKENHUB_API_PORT": str(api_port())},
                                 say=lambda line: print(line, flush=True), services=(*SERVICES, "api"),
                                 optional=frozenset({"api"}), shared=kept)
    try:
        await supervisor.start()
    except AlreadyRunning as error:
        raise CliError(views.already_running(error, state_dir, settings.timezone)) from None
    environment = supervisor.environment
    currency = await recorded_currency(stack.endpoints.database_url)
    print(views.up(bootstrap_servers=stack.endpoints.bootstrap_servers, database_url=stack.endpoints.database_url,
                   currency=currency, clock=views.clock_line(os.environ.get("TOKENHUB_NOW"), kept.get("TOKENHUB_NOW"),
                                                             state_dir / DEMO_ENV_FILE),
                   services=SERVICES, state_dir=state_dir, http_port=environment["TOKENHUB_HTTP_PORT"],
                   api_port=environment["TOKENHUB_API_PORT"]), flush=True)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signal_number, stopping.set)
    try:
        await supervisor.watch(stopping)
    except (GaveUp, StackError) as error:
        print(f"tokenhub up: giving up: {error}; stopping everything", file=sys.stderr, flush=True)
        return EXIT_GAVE_UP
    finally:
        await asyncio.to_thread(supervisor.stop)
    return 0


async def status(arguments: argparse.Namespace) -> int:
    settings = load_settings()
    state_dir = Path(settings.state_dir)
    output = args.output_format(arguments)
    report = await stack_status(state_dir, settings) if lock_holder(state_dir) else None
    if report is None:
        if output == "json":
            print(documents.json({"state_dir": str(state_dir), "running": False}))
        else:
            print(f"Token Hub is not running in {state_dir} (start it with tokenhub up)")
        return EXIT_NOT_RUNNING
    if output == "json":
        print(documents.json(report.as_json()))
        return 0
    print(views.status(report, settings.timezone))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    command, arg = args.command, args.arg
    command(subparsers, "up", "start the embedded stack and all four services in the foreground", up,
            arg("--broker", choices=("tansu", "kafka"), default="tansu",
                help="tansu: the embedded broker (default); kafka: Apache Kafka (KRaft) from Maven Central, "
                     "secured with SASL/SCRAM and TLS, under the state folder's kafka/"),
            arg("--brokers", type=int, default=3, help="Apache Kafka nodes (--broker kafka; default: 3)"),
            examples=("tokenhub up", "tokenhub up --broker kafka --brokers 3"))
    command(subparsers, "status", "the local stack: every process, its restarts, each service's lag and recent faults", status,
            output=True, examples=("tokenhub status", "tokenhub status --json"),
            description="What `tokenhub up` in this folder supervises: each process with its pid, state and restarts; "
                        "each service's lag (records on its input topics not handled yet; a lower bound on the embedded "
                        "broker) and outbox (events stored, not yet published); the faults it recovered from. "
                        "Exits 3 when nothing runs here.")
    command(subparsers, "run", "run one service (what docker-compose and tokenhub up start)", run_service,
            arg("service", choices=SERVICES, help=f"the service: {', '.join(SERVICES)}"), examples=("tokenhub run metering",))
    command(subparsers, "init", "create topics and apply migrations (what docker-compose's init runs)", init,
            examples=("tokenhub init",))
