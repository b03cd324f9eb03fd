"""`tokenhub up`, `run` and `init`: the local stack and the services."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import signal
from pathlib import Path

import structlog

from tokenhub.api.settings import api_port
from tokenhub.infra.boot import prepare
from tokenhub.infra.pipeline import with_http_port
from tokenhub.infra.processes import SERVICES, ServiceProcesses
from tokenhub.infra.settings import STACK_ENV_FILE, load_settings, settings_for

__all__ = ["SERVICES", "init", "up", "run_service", "register"]

log = structlog.get_logger()


async def init(arguments: argparse.Namespace) -> int:
    settings = load_settings()
    bootstrap_servers, database_url = settings.require_stack()
    report = await prepare(bootstrap_servers, database_url)
    print(f"topics and migrations ready ({len(report.migrations)} migrations applied, "
          f"{len(report.topics_created)} topics created, {report.republished_total} produced events republished)")
    return 0


async def run_service(arguments: argparse.Namespace) -> int:
    settings = load_settings()
    settings.require_stack()
    module = importlib.import_module(f"tokenhub.services.{arguments.service}.app")
    await module.build(settings).run()
    return 0


async def up(arguments: argparse.Namespace) -> int:
    from tokenhub.infra.kafka.stack import open_stack, stack_environment

    settings = load_settings()
    state_dir = Path(settings.state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    stack = open_stack(arguments.broker, state_dir=state_dir, durable=True, brokers=arguments.brokers)
    endpoints = stack.start()
    environment = with_http_port(stack_environment(stack) | _service_env(endpoints.bootstrap_servers, endpoints.database_url))
    environment["TOKENHUB_API_PORT"] = str(api_port())
    services = ServiceProcesses(environment, state_dir / "logs", (*SERVICES, "api"))
    try:
        await prepare(endpoints.bootstrap_servers, endpoints.database_url, settings_for(environment))
        stack.write_env_file(state_dir / STACK_ENV_FILE)
        services.start()
        print(
            "Token Hub is up.\n"
            f"  broker    {endpoints.bootstrap_servers}\n"
            f"  database  {endpoints.database_url}\n"
            f"  services  {', '.join(SERVICES)} (logs in {state_dir / 'logs'})\n"
            f"  ingest    http://127.0.0.1:{environment['TOKENHUB_HTTP_PORT']}/v1/events (API keys: tokenhub keys create)\n"
            f"  api       http://127.0.0.1:{environment['TOKENHUB_API_PORT']}/docs (keys: tokenhub apikey create --role finance --reason ...)\n"
            "In another terminal in this folder: tokenhub emit --generate 1000, tokenhub balance\n"
            "Ctrl-C stops everything.",
            flush=True,
        )
        await _wait_for_signal(services)
    finally:
        services.stop()
        (state_dir / STACK_ENV_FILE).unlink(missing_ok=True)
        stack.stop()
    return 0


def _service_env(bootstrap_servers: str, database_url: str) -> dict[str, str]:
    return {"TOKENHUB_BOOTSTRAP_SERVERS": bootstrap_servers, "TOKENHUB_DATABASE_URL": database_url}


async def _wait_for_signal(services: ServiceProcesses) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signal_number, stopping.set)
    while not stopping.is_set():
        exited = services.exited()
        if exited:
            log.error("service_exited", services=exited)
            for name in exited:
                service = name
                services.processes.pop(name)
                services.start(service)  # a crashed service is restarted; its effects are idempotent
        try:
            await asyncio.wait_for(stopping.wait(), timeout=1.0)
        except TimeoutError:
            continue


def register(subparsers: argparse._SubParsersAction) -> None:
    up_parser = subparsers.add_parser("up", help="start the embedded stack and all four services in the foreground")
    up_parser.add_argument("--broker", choices=("tansu", "kafka"), default="tansu",
                           help="tansu: the embedded broker (default); kafka: Apache Kafka (KRaft) from Maven Central, "
                                "secured with SASL/SCRAM and TLS, under the state folder's kafka/")
    up_parser.add_argument("--brokers", type=int, default=3, help="Apache Kafka nodes (--broker kafka)")
    up_parser.set_defaults(handler=up)
    run = subparsers.add_parser("run", help="run one service")
    run.add_argument("service", choices=SERVICES)
    run.set_defaults(handler=run_service)
    subparsers.add_parser("init", help="create topics and apply migrations").set_defaults(handler=init)
