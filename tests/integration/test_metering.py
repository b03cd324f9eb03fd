"""Metering on the real stack: HTTP ingest with API keys, both CloudEvents
content modes, every class of bad input stored and published with its reason
while valid usage flows, dedup across restarts and instances, funding by event
time, and non-text usage converted to exact Tokens."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from tokenhub.contracts.canonical import canonical_json, sha256_hex
from tokenhub.contracts.events import TokenConsumed, UsageReported
from tokenhub.contracts.topics import TOKENS_CONSUMED, USAGE_REJECTED, USAGE_REPORTED
from tokenhub.contracts.stored import unpack
from tokenhub.infra.embedded import free_port
from tokenhub.infra.pipeline import wait_until
from tokenhub.services.metering import domain
from tokenhub.services.metering.adapters import keys
from tests.integration.support import World, delta, emit, emit_raw, read_counters, wait_http, wait_settled

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def _fetch(settings, query: str, *parameters):  # noqa: ANN001, ANN202
    connection = await asyncpg.connect(settings.database_url)
    try:
        return await connection.fetch(query, *parameters)
    finally:
        await connection.close()


async def _consumed(world: World) -> list[dict]:
    rows = await _fetch(world.settings, "select payload from metering.consumed where usage_source = $1 order by seq",
                        f"tests/{world.prefix}")
    return [orjson.loads(unpack(row["payload"])) for row in rows]


async def _metrics(client: httpx.AsyncClient, port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = await client.get(f"http://127.0.0.1:{port}/metrics")
    assert response.status_code == 200
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.text) for sample in family.samples}


def _metric_delta(after: dict, before: dict, name: str, **labels: str) -> float:  # noqa: ANN001
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


async def test_http_ingest_accepts_rejects_and_refuses_keys(backend) -> None:
    world = World(backend.settings)
    await world.publish(["shop"])
    connection = await asyncpg.connect(world.settings.database_url)
    try:
        key_id, key = await keys.create(connection, [f"tests/{world.prefix}"], "tests", "http ingest test")
        _, foreign_key = await keys.create(connection, ["gateway/elsewhere"], "tests", "foreign source")
        revoked_id, revoked_key = await keys.create(connection, [f"tests/{world.prefix}"], "tests", "to be revoked")
        assert await keys.revoke(connection, revoked_id)
        stored_key = dict(await connection.fetchrow("select * from metering.api_keys where key_id = $1", key_id))
    finally:
        await connection.close()
    # Only the key's SHA-256 is kept: no column holds the key or its secret part.
    assert stored_key["key_sha256"] == sha256_hex(key.encode())
    secret = key.split("_", 2)[2]  # urlsafe base64 may itself contain "_"
    assert not any(secret in str(value) for value in stored_key.values())
    url = f"http://127.0.0.1:{backend.http_port}/v1/events"
    await wait_http(backend.http_port)
    good = [world.usage("shop", index, 1_000, 100) for index in range(3)]
    bad = world.usage("shop", 99, 1_000, 100).model_dump(mode="json")
    bad["data"]["consumer_bu"] = world.bu("ghost")
    async with httpx.AsyncClient(timeout=30) as client:
        metrics_before = await _metrics(client, backend.http_port)
        single = await client.post(url, content=canonical_json(good[0]), headers={
            "authorization": f"Bearer {key}", "content-type": "application/cloudevents+json"})
        # Indented, so an element's bytes as sent differ from any re-serialization of it.
        batch_body = orjson.dumps([orjson.loads(canonical_json(event)) for event in good[1:]] + [bad],
                                  option=orjson.OPT_INDENT_2)
        batch = await client.post(url, content=batch_body, headers={
            "authorization": f"Bearer {key}", "content-type": "application/cloudevents-batch+json"})
        again = await client.post(url, content=canonical_json(good[0]), headers={
            "authorization": f"Bearer {key}", "content-type": "application/cloudevents+json"})
        wrong = await client.post(url, content=canonical_json(good[0]), headers={
            "authorization": "Bearer thk_nope_nope", "content-type": "application/cloudevents+json"})
        missing = await client.post(url, content=canonical_json(good[0]), headers={"content-type": "application/cloudevents+json"})
        foreign = await client.post(url, content=canonical_json(good[0]), headers={
            "authorization": f"Bearer {foreign_key}", "content-type": "application/cloudevents+json"})
        revoked = await client.post(url, content=canonical_json(good[0]), headers={
            "authorization": f"Bearer {revoked_key}", "content-type": "application/cloudevents+json"})

        async def echoed() -> bool:  # metering reads its own copies of the HTTP usage back from usage.reported
            metrics = await _metrics(client, backend.http_port)
            return _metric_delta(metrics, metrics_before, "tokenhub_metering_echoes_total") == 3
        await wait_until(echoed, 60, "metering to read back the HTTP usage it published")
        metrics_after = await _metrics(client, backend.http_port)
    assert (single.status_code, single.json()) == (202, {"accepted": 1, "duplicates": 0, "rejected_count": 0, "rejected": []})
    assert batch.status_code == 202
    assert (batch.json()["accepted"], batch.json()["rejected_count"]) == (2, 1)
    assert [(item["index"], item["id"], item["reason_code"]) for item in batch.json()["rejected"]] == [(2, "req-99", "unknown_bu")]
    assert again.json() == {"accepted": 0, "duplicates": 1, "rejected_count": 0, "rejected": []}
    connection = await asyncpg.connect(backend.settings.database_url)
    try:
        stored_original = await connection.fetchval(
            "select original_bytes from metering.rejected_usage where usage_source = $1 and usage_id = 'req-99'",
            f"tests/{world.prefix}")
    finally:
        await connection.close()
    bad_as_sent = batch_body[batch_body.rindex(b"\n  {") + 3:batch_body.rindex(b"\n  }") + 4]  # the last element
    assert stored_original == bad_as_sent and b"\n    " in stored_original  # the element's own bytes, as sent
    assert (wrong.status_code, missing.status_code, foreign.status_code, revoked.status_code) == (401, 401, 403, 401)
    assert "gateway" not in wrong.text and f"tests/{world.prefix}" in foreign.text
    # Metering's Prometheus metrics: accepted, rejected by reason, duplicates and processing latency.
    # Only this test's requests were metered between the two scrapes (earlier tests have settled).
    assert _metric_delta(metrics_after, metrics_before, "tokenhub_metering_accepted_total") == 3
    assert _metric_delta(metrics_after, metrics_before, "tokenhub_metering_rejected_total", reason="unknown_bu") == 1
    assert _metric_delta(metrics_after, metrics_before, "tokenhub_metering_duplicates_total") == 1
    assert _metric_delta(metrics_after, metrics_before, "tokenhub_metering_echoes_total") == 3
    # Three requests, and one to three consumer batches that read the three echoes.
    assert 3 + 1 <= _metric_delta(metrics_after, metrics_before, "tokenhub_metering_batch_seconds_count") <= 3 + 3
    assert _metric_delta(metrics_after, metrics_before, "tokenhub_metering_batch_seconds_sum") > 0

    async def posted() -> bool:
        rows = await _fetch(world.settings, "select count(*) as n from ledger.journal where chain = $1", world.bu("shop"))
        return rows[0]["n"] == 3
    await wait_until(posted, 60, "HTTP usage to reach the ledger")


async def test_binary_and_structured_content_modes_are_both_accepted(backend) -> None:
    world = World(backend.settings)
    await world.publish(["shop"])
    structured = world.usage("shop", 1, 2_000, 200)
    binary = world.usage("shop", 2, 3_000, 300)
    headers = [(f"ce_{name}", str(value).encode()) for name, value in
               orjson.loads(canonical_json(binary)).items() if name != "data"]
    before = await read_counters(world.settings)
    await emit(world.settings, [structured])
    await emit_raw(world.settings, [(b"shop", orjson.dumps(orjson.loads(canonical_json(binary))["data"]))], headers=headers)
    after = await wait_settled(world.settings, before, 2)
    assert delta(after, before, "metering.accepted") == 2
    consumed = {event["usage_id"]: event["tokens"] for event in await _consumed(world)}
    assert consumed == {"req-1": {"input": 2_000, "output": 200}, "req-2": {"input": 3_000, "output": 300}}

    # Bad usage in binary mode is stored with its headers too, a non-UTF-8 one in base64: an
    # unknown business unit, and a header that is not UTF-8 (refused for that, with its own reason).
    unknown = world.usage("shop", 3, 1_000, 100, consumer_bu=world.bu("ghost"))
    unknown_headers = [(f"ce_{name}", str(value).encode()) for name, value in
                       orjson.loads(canonical_json(unknown)).items() if name != "data"]
    unknown_value = orjson.dumps(orjson.loads(canonical_json(unknown))["data"])
    garbled = world.usage("shop", 4, 1_000, 100)
    garbled_headers = [(f"ce_{name}", str(value).encode()) for name, value in
                       orjson.loads(canonical_json(garbled)).items() if name != "data"] + [("trace", b"\xff\xfe")]
    garbled_value = orjson.dumps(orjson.loads(canonical_json(garbled))["data"])
    await emit_raw(world.settings, [(b"shop", unknown_value)], headers=unknown_headers)
    await emit_raw(world.settings, [(b"shop", garbled_value)], headers=garbled_headers)
    rejected = await wait_settled(world.settings, after, 2)
    assert (delta(rejected, after, "metering.rejected.unknown_bu"), delta(rejected, after, "metering.rejected.not_utf8")) == (1, 1)
    rows = await _fetch(world.settings, "select reason_code, usage_id, original_bytes, headers from metering.rejected_usage "
                        "where usage_source = $1 or original_bytes = $2 order by reason_code", f"tests/{world.prefix}",
                        garbled_value)
    assert [(row["reason_code"], row["usage_id"], bytes(row["original_bytes"])) for row in rows] == [
        ("not_utf8", None, garbled_value), ("unknown_bu", "req-3", unknown_value)]
    for row, sent in zip(rows, (garbled_headers, unknown_headers), strict=True):
        stored_headers = orjson.loads(row["headers"]) if isinstance(row["headers"], str) else row["headers"]
        assert {name: domain.header_value(text) for name, text in stored_headers.items()} == dict(sent)

    # Structured mode by its content type, though ce_ headers travel beside it (the Kafka binding).
    structured_too = world.usage("shop", 5, 4_000, 400)
    await emit_raw(world.settings, [(b"shop", canonical_json(structured_too))], headers=[
        ("content-type", b"application/cloudevents+json; charset=utf-8"), ("ce_id", b"a-stray-header")])
    await wait_settled(world.settings, rejected, 1)
    consumed = {event["usage_id"]: event["tokens"] for event in await _consumed(world)}
    assert consumed["req-5"] == {"input": 4_000, "output": 400}


async def _usage_on_topic(bootstrap_servers: str, source: str, expected: int) -> list[bytes]:
    """The values on usage.reported from `source`, read until `expected` distinct ids are seen."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, group_id=None, auto_offset_reset="earliest")
    await consumer.start()
    found: dict[str, bytes] = {}
    try:
        partitions = [TopicPartition(USAGE_REPORTED.name, p) for p in consumer.partitions_for_topic(USAGE_REPORTED.name) or ()]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)

        async def read_all() -> bool:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    try:
                        event = orjson.loads(record.value)
                    except orjson.JSONDecodeError:
                        continue  # binary-mode usage and other tests' malformed input share the topic
                    if isinstance(event, dict) and event.get("source") == source:
                        found.setdefault(event["id"], record.value)
            return len(found) >= expected
        await wait_until(read_all, 60, f"{expected} usage events from {source} on usage.reported")
    finally:
        await consumer.stop()
    return list(found.values())


async def test_usage_sent_over_http_is_on_usage_reported_and_rebuilds_the_ledgers_balances(backend) -> None:
    world = World(backend.settings)
    await world.publish(["shop", "cafe"])
    connection = await asyncpg.connect(world.settings.database_url)
    try:
        _, key = await keys.create(connection, [f"tests/{world.prefix}"], "tests", "usage on the log")
    finally:
        await connection.close()
    await wait_http(backend.http_port)
    over_http = [world.usage("shop", 1, 1_200, 34), world.usage("cafe", 2, 5_600, 78), world.usage("shop", 3, 9_000, 12)]
    over_kafka = [world.usage("cafe", 4, 3_300, 44)]
    bad = world.usage("shop", 5, 100, 1).model_dump(mode="json")
    bad["data"]["consumer_bu"] = world.bu("ghost")
    headers = {"authorization": f"Bearer {key}", "content-type": "application/cloudevents-batch+json"}
    before = await read_counters(world.settings)
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.post(f"http://127.0.0.1:{backend.http_port}/v1/events", headers=headers,
                                     content=orjson.dumps([orjson.loads(canonical_json(event)) for event in over_http] + [bad]))
        again = await client.post(f"http://127.0.0.1:{backend.http_port}/v1/events", headers=headers,
                                  content=orjson.dumps([orjson.loads(canonical_json(over_http[0]))]))
    assert response.status_code == 202
    assert (response.json()["accepted"], response.json()["rejected_count"]) == (3, 1)
    assert (again.json()["accepted"], again.json()["duplicates"]) == (0, 1)
    await emit(world.settings, over_kafka)
    after = await wait_settled(world.settings, before, len(over_http) + 2 + len(over_kafka))

    # Every accepted event is on usage.reported once, however it arrived; the rejected one is not.
    values = await _usage_on_topic(world.settings.bootstrap_servers, f"tests/{world.prefix}", 4)
    on_topic = sorted((UsageReported.model_validate_json(value) for value in values), key=lambda event: event.id)
    assert [event.id for event in on_topic] == ["req-1", "req-2", "req-3", "req-4"]
    assert [canonical_json(event) for event in on_topic] == [canonical_json(event) for event in over_http + over_kafka]

    # Metering read its own HTTP copies back from the topic as echoes: nothing metered twice.
    async def echoed() -> bool:
        return delta(await read_counters(world.settings), before, "metering.echoes") == len(over_http)
    await wait_until(echoed, 60, "metering to read back the HTTP usage it published")
    final = await read_counters(world.settings)
    assert (delta(final, before, "metering.accepted"), delta(final, before, "metering.duplicates"),
            delta(final, before, "metering.published_usage"), delta(final, before, "metering.rejected")) == (4, 1, 3, 1)
    assert delta(final, after, "metering.consumed") == 0

    # Balances rebuilt from the topic alone (prices by hand) equal the ledger's projection.
    rebuilt: dict[str, Decimal] = {}
    for event in on_topic:
        account_spend = f"bu:{event.data.consumer_bu}:spend"
        account_consumed = f"bu:{event.data.consumer_bu}:consumed"
        amount = world.expected_amount(event.data.input_tokens or 0, event.data.output_tokens or 0)
        tokens = Decimal((event.data.input_tokens or 0) + (event.data.output_tokens or 0))
        for account, value in ((account_spend, amount), (f"bu:{world.provider}:revenue", amount),
                               (account_consumed, tokens), (f"bu:{world.provider}:served", tokens)):
            rebuilt[account] = rebuilt.get(account, Decimal(0)) + value
    rows = await _fetch(world.settings, "select account, abs(debit_total - credit_total) as balance from ledger.balances "
                        "where account like $1", f"bu:{world.prefix}-%")
    assert {row["account"]: row["balance"] for row in rows} == rebuilt
    assert rebuilt[f"bu:{world.bu('shop')}:spend"] == world.expected_amount(10_200, 46)


async def test_http_binary_mode_and_strict_types_each_with_its_reason(backend) -> None:
    world = World(backend.settings)
    await world.publish(["shop"])
    connection = await asyncpg.connect(world.settings.database_url)
    try:
        _, key = await keys.create(connection, [f"tests/{world.prefix}"], "tests", "binary mode")
    finally:
        await connection.close()
    await wait_http(backend.http_port)
    url = f"http://127.0.0.1:{backend.http_port}/v1/events"
    event = world.usage("shop", 1, 2_500, 250)
    attributes = {name: value for name, value in orjson.loads(canonical_json(event)).items() if name != "data"}
    binary_headers = {"authorization": f"Bearer {key}", "content-type": "application/json",
                      **{f"ce-{name}": str(value) for name, value in attributes.items()},
                      "ce-subject": "caf%C3%A9"}  # percent-encoded, as the HTTP binding encodes non-ASCII
    data = orjson.dumps(orjson.loads(canonical_json(event))["data"])
    strict = [orjson.loads(canonical_json(world.usage("shop", index, 100, 10))) for index in (2, 3, 4)]
    strict[0]["data"]["input_tokens"] = True
    strict[1]["data"]["output_tokens"] = "12345"
    strict[2]["time"] = 1773453600
    before = await read_counters(world.settings)
    async with httpx.AsyncClient(timeout=30) as client:
        binary = await client.post(url, content=data, headers=binary_headers)
        foreign = await client.post(url, content=data, headers={**binary_headers, "ce-source": "gateway/elsewhere"})
        refused = await client.post(url, content=orjson.dumps(strict), headers={
            "authorization": f"Bearer {key}", "content-type": "application/cloudevents-batch+json"})
    assert (binary.status_code, binary.json()["accepted"]) == (202, 1)
    assert foreign.status_code == 403 and "gateway/elsewhere" in foreign.text
    assert [(item["index"], item["reason_code"]) for item in refused.json()["rejected"]] == [
        (0, "not_an_integer"), (1, "not_an_integer"), (2, "invalid_time")]
    await wait_settled(world.settings, before, 4)
    values = await _usage_on_topic(world.settings.bootstrap_servers, f"tests/{world.prefix}", 1)
    # On usage.reported as one structured event, its subject decoded, the same usage as sent.
    published = UsageReported.model_validate_json(values[0])
    assert (published.id, published.subject, published.data) == ("req-1", "café", event.data)
    consumed = await _consumed(world)
    assert [(item["usage_id"], item["tokens"]) for item in consumed] == [("req-1", {"input": 2_500, "output": 250})]
    rows = await _fetch(world.settings, "select reason_code, original_bytes from metering.rejected_usage "
                        "where usage_source = $1 order by usage_id", f"tests/{world.prefix}")
    assert [(row["reason_code"], orjson.loads(row["original_bytes"])) for row in rows] == [
        ("not_an_integer", strict[0]), ("not_an_integer", strict[1]), ("invalid_time", strict[2])]


def _envelope(world: World, index: int, **changes) -> dict:  # noqa: ANN003
    event = orjson.loads(canonical_json(world.usage("shop", index, 1_000, 100)))
    data = changes.pop("data", None)
    if data is not None:
        event["data"] = {**event["data"], **data}
    for name, value in changes.items():
        if value is None:
            event.pop(name, None)
        else:
            event[name] = value
    return event


async def test_every_class_of_bad_input_is_stored_and_published_while_valid_usage_flows(backend) -> None:
    world = World(backend.settings)
    await world.publish(["shop"])
    now = datetime.now(UTC)
    cases: list[tuple[str, bytes]] = [
        ("not_json", b"{not json at all"),
        ("not_utf8", b"\xff\xfe not even text"),
        ("not_an_integer", orjson.dumps(_envelope(world, 112, data={"input_tokens": True}))),
        ("invalid_time", orjson.dumps(_envelope(world, 113, time=1773453600))),
        ("missing_field", orjson.dumps(_envelope(world, 101, source=None))),
        ("invalid_field", orjson.dumps(_envelope(world, 102, specversion="0.3"))),
        ("unknown_field", orjson.dumps(_envelope(world, 103, data={"thinking_tokens": 5}))),
        ("unknown_bu", orjson.dumps(_envelope(world, 104, data={"consumer_bu": world.bu("ghost")}))),
        ("unknown_model", orjson.dumps(_envelope(world, 105, data={"model": "no-such-model"}))),
        ("negative_quantity", orjson.dumps(_envelope(world, 106, data={"input_tokens": -1}))),
        ("absurd_quantity", orjson.dumps(_envelope(world, 107, data={"output_tokens": 10**14}))),
        ("time_without_zone", orjson.dumps(_envelope(world, 108, time="2026-11-01T10:00:00"))),
        ("time_in_future", orjson.dumps(_envelope(world, 109, time=(now + timedelta(minutes=6)).isoformat()))),
        ("time_too_old", orjson.dumps(_envelope(world, 110, time=(now - timedelta(days=36)).isoformat()))),
        ("oversized", orjson.dumps(_envelope(world, 111, subject="x" * 400, padding="y" * 70_000))),
        ("conflicting_duplicate", orjson.dumps(_envelope(world, 0, data={"input_tokens": 999_999}))),
    ]
    valid = [world.usage("shop", index, 1_000 + index, 10) for index in range(len(cases) + 1)]
    before = await read_counters(world.settings)
    await emit(world.settings, valid[:1])  # req-0 first, so that its conflicting copy arrives later
    await wait_settled(world.settings, before, 1)
    values: list[tuple[bytes, bytes]] = []
    for index, (_, value) in enumerate(cases):
        values.append((b"shop", value))
        values.append((b"shop", canonical_json(valid[index + 1])))
    await emit_raw(world.settings, values)
    after = await wait_settled(world.settings, before, 1 + len(values))
    assert delta(after, before, "metering.accepted") == len(valid)
    assert delta(after, before, "ledger.posted") == len(valid)
    for reason, _ in cases:
        assert delta(after, before, f"metering.rejected.{reason}") == 1, reason

    stored = await _fetch(world.settings, "select reason_code, original_bytes, rejected_id, message from metering.rejected_usage "
                          "where original_sha256 = any($1::text[])", [sha256_hex(value) for _, value in cases])
    by_reason = {row["reason_code"]: row for row in stored}
    assert set(by_reason) == {reason for reason, _ in cases}
    for reason, value in cases:
        assert bytes(by_reason[reason]["original_bytes"]) == value, reason

    published = await _read_rejections(world.settings.bootstrap_servers, {str(row["rejected_id"]) for row in stored})
    assert {event["reason_code"] for event in published} == {reason for reason, _ in cases}
    assert all(event["message"] for event in published)


async def _read_rejections(bootstrap_servers: str, references: set[str]) -> list[dict]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, group_id=None, auto_offset_reset="earliest")
    await consumer.start()
    found: dict[str, dict] = {}
    try:
        partitions = [TopicPartition(USAGE_REJECTED.name, p) for p in consumer.partitions_for_topic(USAGE_REJECTED.name) or ()]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        deadline = asyncio.get_running_loop().time() + 30
        while len(found) < len(references) and asyncio.get_running_loop().time() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    event = orjson.loads(record.value)
                    if event["rejected_ref"] in references:
                        found[event["rejected_ref"]] = event
    finally:
        await consumer.stop()
    assert len(found) == len(references), f"after 30 s, {len(found)} of {len(references)} rejections were on usage.rejected"
    return list(found.values())


async def test_one_event_twice_is_counted_once_across_a_restart_and_with_two_instances(backend) -> None:
    world = World(backend.settings)
    await world.publish(["shop"])
    events = [world.usage("shop", index, 500, 50) for index in range(40)]
    before = await read_counters(world.settings)
    await emit(world.settings, events)
    first = await wait_settled(world.settings, before, len(events))

    backend.services.stop_one("metering")
    backend.services.start("metering")
    await emit(world.settings, events)
    second = await wait_settled(world.settings, first, len(events))
    assert delta(second, first, "metering.duplicates") == 40
    assert delta(second, first, "metering.accepted") == 0

    backend.services.start("metering", name="metering-2", extra_env={"TOKENHUB_HTTP_PORT": str(free_port()),
                                                                    "TOKENHUB_METRICS_PORT": str(free_port())})
    try:
        more = [world.usage("shop", index, 700, 70) for index in range(40, 80)]
        await emit(world.settings, more + events + more)
        third = await wait_settled(world.settings, second, 120)
    finally:
        backend.services.stop_one("metering-2")
    assert delta(third, second, "metering.accepted") == 40
    assert delta(third, second, "metering.duplicates") == 80
    rows = await _fetch(world.settings, "select count(*) as n, count(distinct priced_id) as d from ledger.journal where chain = $1",
                        world.bu("shop"))
    assert (rows[0]["n"], rows[0]["d"]) == (80, 80)


async def test_funding_by_event_time_and_an_exact_three_way_split(backend) -> None:
    world = World(backend.settings)
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30)
    await world.publish(["app", "alpha", "beta", "gamma"], funding=[{
        "agreement_id": f"{world.prefix}-shared", "consumer_bu": world.bu("app"),
        "payers": [{"bu": world.bu("alpha"), "percent": "33.3"}, {"bu": world.bu("beta"), "percent": "33.3"},
                   {"bu": world.bu("gamma"), "percent": "33.4"}],
        "effective_from": start.isoformat()}])
    before_rule = world.usage("app", 1, 1_001, 333, time=start - timedelta(microseconds=1))
    at_rule = world.usage("app", 2, 1_001, 333, time=start)
    before = await read_counters(world.settings)
    await emit(world.settings, [before_rule, at_rule])
    await wait_settled(world.settings, before, 2)
    consumed = await _consumed(world)
    by_usage: dict[str, list[dict]] = {}
    for event in consumed:
        by_usage.setdefault(event["usage_id"], []).append(event)
    assert [event["payer_bu"] for event in by_usage["req-1"]] == [world.bu("app")]
    shares = sorted(by_usage["req-2"], key=lambda event: event["payer_index"])
    assert [event["payer_bu"] for event in shares] == [world.bu("alpha"), world.bu("beta"), world.bu("gamma")]
    assert [event["tokens"]["input"] for event in shares] == [333, 333, 335]
    assert [event["tokens"]["output"] for event in shares] == [111, 111, 111]
    assert all(event["request_input_tokens"] == 1_001 for event in shares)
    rows = await _fetch(world.settings, "select chain as payer_bu, sum(case when money_debit like '%:spend' then amount else -amount end) as spend from ledger.journal "
                        "where chain like $1 group by chain", f"{world.prefix}-%")
    spend = {row["payer_bu"]: row["spend"] for row in rows}
    assert sum(spend[world.bu(name)] for name in ("alpha", "beta", "gamma")) == world.expected_amount(1_001, 333)
    assert spend[world.bu("app")] == world.expected_amount(1_001, 333)


async def test_each_modality_becomes_exact_tokens_of_its_table_version(backend) -> None:
    world = World(backend.settings)
    effective = (datetime.now(UTC) - timedelta(days=2)).isoformat()
    models = [
        {"model_id": f"{world.prefix}-image", "provider_bu": world.provider, "modality": "image", "token_classes": ["input", "image"]},
        {"model_id": f"{world.prefix}-video", "provider_bu": world.provider, "modality": "video", "token_classes": ["video"]},
        {"model_id": f"{world.prefix}-audio", "provider_bu": world.provider, "modality": "audio", "token_classes": ["audio"]},
        {"model_id": f"{world.prefix}-agent", "provider_bu": world.provider, "modality": "agent", "token_classes": ["agent_step", "tool_call"]},
        {"model_id": f"{world.prefix}-tool", "provider_bu": world.provider, "modality": "tool", "token_classes": ["api_call"]},
        {"model_id": f"{world.prefix}-embed", "provider_bu": world.provider, "modality": "embedding", "token_classes": ["input"]},
    ]
    version = 1000 + int(world.prefix[1:5], 16)  # unique per test run: versions are global
    table = {"version": version, "effective_from": effective, "rules": [
        {"unit": "image:1024x1024", "token_class": "image", "tokens_per_unit": "1290"},
        {"unit": "image:*", "token_class": "image", "tokens_per_unit": "1000"},
        {"unit": "video_second:720p", "token_class": "video", "tokens_per_unit": "4000.5"},
        {"unit": "audio_second", "token_class": "audio", "tokens_per_unit": "25"},
        {"unit": "agent_step", "token_class": "agent_step", "tokens_per_unit": "500"},
        {"unit": "tool_call", "token_class": "tool_call", "tokens_per_unit": "200"},
        {"unit": "api_call", "token_class": "api_call", "tokens_per_unit": "100"},
    ]}
    prices = [{"model": model["model_id"], "unit_prices_per_million": dict.fromkeys(model["token_classes"], "1")}
              for model in models]
    await world.publish(["shop"], extra_models=models, conversion_tables=[table], extra_prices=prices)

    def event(index: int, model: str, **quantities):  # noqa: ANN003, ANN202
        input_tokens = quantities.pop("input_tokens", None)
        return world.usage("shop", index, input_tokens, None, model=f"{world.prefix}-{model}", **quantities)  # type: ignore[arg-type]
    events = [
        event(1, "image", input_tokens=40, image_count=3, image_size="1024x1024"),
        event(2, "image", image_count=2, image_size="512x512"),
        event(3, "video", video_seconds="7.5", video_resolution="720p"),
        event(4, "audio", audio_seconds="61.04"),
        event(5, "agent", agent_steps=12, tool_calls=7),
        event(6, "tool", api_calls=3),
        event(7, "embed", embedding_tokens=812),
    ]
    before = await read_counters(world.settings)
    await emit(world.settings, events)
    await wait_settled(world.settings, before, len(events))
    consumed = {event["usage_id"]: event for event in await _consumed(world)}
    assert consumed["req-1"]["tokens"] == {"input": 40, "image": 3870}
    assert consumed["req-2"]["tokens"] == {"image": 2000}
    assert consumed["req-3"]["tokens"] == {"video": 30004}  # 7.5 x 4000.5 = 30003.75, a partial Token rounds up
    assert consumed["req-4"]["tokens"] == {"audio": 1526}  # 61.04 x 25 = 1526
    assert consumed["req-5"]["tokens"] == {"agent_step": 6000, "tool_call": 1400}
    assert consumed["req-6"]["tokens"] == {"api_call": 300}
    assert consumed["req-7"]["tokens"] == {"input": 812}
    assert {usage_id: event.get("conversion_version") for usage_id, event in consumed.items()} == {
        "req-1": version, "req-2": version, "req-3": version, "req-4": version, "req-5": version, "req-6": version,
        "req-7": None}
    assert consumed["req-3"]["raw_units"] == {"video_seconds": "7.5"}
    rows = await _fetch(world.settings, "select sum(case when money_debit like '%:spend' then amount else -amount end) as spend from ledger.journal where chain = $1", world.bu("shop"))
    assert rows[0]["spend"] == Decimal(40 + 3870 + 2000 + 30004 + 1526 + 6000 + 1400 + 300 + 812) / 10**6


async def test_the_sync_client_reports_and_metering_keeps_what_it_produced_keyed_by_usage(backend) -> None:
    from tokenhub.client import SyncUsageClient
    from tokenhub.services.metering.adapters.produced import produced_records

    world = World(backend.settings)
    await world.publish(["shop", "alpha", "beta"], funding=[{
        "agreement_id": f"{world.prefix}-shared", "consumer_bu": world.bu("shop"),
        "payers": [{"bu": world.bu("alpha"), "percent": "60"}, {"bu": world.bu("beta"), "percent": "40"}],
        "effective_from": (datetime.now(UTC) - timedelta(days=2)).isoformat()}])
    before = await read_counters(world.settings)
    events = [world.usage("shop", index, 100 + index, 10) for index in range(5)]
    with SyncUsageClient(world.settings.bootstrap_servers or "") as client:
        assert await asyncio.to_thread(client.report, events) == 5
    after = await wait_settled(world.settings, before, 5)
    assert (delta(after, before, "metering.accepted"), delta(after, before, "metering.consumed")) == (5, 10)

    # One row per TokenConsumed, its canonical bytes; only each event's first row carries
    # the usage's content hash, which is what a copy of the usage is held against.
    rows = await _fetch(world.settings, "select usage_id, content_sha256, usage_value, payload from metering.consumed "
                        "where usage_source = $1 order by seq", f"tests/{world.prefix}")
    assert [row["usage_id"] for row in rows] == [f"req-{index // 2}" for index in range(10)]
    for index, event in enumerate(events):
        first, second = rows[2 * index], rows[2 * index + 1]
        assert bytes(first["content_sha256"]) == bytes.fromhex(sha256_hex(canonical_json(event)))
        assert (second["content_sha256"], first["usage_value"], second["usage_value"]) == (None, None, None)
        consumed = [TokenConsumed.model_validate_json(unpack(row["payload"])) for row in (first, second)]
        assert [canonical_json(item) for item in consumed] == [unpack(first["payload"]), unpack(second["payload"])]
        # 60 % and 40 % of 100..104 input Tokens, by largest remainder
        assert [(item.payer_bu, item.tokens["input"]) for item in consumed] == [
            (world.bu("alpha"), [60, 61, 61, 62, 62][index]), (world.bu("beta"), [40, 40, 41, 41, 42][index])]

    # What the republish after a broker loss reads: the same bytes, keyed by payer, in production order.
    connection = await asyncpg.connect(world.settings.database_url)
    try:
        produced = [record async for record in produced_records(connection)
                    if record[0] == TOKENS_CONSUMED.name and record[2] in {unpack(row["payload"]) for row in rows}]
    finally:
        await connection.close()
    assert [(key, value) for _, key, value, headers in produced] == [
        (TokenConsumed.model_validate_json(unpack(row["payload"])).payer_bu.encode(), unpack(row["payload"])) for row in rows]


async def test_rejected_usage_is_read_a_page_at_a_time_with_a_total_and_counted_by_reason_and_source(backend) -> None:
    from tokenhub.services.common.db import create_pool
    from tokenhub.services.metering import queries

    world = World(backend.settings)
    await world.publish(["shop"])
    source = f"tests/{world.prefix}"
    flood = [orjson.dumps(_envelope(world, 300 + index, data={"consumer_bu": world.bu("ghost")})) for index in range(7)]
    other = [orjson.dumps(_envelope(world, 400 + index, data={"input_tokens": True})) for index in range(2)]
    before = await read_counters(world.settings)
    await emit_raw(world.settings, [(b"shop", value) for value in flood + other])
    await wait_settled(world.settings, before, len(flood) + len(other))
    pool = await create_pool(world.settings.database_url or "", size_max=1)
    try:
        pages, after = [], None
        while True:
            page = await queries.rejected_page(pool, reason_code="unknown_bu", source=source, after=after, limit=3)
            pages.append(page)
            if page.next_after is None:
                break
            after = page.next_after
        everything = await queries.rejected_page(pool, source=source, limit=1_000)
        stats = await queries.rejected_stats(pool)
        with pytest.raises(queries.UnknownRejected):
            await queries.rejected_page(pool, after=uuid.uuid4())
        with pytest.raises(ValueError):
            await queries.rejected_page(pool, limit=0)
    finally:
        await pool.close()
    assert [len(page.rows) for page in pages] == [3, 3, 1]
    assert {page.total for page in pages} == {7}
    assert sorted(row["usage_id"] for page in pages for row in page.rows) == [f"req-{300 + index}" for index in range(7)]
    assert [row["rejected_id"] for page in pages for row in page.rows] == [
        row["rejected_id"] for row in everything.rows if row["reason_code"] == "unknown_bu"]
    assert (everything.total, everything.next_after) == (9, None)
    assert stats.by_source[source] == 9
    assert stats.by_reason["unknown_bu"] >= 7 and stats.by_reason["not_an_integer"] >= 2
    assert stats.total == sum(stats.by_reason.values()) == sum(stats.by_source.values()) + stats.others
