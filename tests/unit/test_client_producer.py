"""The producer client: retries resend the same bytes a bounded number of times,
and ids make a retried report the same event. The broker is replaced by a
stand-in that fails on command; the real broker is exercised in integration."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any, NamedTuple

import pytest
from aiokafka.errors import KafkaTimeoutError, RequestTimedOutError

from tokenhub.client import usage_event
from tokenhub.contracts.client import producer
from tokenhub.contracts.client.producer import SEND_ATTEMPTS_MAX, UsageClient

TIME = datetime(2026, 3, 14, 2, 30, tzinfo=UTC)
DATA = {"consumer_bu": "taobao-tmall", "model": "qwen-max", "input_tokens": 100, "output_tokens": 10}


class Written(NamedTuple):
    """What the broker answers for a record it has: where it put it."""
    partition: int
    offset: int


class FlakyProducer:
    """Fails the first `failures[value]` attempts of each value: half of them by
    raising from `send` (no metadata), half by failing the delivery future."""

    def __init__(self, failures: dict[bytes, int]) -> None:
        self.failures = failures
        self.sent: list[tuple[bytes, bytes | None, Any]] = []
        self.written = 0

    async def send(self, topic: str, value: bytes, *, key: bytes | None = None, headers: Any = None) -> asyncio.Future[Any]:
        self.sent.append((value, key, headers))
        attempts = sum(1 for sent_value, _, _ in self.sent if sent_value == value)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if attempts <= self.failures.get(value, 0):
            if attempts % 2:
                raise KafkaTimeoutError()
            future.set_exception(RequestTimedOutError())
        else:
            self.written += 1
            future.set_result(Written(partition=0, offset=self.written - 1))
        return future


def _client(fake: FlakyProducer) -> UsageClient:
    client = UsageClient("unused:9092")
    client._producer = fake  # type: ignore[assignment]
    return client


@pytest.fixture(autouse=True)
def _no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(producer, "SEND_BACKOFF_S", 0)


async def test_failed_sends_are_retried_with_the_same_key_value_and_headers() -> None:
    fake = FlakyProducer({b"b": SEND_ATTEMPTS_MAX - 1})
    headers = [("ce_source", b"gateway/taobao")]
    client = _client(fake)
    sent = await client.send_raw([(b"k1", b"a"), (b"k2", b"b"), (b"k3", b"c")], headers=headers)
    assert sent == 3
    assert client.last_offsets == {0: 2}  # the last of the three records the broker has
    assert [value for value, _, _ in fake.sent].count(b"b") == SEND_ATTEMPTS_MAX
    assert {(key, tuple(sent_headers)) for value, key, sent_headers in fake.sent if value == b"b"} == {(b"k2", tuple(headers))}


async def test_retries_are_bounded_and_the_last_failure_is_raised() -> None:
    fake = FlakyProducer({b"a": SEND_ATTEMPTS_MAX})
    with pytest.raises((KafkaTimeoutError, RequestTimedOutError)):
        await _client(fake).send_raw([(b"k", b"a")])
    assert len(fake.sent) == SEND_ATTEMPTS_MAX


async def test_report_keys_by_consumer_and_sends_canonical_events() -> None:
    fake = FlakyProducer({})
    event = usage_event("gateway/taobao", "req-1", TIME, DATA)
    assert await _client(fake).report([event, event]) == 2
    assert {key for _, key, _ in fake.sent} == {b"taobao-tmall"}
    assert fake.sent[0][0] == fake.sent[1][0]


def test_an_event_without_a_request_id_gets_the_same_id_on_every_retry() -> None:
    first = usage_event("gateway/taobao", None, TIME, DATA)
    again = usage_event("gateway/taobao", None, TIME, dict(DATA))
    assert first.id == again.id
    assert usage_event("gateway/taobao", None, TIME, {**DATA, "output_tokens": 11}).id != first.id
    assert usage_event("gateway/other", None, TIME, DATA).id != first.id
    assert usage_event("gateway/taobao", "req-9", TIME, DATA).id == "req-9"
