"""`tokenhub api bench-quota`: the quota check's latency under a steady load.

Open loop: requests are started at a fixed rate whether or not earlier ones
have answered, and each latency is measured from the moment its request was
due, so a slow server shows as latency rather than as a lower rate
(coordinated omission). Against a running API (`--url`, `--key`), or, by
default, against one it starts itself on an embedded stack whose topics it
fills with budgets and postings for many payers, so quota state is not empty.

Beside it, the baseline: the same load against a bare ASGI app on the same
uvicorn (uvloop, httptools) that answers every request with a fixed quota-sized
body, checking nothing. What the quota check costs beyond answering HTTP on
this machine at this moment is the ratio of the two; on a busy machine both
grow, so the ratio says more than either alone."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit
from typing import Final

import asyncpg
import httpx
import orjson
import psutil

from tokenhub.api import keys
from tokenhub.contracts.budgets import BudgetSet, budget_set_id
from tokenhub.contracts.canonical import canonical_json
from tokenhub.contracts.periods import containing
from tokenhub.contracts.topics import BUDGETS_CONFIGURED, LEDGER_POSTED
from tokenhub.infra.embedded import EmbeddedStack, free_port
from tokenhub.services.common.kafka import create_producer, publish

CONNECTIONS_MAX: Final = 64
"""Keep-alive connections the load generator holds: enough that a request
never waits for a free one at 1,000 a second and a few ms each."""
READY_TIMEOUT_S: Final = 120.0
WARM_UP_S: Final = 2.0
BASELINE_APP: Final = "tokenhub.api.bench:baseline_app"
BASELINE_BODY: Final = orjson.dumps({
    "payer_bu": "bench-payer-0", "consumer_bu": "bench-payer-0", "app": None, "period": "2026-03", "allowed": True,
    "status": "allowed", "spent": "1.000000000000", "limit": "1000.000000000000", "remaining": "999.000000000000",
    "currency": "CNY", "app_spent": None, "scopes": [{
        "scope": "*", "budget_id": "00000000-0000-0000-0000-000000000000", "budget": "1000.000000000000",
        "hard_limit": "1000.000000000000", "spent": "1.000000000000", "remaining": "999.000000000000", "exhausted": False}],
    "postings_applied": 20000})
"""About what a quota answer weighs, so both runs move the same bytes."""
BASELINE_HEADERS: Final = [(b"content-type", b"application/json"), (b"content-length", str(len(BASELINE_BODY)).encode())]


async def baseline_app(scope: dict, receive: object, send: object) -> None:
    """The floor: uvicorn answering a fixed body, no routing, no key, no state."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": BASELINE_HEADERS})  # type: ignore[operator]
    await send({"type": "http.response.body", "body": BASELINE_BODY})  # type: ignore[operator]


@dataclass(frozen=True)
class BenchResult:
    requests: int
    seconds: float
    rate_offered: float
    errors: int
    latency_ms_p50: float
    latency_ms_p90: float
    latency_ms_p99: float
    latency_ms_max: float
    server_ms_p99_bucket: str
    payers: int
    postings: int
    server_cpu_us_per_request: float | None = None
    load_average_1m: float | None = None
    baseline_ms_p50: float | None = None
    baseline_ms_p99: float | None = None

    @property
    def ratio_p50(self) -> float | None:
        return self.latency_ms_p50 / self.baseline_ms_p50 if self.baseline_ms_p50 else None

    @property
    def ratio_p99(self) -> float | None:
        """The quota check's p99 over the baseline's: what checking quota adds to answering HTTP."""
        return self.latency_ms_p99 / self.baseline_ms_p99 if self.baseline_ms_p99 else None

    def document(self) -> dict[str, object]:
        return {**dataclasses.asdict(self), "ratio_p50": self.ratio_p50, "ratio_p99": self.ratio_p99}

    def lines(self) -> list[str]:
        return [
            f"quota check: {self.requests} requests in {self.seconds:.1f} s (offered {self.rate_offered:.0f}/s), "
            f"{self.errors} errors; state of {self.payers} payers, {self.postings} postings",
            f"latency from the moment each request was due, ms: p50 {self.latency_ms_p50:.2f}  p90 {self.latency_ms_p90:.2f}"
            f"  p99 {self.latency_ms_p99:.2f}  max {self.latency_ms_max:.2f}",
            f"server-side p99 (Prometheus bucket): <= {self.server_ms_p99_bucket} ms"
            + (f"; the API's CPU {self.server_cpu_us_per_request:.0f} us a request" if self.server_cpu_us_per_request else ""),
            f"baseline (a bare uvicorn app answering the same requests with a fixed body), ms: p50 {self.baseline_ms_p50:.2f}"
            f"  p99 {self.baseline_ms_p99:.2f}; quota check / baseline: p50 {self.ratio_p50:.2f}x  p99 {self.ratio_p99:.2f}x"
            if self.baseline_ms_p50 is not None and self.baseline_ms_p99 is not None and self.ratio_p50 is not None
            and self.ratio_p99 is not None else "baseline: not measured",
            f"machine load average (1 min) at the end: {self.load_average_1m:.2f} on {os.cpu_count()} cores"
            if self.load_average_1m is not None else "",
        ]


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


def _server_p99(metrics: str) -> str:
    """The smallest bucket holding 99 % of the quota route's requests."""
    buckets: list[tuple[float, float]] = []
    count = 0.0
    for line in metrics.splitlines():
        if not line.startswith("tokenhub_api_request_seconds") or 'route="/v1/quota/{payer}"' not in line:
            continue
        name, _, value = line.rpartition(" ")
        if name.startswith("tokenhub_api_request_seconds_bucket"):
            bound = name.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float("inf") if bound == "+Inf" else float(bound), float(value)))
        elif name.startswith("tokenhub_api_request_seconds_count"):
            count = float(value)
    for bound, cumulative in sorted(buckets):
        if count and cumulative >= 0.99 * count:
            return "inf" if bound == float("inf") else f"{bound * 1000:g}"
    return "n/a"


async def load(url: str, key: str, payers: list[str], rate: float, seconds: float) -> tuple[list[float], int]:
    """Open-loop load over keep-alive HTTP/1.1 connections with a minimal client
    of asyncio streams: a general client (httpx) spends about a millisecond of
    CPU per request, which on two cores would measure the client, not the API."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    requests = [f"GET /v1/quota/{payer}?consumer={payer} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n\r\n".encode()
                for payer in payers]
    queue: asyncio.Queue[tuple[int, float] | None] = asyncio.Queue()
    latencies: list[float] = []
    errors = 0

    async def connection() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while (item := await queue.get()) is not None:
                index, due = item
                writer.write(requests[index % len(requests)])
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head.split(b" ", 2)[1])
                length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                await reader.readexactly(length)
                latencies.append((time.perf_counter() - due) * 1000)
                if status != 200:
                    errors += 1
        finally:
            writer.close()

    workers = [asyncio.create_task(connection()) for _ in range(CONNECTIONS_MAX)]
    total = int(rate * seconds)
    started = time.perf_counter()
    for index in range(total):
        due = started + index / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait((index, due))
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    return latencies, errors


async def _seed(bootstrap_servers: str, payers: list[str], postings_per_payer: int, now: datetime, zone: str) -> int:
    """Budgets for every payer and postings shaped as ledger.posted carries them
    (the fields quota state reads), published straight to the topics."""
    month = containing(now, "month", zone).name
    producer = create_producer(bootstrap_servers, client_id="tokenhub-bench-quota")
    await producer.start()
    try:
        budgets = [(BUDGETS_CONFIGURED.name, payer.encode(), canonical_json(BudgetSet(
            id=budget_set_id(payer, None, month, now.isoformat()), event_time=now, cause_id="bench:quota", payer_bu=payer,
            period_from=month, amount=Decimal("1000"), hard_limit=Decimal("1000"), currency="CNY", actor="bench",
            reason="quota benchmark", set_at=now))) for payer in payers]
        postings = [(LEDGER_POSTED.name, payer.encode(), orjson.dumps({
            "chain": payer, "sequence": sequence, "payer_bu": payer, "consumer_bu": payer, "app": "bench",
            "amount": "0.010000000000", "event_time": (now - timedelta(seconds=sequence)).isoformat()}))
            for payer in payers for sequence in range(1, postings_per_payer + 1)]
        await publish(producer, budgets + postings)
    finally:
        await producer.stop()
    return len(postings)


async def baseline(payers: list[str], rate: float, seconds: float, log_path: Path) -> tuple[float, float]:
    """(p50, p99) in ms of the same load against `baseline_app` in a process of its own."""
    port = free_port()
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", BASELINE_APP, "--host", "127.0.0.1", "--port", str(port), "--loop", "uvloop",
             "--http", "httptools", "--no-access-log", "--log-level", "warning"],
            stdout=subprocess.DEVNULL, stderr=log_file, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        await _wait_answering(url, process)
        await load(url, "baseline", payers, rate, WARM_UP_S)
        latencies, errors = await load(url, "baseline", payers, rate, seconds)
        if errors:
            raise RuntimeError(f"the baseline app failed {errors} requests (its log: {log_path})")
        return _percentile(latencies, 0.50), _percentile(latencies, 0.99)
    finally:
        _stop(process)


async def _wait_answering(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    async with httpx.AsyncClient(base_url=url) as client:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the baseline app exited with {process.returncode}")
            try:
                await client.get("/")
                return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"the baseline app did not answer within {READY_TIMEOUT_S:.0f} s")
            await asyncio.sleep(0.2)


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


async def run(*, url: str | None, key: str | None, rate: float, seconds: float, payers_count: int,
              postings_per_payer: int) -> BenchResult:
    payers = [f"bench-payer-{index}" for index in range(payers_count)]
    if url is not None:
        if not key:
            raise ValueError("--url needs --key")
        latencies, errors = await load(url, key, payers, rate, seconds)
        async with httpx.AsyncClient(base_url=url) as client:
            metrics = (await client.get("/metrics")).text
        floor = await baseline(payers, rate, seconds, Path(os.environ.get("TOKENHUB_BENCH_DIR", "/tmp")) / "thbench-baseline.log")
        return dataclasses.replace(_result(latencies, errors, rate, seconds, metrics, payers_count, 0),
                                   baseline_ms_p50=floor[0], baseline_ms_p99=floor[1], load_average_1m=os.getloadavg()[0])
    state = Path(os.environ.get("TOKENHUB_BENCH_DIR", "/tmp")) / f"thbench-{uuid.uuid4().hex[:8]}"
    stack = EmbeddedStack(state_dir=state)
    process: subprocess.Popen[bytes] | None = None
    try:
        endpoints = await asyncio.to_thread(stack.start)
        from tokenhub.infra.migrate import migrate
        from tokenhub.infra.topics import create_topics

        await migrate(endpoints.database_url)
        await create_topics(endpoints.bootstrap_servers)
        now = datetime.now(UTC)
        postings = await _seed(endpoints.bootstrap_servers, payers, postings_per_payer, now, "Asia/Shanghai")
        connection = await asyncpg.connect(endpoints.database_url)
        try:
            _, key = await keys.create(connection, "finance", None, "bench", "quota benchmark", now, None)
        finally:
            await connection.close()
        port = free_port()
        environment = {**os.environ, "TOKENHUB_BOOTSTRAP_SERVERS": endpoints.bootstrap_servers,
                       "TOKENHUB_DATABASE_URL": endpoints.database_url, "TOKENHUB_API_PORT": str(port),
                       "TOKENHUB_LOG_LEVEL": "WARNING"}
        process = subprocess.Popen([sys.executable, "-m", "tokenhub.cli.main", "api", "serve"], env=environment,
                                   stdout=subprocess.DEVNULL, stderr=(state / "api.log").open("ab"), start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        await _wait_quota_ready(url, key, payers[0])
        await load(url, key, payers, rate, WARM_UP_S)  # connections opened, code paths warm
        api_process = psutil.Process(process.pid)
        cpu_before = api_process.cpu_times()
        latencies, errors = await load(url, key, payers, rate, seconds)
        cpu_after = api_process.cpu_times()
        async with httpx.AsyncClient(base_url=url) as client:
            metrics = (await client.get("/metrics")).text
        result = _result(latencies, errors, rate, seconds, metrics, payers_count, postings)
        cpu_s = cpu_after.user + cpu_after.system - cpu_before.user - cpu_before.system
        floor = await baseline(payers, rate, seconds, state / "baseline.log")
        return dataclasses.replace(result, server_cpu_us_per_request=cpu_s * 1e6 / max(len(latencies), 1),
                                   load_average_1m=os.getloadavg()[0], baseline_ms_p50=floor[0], baseline_ms_p99=floor[1])
    finally:
        if process is not None:
            _stop(process)
        stack.stop()
        if process is not None and process.returncode in (0, -15):
            shutil.rmtree(state, ignore_errors=True)  # kept, with the API's log, when something failed


async def _wait_quota_ready(url: str, key: str, payer: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    async with httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {key}"}) as client:
        while True:
            try:
                if (await client.get(f"/v1/quota/{payer}")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"the API's quota state was not ready within {READY_TIMEOUT_S:.0f} s")
            await asyncio.sleep(0.2)


def _result(latencies: list[float], errors: int, rate: float, seconds: float, metrics: str, payers: int,
            postings: int) -> BenchResult:
    return BenchResult(len(latencies), seconds, rate, errors, _percentile(latencies, 0.50), _percentile(latencies, 0.90),
                       _percentile(latencies, 0.99), max(latencies, default=0.0), _server_p99(metrics), payers, postings)
