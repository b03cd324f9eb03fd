"""The API as a process against the session's stack, keys of every role, and
the CLI run as a person runs it (for comparing figures to the last digit)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest_asyncio

from tokenhub.api import keys
from tokenhub.api.settings import READER_ROLE, WRITER_ROLE
from tokenhub.infra.embedded import free_port
from tokenhub.infra.pipeline import wait_until

READY_TIMEOUT_S = 90.0
CLI_TIMEOUT_S = 120


@dataclass
class RunningApi:
    url: str
    process: subprocess.Popen[bytes]
    database_url: str
    bootstrap_servers: str
    log_path: Path
    keys: dict[str, str] = field(default_factory=dict)

    async def key(self, role: str, bu: str | None = None, *, owner: str = "tests", expires_at: datetime | None = None) -> str:
        name = f"{role}:{bu}:{owner}"
        if name not in self.keys or expires_at is not None:
            connection = await asyncpg.connect(self.database_url)
            try:
                _, key = await keys.create(connection, role, bu, owner, "API tests", datetime.now(UTC), expires_at)
            finally:
                await connection.close()
            if expires_at is not None:
                return key
            self.keys[name] = key
        return self.keys[name]

    def cli(self, *arguments: str, text: bool = False) -> Any:
        """`tokenhub ... --json` as a person runs it; its JSON (`text`: what it printed)."""
        environment = {name: value for name, value in os.environ.items() if not name.startswith("TOKENHUB_")}
        environment.update({"TOKENHUB_BOOTSTRAP_SERVERS": self.bootstrap_servers, "TOKENHUB_DATABASE_URL": self.database_url})
        result = subprocess.run([sys.executable, "-m", "tokenhub.cli.main", *arguments], env=environment, capture_output=True,
                                text=True, timeout=CLI_TIMEOUT_S)
        if result.returncode != 0:
            raise AssertionError(f"tokenhub {' '.join(arguments)}: {result.stderr}")
        return result.stdout if text else json.loads(result.stdout)


async def role_urls(database_url: str) -> dict[str, str]:
    """The API's two roles with passwords, so the API logs in as they would on a
    server that asks for one (testcontainers' PostgreSQL); the embedded one trusts."""
    connection = await asyncpg.connect(database_url)
    urls = {}
    try:
        for role, variable in ((READER_ROLE, "TOKENHUB_API_READER_URL"), (WRITER_ROLE, "TOKENHUB_API_WRITER_URL")):
            password = f"{role}-tests"
            await connection.execute(f"alter role {role} password '{password}'")
            parts = urlsplit(database_url)
            host = parts.netloc.rpartition("@")[2]
            urls[variable] = urlunsplit((parts.scheme, f"{role}:{password}@{host}", parts.path, parts.query, parts.fragment))
    finally:
        await connection.close()
    return urls


async def start_api(bootstrap_servers: str, database_url: str, log_dir: Path, extra_env: dict[str, str] | None = None,
                    *, until_ready: bool = True) -> RunningApi:
    """The API as a process, once it answers: ready (database, broker, quota state
    and webhooks), or with `until_ready=False` once it is up (/healthz)."""
    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"api-{port}.log"
    environment = {name: value for name, value in os.environ.items() if not name.startswith("TOKENHUB_")}
    environment.update({"TOKENHUB_BOOTSTRAP_SERVERS": bootstrap_servers, "TOKENHUB_DATABASE_URL": database_url,
                        "TOKENHUB_API_PORT": str(port), **await role_urls(database_url), **(extra_env or {})})
    with log_path.open("ab") as log_file:
        process = subprocess.Popen([sys.executable, "-m", "tokenhub.cli.main", "api", "serve"], env=environment,
                                   stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    api = RunningApi(f"http://127.0.0.1:{port}", process, database_url, bootstrap_servers, log_path)
    async with httpx.AsyncClient(base_url=api.url, timeout=5) as client:
        async def ready() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"the API exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                response = await client.get("/readyz" if until_ready else "/healthz")
            except httpx.TransportError:
                return False
            if not until_ready:
                return response.status_code == 200
            return response.status_code == 200 and response.json()["quota_state"] and response.json()["webhooks"]
        await wait_until(ready, READY_TIMEOUT_S, "the API to be ready" if until_ready else "the API to be up")
    return api


def stop_api(api: RunningApi) -> None:
    if api.process.poll() is None:
        api.process.terminate()
        try:
            api.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            api.process.kill()
            api.process.wait()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def api(backend) -> AsyncIterator[RunningApi]:  # noqa: ANN001
    running = await start_api(backend.endpoints.bootstrap_servers, backend.endpoints.database_url,
                              Path(backend.services.log_dir))
    try:
        yield running
    finally:
        stop_api(running)


__all__ = ["RunningApi", "api", "start_api", "stop_api"]
