"""A batch's log lines say which records they are about (topic, partition,
offset range), and the lines of the record-by-record path name the record and
its event id, so a line in a log leads to the event behind it."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import structlog
from aiokafka.structs import ConsumerRecord

from tokenhub.infra.settings import Settings
from tokenhub.services.common import runtime as runtime_module
from tokenhub.services.common.logging import batch_context, record_context
from tokenhub.services.common.runtime import Runtime


def record(topic: str, partition: int, offset: int, value: bytes = b"{}",
           headers: Sequence[tuple[str, bytes]] = ()) -> ConsumerRecord:
    return ConsumerRecord(topic, partition, offset, 0, 0, None, value, None, 0, len(value), tuple(headers))


def test_one_partition_binds_its_offset_range() -> None:
    batch = [record("tokens.priced", 2, offset) for offset in (40, 41, 43)]
    assert batch_context("ledger", batch) == {"service": "ledger", "batch_size": 3, "topic": "tokens.priced",
                                              "partition": 2, "offsets": "40-43"}


def test_several_partitions_and_topics_bind_a_range_each() -> None:
    batch = [record("tokens.priced", 1, 7), record("tokens.priced", 0, 12), record("tokens.priced", 1, 9),
             record("tokens.priced", 0, 11)]
    assert batch_context("ledger", batch)["offsets"] == {"0": "11-12", "1": "7-9"}
    mixed = [record("tokens.priced", 0, 5), record("budgets.configured", 0, 1)]
    context = batch_context("ledger", mixed)
    assert (context["topic"], context["offsets"]) == (["budgets.configured", "tokens.priced"],
                                                      {"budgets.configured:0": "1-1", "tokens.priced:0": "5-5"})


@pytest.mark.parametrize(("value", "headers", "event_id"), [
    (b'{"id": "req-7", "source": "gateway/a"}', (), "req-7"),
    (b'{"input_tokens": 10}', (("ce_id", b"req-8"),), "req-8"),  # binary mode: the id is a header
    (b"this is not json", (), None),
    (b"[1, 2]", (), None),
])
def test_a_record_binds_where_it_is_and_its_event_id(value: bytes, headers, event_id: str | None) -> None:  # noqa: ANN001
    assert record_context(record("usage.reported", 3, 99, value, headers)) == {
        "topic": "usage.reported", "partition": 3, "offset": 99, "event_id": event_id}


async def test_the_runtime_binds_the_batch_then_each_record_it_isolates(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime_module, "RETRY_BACKOFF_S", (0, 0, 0))
    runtime = Runtime(Settings(), service="pricing", schema="pricing")
    batch = [record("tokens.consumed", 1, 20, b'{"id": "a"}'), record("tokens.consumed", 1, 21, b'{"id": "b"}')]
    seen: list[dict] = []

    async def handle(records: Sequence[ConsumerRecord]) -> None:
        seen.append(dict(structlog.contextvars.get_contextvars()))
        if len(records) > 1:
            raise ValueError("a batch this handler cannot take whole")

    await runtime.process(batch, handle)
    assert seen[0] == {"service": "pricing", "batch_size": 2, "topic": "tokens.consumed", "partition": 1,
                       "offsets": "20-21"}
    assert [(context["offset"], context["event_id"]) for context in seen[-2:]] == [(20, "a"), (21, "b")]
    assert structlog.contextvars.get_contextvars() == {}
