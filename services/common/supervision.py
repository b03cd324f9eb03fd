"""Which failures are the weather and which are bugs, decided in one place, and
the supervision every long-running task of a service runs under.

An unavailable database or broker (down, restarting, starting up, shutting
down) is the weather: the work is retried with backoff until it is back, and
nothing is dead-lettered or lost meanwhile. Anything else is a bug or bad data:
a batch is retried a bounded number of times and then dead-lettered
(`Runtime.process`), and a long-running task that fails ends the process with
one clear log line, so that its supervisor (`tokenhub up`, systemd, Kubernetes)
restarts it. A task never dies quietly while its process lives on
(docs/architecture.md, delivery semantics)."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

import asyncpg
import structlog
from aiokafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError
from prometheus_client import Counter

log = structlog.get_logger()

TASK_PAUSES = Counter("tokenhub_task_pauses", "Times a supervised task waited for the database or broker", ["task"])

EXIT_TASK_FAILED: Final = 70
"""The exit status of a process whose long-running task failed for a reason other
than the infrastructure (EX_SOFTWARE): its supervisor restarts it."""

DATABASE_UNAVAILABLE: Final[tuple[type[BaseException], ...]] = (
    asyncpg.PostgresConnectionError,  # class 08: the connection failed or does not exist
    asyncpg.CannotConnectNowError,  # 57P03: starting up, in recovery or shutting down
    asyncpg.AdminShutdownError,  # 57P01: the server is stopping (fast shutdown)
    asyncpg.CrashShutdownError,  # 57P02: another backend crashed; the server restarts
    asyncpg.IdleSessionTimeoutError,  # 57P05
    asyncpg.TooManyConnectionsError,  # 53300: restarted processes reconnect before the old sessions end
    asyncpg.InterfaceError,  # the client's side of a lost connection ("connection is closed")
    # A connection the server ended while it sat idle in the pool (fast shutdown sends
    # FATAL 57P01, then closes) and was handed out before the close arrived: asyncpg
    # finds its protocol still consuming that error and refuses the next call with
    # "cannot switch to state ...; another operation (2) is in progress". Seen when
    # PostgreSQL was stopped under the ledger; the pool then replaces every connection.
    asyncpg.InternalClientError,
)
NETWORK_UNAVAILABLE: Final[tuple[type[BaseException], ...]] = (
    ConnectionError,
    OSError,  # refused, reset, unreachable, a socket file gone; TimeoutError is one too
    asyncio.TimeoutError,
)
BROKER_UNAVAILABLE: Final[tuple[type[BaseException], ...]] = (KafkaConnectionError, KafkaTimeoutError)
"""With every KafkaError the client marks `retriable` (no leader yet, coordinator
moving, unknown topic on a broker that is being rebuilt)."""

INFRASTRUCTURE_ERRORS: Final = (*DATABASE_UNAVAILABLE, *NETWORK_UNAVAILABLE, *BROKER_UNAVAILABLE)
"""For `except` clauses; `is_infrastructure` also admits retriable Kafka errors."""


def is_infrastructure(error: BaseException) -> bool:
    """True when `error` says the database or the broker is unavailable, not
    that the work itself is wrong: such work is retried, never dead-lettered."""
    if isinstance(error, INFRASTRUCTURE_ERRORS):
        return True
    return isinstance(error, KafkaError) and bool(getattr(error, "retriable", False))


@dataclass
class Backoff:
    """Waits that grow from `first_s` to `max_s`, doubling, and start again from
    the first once the work has gone well for `reset_after_s`."""

    first_s: float = 0.2
    max_s: float = 5.0
    reset_after_s: float = 30.0
    _next_s: float = 0.0

    def next(self) -> float:
        delay = self._next_s or self.first_s
        self._next_s = min(delay * 2, self.max_s)
        return delay

    def reset(self) -> None:
        self._next_s = 0.0


def exit_process(code: int) -> None:
    """End the process now. `os._exit`, not `sys.exit`: raised in a task, SystemExit
    would end that task only, and shutdown hooks could hang on the failed task.
    Everything durable is in PostgreSQL already (outbox rows, offsets)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


ExitFunction = Callable[[int], None]


async def supervise(name: str, run: Callable[[], Awaitable[None]], *, backoff: Backoff | None = None,
                    exit: ExitFunction = exit_process) -> None:
    """Run `run` until it returns or the task is cancelled. When the database or
    broker is unavailable, log it, wait (backoff) and run it again from the
    start, so `run` begins by restoring its position (offsets, state). Any other
    failure ends the process with one clear log line: a supervisor restarts it."""
    backoff = backoff or Backoff()
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        try:
            await run()
            return
        except asyncio.CancelledError:
            raise
        except BaseException as error:  # noqa: BLE001 - classified below; nothing is swallowed
            if not is_infrastructure(error):
                log.critical("task_failed_process_exits", task=name, error=repr(error), exit_code=EXIT_TASK_FAILED,
                             exc_info=True)
                exit(EXIT_TASK_FAILED)
                return
            if loop.time() - started > backoff.reset_after_s:
                backoff.reset()
            delay = backoff.next()
            TASK_PAUSES.labels(task=name).inc()
            log.warning("task_paused_infrastructure_unavailable", task=name, error=repr(error), retry_in_s=delay)
            await asyncio.sleep(delay)
