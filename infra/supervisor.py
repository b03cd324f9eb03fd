"""`tokenhub up` supervises the whole local stack: PostgreSQL, the broker and
the four services, each a child process it watches.

- A service that exits is restarted: everything it did is durable in
  PostgreSQL, and its effects are idempotent.
- A PostgreSQL that exits is reaped (its orphaned backends too, so no dead
  process keeps postmaster.pid or the shared memory alive) and started again on
  the same data; the services wait for it (`services.common.supervision`).
- An embedded broker that exits has lost every topic (memory storage): the
  services are stopped, an empty broker is started on the same port, the topics
  are created and what each service produced is republished (`infra.boot`),
  then the services start again. An Apache Kafka node is restarted on its own
  storage, and nothing is republished.

Restarts are bounded: a process that needs more than RESTARTS_MAX restarts
within RESTART_WINDOW_S is failing, not unlucky, and the stack stops saying
why. Each fault and the time it took to resume are printed, logged, and kept in
the state folder's status file, which `tokenhub status` reads. One `tokenhub up`
per state folder: a second one is refused while the first holds the lock."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import signal
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Final

import psutil
import structlog

from tokenhub.infra.boot import BootReport, prepare
from tokenhub.infra.embedded import EmbeddedBroker, EmbeddedStack
from tokenhub.infra.kafka.stack import stack_environment
from tokenhub.infra.processes import SERVICES, ServiceProcesses
from tokenhub.infra.settings import STACK_ENV_FILE, settings_for
from tokenhub.services.common.supervision import Backoff, is_infrastructure

LOCK_FILE: Final = "up.lock"
STATUS_FILE: Final = "status.json"
STATUS_VERSION: Final = 1
WATCH_INTERVAL_S: Final = 0.5
"""How often the processes are looked at: a dead one is noticed within this."""
STATUS_HEARTBEAT_S: Final = 5.0
"""The status file is rewritten at least this often, so a reader can tell a live
supervisor from a stale file."""
RESTARTS_MAX: Final = 5
RESTART_WINDOW_S: Final = 60.0
"""More restarts of one process than RESTARTS_MAX within RESTART_WINDOW_S means it
is failing at start or at its first record: restarting it again would only hide that."""
FAULTS_KEPT: Final = 200
"""Faults kept in the status file, newest last: a long chaos run has a few dozen."""
LEFTOVER_STOP_S: Final = 15.0
BOOT_PATIENCE_S: Final = 120.0
"""How long a broker's boot waits for a PostgreSQL that is away at the same time."""

log = structlog.get_logger()


class AlreadyRunning(RuntimeError):
    def __init__(self, state_dir: Path, pid: int | None, since: str | None) -> None:
        self.state_dir, self.pid, self.since = state_dir, pid, since
        super().__init__(f"already running in {state_dir} (pid {pid if pid else 'unknown'}, since {since or 'unknown'})")


class GaveUp(RuntimeError):
    """A process could not be kept running within its bounded restarts."""


def now_text() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class UpLock:
    """An exclusive lock on the state folder for as long as `tokenhub up` runs. A
    kernel lock (flock): it goes with the process, however the process ends, so
    a stale file never blocks the next start."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.path = state_dir / LOCK_FILE
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        handle = self.path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = _parse(handle.read())
            handle.close()
            raise AlreadyRunning(self.state_dir, holder.get("pid"), holder.get("since")) from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "since": now_text()}))
        handle.flush()
        self._file = handle

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing releases the lock
            self._file = None


def lock_holder(state_dir: Path) -> dict[str, Any] | None:
    """Who runs `tokenhub up` in `state_dir` ({"pid", "since"}), or None."""
    path = state_dir / LOCK_FILE
    if not path.exists():
        return None
    with path.open("r") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _parse(handle.read()) or {"pid": None, "since": None}
        fcntl.flock(handle, fcntl.LOCK_UN)
    return None


def _parse(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


@dataclass
class Watched:
    """One supervised process, as the status file shows it."""

    name: str
    role: str  # database, broker or service
    pid: int | None = None
    create_time: float | None = None  # tells this process from a later one with the same pid
    state: str = "starting"
    started_at: str | None = None
    restarts: int = 0
    last_exit_code: int | None = None
    last_exit_at: str | None = None
    recent: deque[float] = field(default_factory=deque, repr=False)

    def started(self, pid: int | None) -> None:
        self.pid, self.state, self.started_at = pid, "running", now_text()
        self.create_time = _create_time(pid)

    def exited(self, code: int) -> None:
        self.state, self.last_exit_code, self.last_exit_at = "restarting", code, now_text()

    def as_json(self) -> dict[str, Any]:
        value = asdict(self)
        value.pop("recent")
        return value


@dataclass
class Fault:
    process: str
    exit_code: int
    noticed_at: str
    seconds_to_resume: float | None = None
    outcome: str = "restarting"


def _create_time(pid: int | None) -> float | None:
    try:
        return psutil.Process(pid).create_time() if pid else None
    except psutil.Error:
        return None


class StackSupervisor:
    """Start the stack and the services, watch them, restart what dies, stop everything."""

    def __init__(self, stack: EmbeddedStack, state_dir: Path, extra_environment: dict[str, str],
                 say: Callable[[str], None] = print, services: tuple[str, ...] = SERVICES,
                 optional: frozenset[str] = frozenset(), shared: Mapping[str, str] | None = None) -> None:
        """`extra_environment`: what the services get beyond the stack's endpoints
        and client settings (ports, for example). `optional`: processes outside the
        pipeline (the HTTP API) that are left stopped, saying so, when they keep
        failing, instead of stopping the stack. `shared`: settings the services
        get and the commands in other terminals too, through stack.env (a demo's clock)."""
        self.optional = optional
        self.shared = dict(shared or {})
        self.stack = stack
        self.state_dir = state_dir
        self.extra_environment = extra_environment
        self.environment: dict[str, str] = {}
        self.services = ServiceProcesses({}, state_dir / "logs", services)
        self._say = say
        self.lock = UpLock(state_dir)
        self.started_at = now_text()
        self.watched: dict[str, Watched] = {}
        self.faults: list[Fault] = []
        self._status_written = 0.0

    # --- start and stop ------------------------------------------------------------------

    async def start(self) -> None:
        self.lock.acquire()
        try:
            await asyncio.to_thread(self._stop_leftovers)
            endpoints = await asyncio.to_thread(self.stack.start)
            self.environment = {**stack_environment(self.stack),
                                "TOKENHUB_BOOTSTRAP_SERVERS": endpoints.bootstrap_servers,
                                "TOKENHUB_DATABASE_URL": endpoints.database_url, **self.shared,
                                **self.extra_environment}
            self.services.env = self.environment
            self._watch("postgres", "database", self.stack.postgres.pid)
            for name, pid in self._broker_pids().items():
                self._watch(name, "broker", pid)
            await prepare(endpoints.bootstrap_servers, endpoints.database_url, settings_for(self.environment))
            self.stack.write_env_file(self.state_dir / STACK_ENV_FILE, self.shared)
            self.services.start()
            for name in self.services.services:
                self._watch(name, "service", self.services.processes[name].pid)
            self.write_status()
        except BaseException:
            await asyncio.to_thread(self.stop)
            raise

    def stop(self) -> None:
        self.services.stop()
        (self.state_dir / STACK_ENV_FILE).unlink(missing_ok=True)
        self.stack.stop()
        for watched in self.watched.values():
            watched.state, watched.pid = "stopped", None
        self.write_status(stopped=True)
        self.lock.release()

    def _watch(self, name: str, role: str, pid: int | None) -> None:
        watched = self.watched.setdefault(name, Watched(name, role))
        watched.started(pid)

    def _broker_pids(self) -> dict[str, int | None]:
        broker = self.stack.broker
        if isinstance(broker, EmbeddedBroker):
            return {"broker": broker.pid}
        nodes = getattr(broker, "nodes", {})  # Apache Kafka: one process per node
        return {f"kafka-{node_id}": node.process.pid if node.process else None for node_id, node in nodes.items()}

    # --- watching ------------------------------------------------------------------------

    async def watch(self, stopping: asyncio.Event) -> None:
        """Until `stopping` is set: notice what died and bring it back. Raises
        GaveUp (or the StackError of a restart that failed its bounded attempts)."""
        while not stopping.is_set():
            await self.check()
            if time.monotonic() - self._status_written > STATUS_HEARTBEAT_S:
                self.write_status()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), timeout=WATCH_INTERVAL_S)

    async def check(self) -> None:
        code = self.stack.postgres.exit_code()
        if code is not None:
            await self._recover_postgres(code)
        broker = self.stack.broker
        if isinstance(broker, EmbeddedBroker):
            code = broker.exit_code()
            if code is not None:
                await self._recover_embedded_broker(code)
        else:
            for node_id, node in getattr(broker, "nodes", {}).items():
                if node.process is not None and (code := node.process.poll()) is not None:
                    await self._recover_kafka_node(node_id, code)
        for name, code in self.services.exited().items():
            try:
                await self._recover_service(name, code)
            except GaveUp as error:
                if name not in self.optional:
                    raise
                self.services.processes.pop(name, None)
                self.watched[name].state = "failed"
                self.say(f"{error}; leaving {name} stopped, the pipeline runs without it", warning=True)
                self.write_status()

    def _fault(self, name: str, code: int, what: str) -> tuple[Fault, float]:
        watched = self.watched[name]
        now = time.monotonic()
        while watched.recent and now - watched.recent[0] > RESTART_WINDOW_S:
            watched.recent.popleft()
        if len(watched.recent) >= RESTARTS_MAX:
            raise GaveUp(f"{name} exited {len(watched.recent) + 1} times within {RESTART_WINDOW_S:.0f} s "
                         f"(last status {code}); see {self.state_dir / 'logs'}")
        watched.recent.append(now)
        watched.exited(code)
        watched.restarts += 1
        fault = Fault(name, code, now_text())
        self.faults = [*self.faults, fault][-FAULTS_KEPT:]
        self.say(f"{name} exited with status {code}: {what} (restart {watched.restarts})", warning=True)
        self.write_status()
        return fault, now

    def _resumed(self, fault: Fault, noticed: float, outcome: str) -> None:
        fault.seconds_to_resume = round(time.monotonic() - noticed, 2)
        fault.outcome = outcome
        self.say(f"{fault.process} is back after {fault.seconds_to_resume:.1f} s: {outcome}")
        self.write_status()

    async def _recover_service(self, name: str, code: int) -> None:
        fault, noticed = self._fault(name, code, "restarting it")
        self.services.processes.pop(name, None)
        self.services.start(name)
        self.watched[name].started(self.services.processes[name].pid)
        self._resumed(fault, noticed, "restarted")

    async def _recover_postgres(self, code: int) -> None:
        fault, noticed = self._fault("postgres", code, "reaping it and starting it again on the same data; "
                                                        "the services wait for it")
        attempts = await asyncio.to_thread(self.stack.postgres.restart)
        self.watched["postgres"].started(self.stack.postgres.pid)
        self._resumed(fault, noticed, f"restarted ({attempts} attempt{'s' if attempts > 1 else ''})")

    async def _recover_embedded_broker(self, code: int) -> None:
        fault, noticed = self._fault("broker", code, "its topics are gone with it: stopping the services, starting an "
                                                     "empty broker and republishing what the services produced")
        # SIGKILL: all they did is durable in PostgreSQL, and with the broker gone a
        # graceful stop would only wait for it.
        for name in list(self.services.processes):
            self.services.kill(name)
        await asyncio.to_thread(self.stack.broker.restart)
        self.watched["broker"].started(self.stack.broker.pid)
        report = await self._prepare_patiently()
        self.stack.write_env_file(self.state_dir / STACK_ENV_FILE, self.shared)  # the new broker's cluster id
        self.services.start()
        for name in self.services.services:
            self.watched[name].started(self.services.processes[name].pid)
        self._resumed(fault, noticed, f"empty broker started, {len(report.topics_created)} topics created, "
                                      f"{report.republished_total} produced events republished, services restarted")

    async def _prepare_patiently(self) -> BootReport:
        """Boot the new broker; PostgreSQL may be away at the same moment (it is
        restarted at the next check, so wait for it here a bounded time)."""
        endpoints = self.stack.endpoints
        deadline = time.monotonic() + BOOT_PATIENCE_S
        backoff = Backoff()
        while True:
            try:
                return await prepare(endpoints.bootstrap_servers, endpoints.database_url, settings_for(self.environment))
            except Exception as error:
                if not is_infrastructure(error) or time.monotonic() > deadline:
                    raise
                if self.stack.postgres.exit_code() is not None:
                    await self._recover_postgres(self.stack.postgres.exit_code() or 0)
                await asyncio.sleep(backoff.next())

    async def _recover_kafka_node(self, node_id: int, code: int) -> None:
        name = f"kafka-{node_id}"
        fault, noticed = self._fault(name, code, "restarting it on its own storage")
        broker: Any = self.stack.broker
        await asyncio.to_thread(broker.restart, node_id)
        self.watched[name].started(broker.nodes[node_id].process.pid)
        self._resumed(fault, noticed, "restarted on its storage")

    # --- what people see -----------------------------------------------------------------

    def say(self, message: str, warning: bool = False) -> None:
        (log.warning if warning else log.info)("supervisor", message=message)
        self._say(f"{datetime.now().astimezone().strftime('%H:%M:%S')} {message}")

    def write_status(self, stopped: bool = False) -> None:
        endpoints = self.stack.endpoints
        status = {
            "version": STATUS_VERSION,
            "state": "stopped" if stopped else "running",
            "supervisor": {"pid": os.getpid(), "started_at": self.started_at},
            "updated_at": now_text(),
            "endpoints": {
                "bootstrap_servers": endpoints.bootstrap_servers,
                "database_url": endpoints.database_url,
                "cluster_id": endpoints.cluster_id,
                "ingest_url": f"http://127.0.0.1:{self.environment.get('TOKENHUB_HTTP_PORT')}/v1/events",
            },
            "processes": [watched.as_json() for watched in self.watched.values()],
            "faults": [asdict(fault) for fault in self.faults],
        }
        path = self.state_dir / STATUS_FILE
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(status, indent=1))
        temporary.replace(path)
        self._status_written = time.monotonic()

    # --- an earlier run that did not stop cleanly -------------------------------------------

    def _stop_leftovers(self) -> None:
        """Stop what an earlier `tokenhub up` that was killed left running here (its
        status file names the processes; their start times tell them from others
        that reuse a pid). We hold the lock, so that supervisor is gone."""
        status = read_status(self.state_dir)
        if not status or status.get("state") == "stopped":
            return
        leftovers = []
        for process in status.get("processes", []):
            pid, created = process.get("pid"), process.get("create_time")
            if pid and created and _create_time(pid) == created:
                leftovers.append((process["name"], pid))
        if not leftovers:
            return
        self.say("an earlier tokenhub up here did not stop cleanly; stopping what it left running: "
                 + ", ".join(f"{name} (pid {pid})" for name, pid in leftovers), warning=True)
        for name, pid in leftovers:
            # PostgreSQL's fast shutdown; the others stop on SIGTERM.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGINT if name == "postgres" else signal.SIGTERM)
        deadline = time.monotonic() + LEFTOVER_STOP_S
        for name, pid in leftovers:
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).wait(timeout=max(0.1, deadline - time.monotonic()))
                continue
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        for name, pid in leftovers:
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).wait(timeout=LEFTOVER_STOP_S)


def read_status(state_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((state_dir / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None
