"""Which failures are the infrastructure's (waited out) and which are the work's
(retried a bounded number of times, then dead-lettered, or the process ends),
and the supervision of long-running tasks, without any infrastructure."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from aiokafka.errors import (
    CommitFailedError,
    KafkaConnectionError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NodeNotReadyError,
    NotLeaderForPartitionError,
    UnknownTopicOrPartitionError,
)
from pydantic import ValidationError

from tokenhub.contracts.events import Priced
from tokenhub.services.common.supervision import EXIT_TASK_FAILED, Backoff, is_infrastructure, supervise


def _validation_error() -> ValidationError:
    try:
        Priced.model_validate({})
    except ValidationError as error:
        return error
    raise AssertionError("an empty Priced validated")


INFRASTRUCTURE = [
    asyncpg.CannotConnectNowError("the database system is starting up"),  # issue 15, defect 3
    asyncpg.CannotConnectNowError("the database system is shutting down"),
    asyncpg.AdminShutdownError("terminating connection due to administrator command"),
    asyncpg.CrashShutdownError("terminating connection because of crash of another server process"),
    asyncpg.TooManyConnectionsError("sorry, too many clients already"),
    asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
    asyncpg.InterfaceError("connection is closed"),
    asyncpg.InternalClientError("cannot switch to state 12; another operation (2) is in progress"),
    ConnectionRefusedError(111, "Connection refused"),
    ConnectionResetError(104, "Connection reset by peer"),
    FileNotFoundError(2, "No such file or directory"),  # a Unix socket gone with its server
    TimeoutError(),
    KafkaConnectionError("Unable to bootstrap from [('127.0.0.1', 9092)]"),
    KafkaTimeoutError(),
    NodeNotReadyError(),
    NotLeaderForPartitionError(),
    UnknownTopicOrPartitionError(),
]
THE_WORK = [
    ValueError("payer shares must sum to 100 %"),
    KeyError("payer_bu"),
    _validation_error(),
    asyncpg.UniqueViolationError("duplicate key value violates unique constraint"),
    asyncpg.CheckViolationError("new row violates check constraint"),
    asyncpg.RaiseError("entry is unbalanced in the money ledger"),
    asyncpg.UndefinedTableError('relation "ledger.entries" does not exist'),
    MessageSizeTooLargeError(),
    CommitFailedError(),
    RuntimeError("a bug"),
    SystemExit(1),
]


@pytest.mark.parametrize("error", INFRASTRUCTURE, ids=lambda error: type(error).__name__)
def test_the_database_or_broker_being_away_is_infrastructure(error: BaseException) -> None:
    assert is_infrastructure(error)


@pytest.mark.parametrize("error", THE_WORK, ids=lambda error: type(error).__name__)
def test_failures_of_the_work_itself_are_not(error: BaseException) -> None:
    assert not is_infrastructure(error)


def test_backoff_doubles_to_its_ceiling_and_starts_over_after_a_reset() -> None:
    backoff = Backoff(first_s=0.2, max_s=1.0)
    assert [backoff.next() for _ in range(5)] == [0.2, 0.4, 0.8, 1.0, 1.0]
    backoff.reset()
    assert backoff.next() == 0.2


async def test_a_task_is_run_again_while_the_infrastructure_is_away() -> None:
    failures = [asyncpg.CannotConnectNowError("starting up"), ConnectionRefusedError(111, "refused"),
                KafkaConnectionError("no broker")]
    runs: list[int] = []
    exits: list[int] = []

    async def run() -> None:
        runs.append(len(runs))
        if failures:
            raise failures.pop(0)

    await asyncio.wait_for(supervise("test-task", run, backoff=Backoff(first_s=0.01, max_s=0.02), exit=exits.append),
                           timeout=5)
    assert runs == [0, 1, 2, 3]
    assert exits == []


async def test_any_other_failure_ends_the_process() -> None:
    runs: list[int] = []
    exits: list[int] = []

    async def run() -> None:
        runs.append(1)
        raise KeyError("payer_bu")

    await asyncio.wait_for(supervise("test-task", run, exit=exits.append), timeout=5)
    assert runs == [1]
    assert exits == [EXIT_TASK_FAILED]


async def test_cancelling_a_supervised_task_ends_it_without_an_exit() -> None:
    exits: list[int] = []
    started = asyncio.Event()

    async def run() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(supervise("test-task", run, exit=exits.append))
    await asyncio.wait_for(started.wait(), timeout=5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert exits == []
