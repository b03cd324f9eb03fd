"""HTTP ingest: `POST /v1/events` with one CloudEvent (`application/cloudevents+json`),
a batch (`application/cloudevents-batch+json`), or one event in the HTTP
binding's binary mode (`ce-` headers, the data as an `application/json` body),
authenticated by an API key bound to the sources it may report for. `GET /metrics`.

The path of usage that arrives here, so that usage.reported holds all usage:
1. The request is metered at once, in one PostgreSQL transaction, by the same
   core, record and rejected store as usage from Kafka: metering's record of
   its TokenConsumed (`metering.consumed`, keyed by source + id, the event's
   first row keeping the bytes received) is stored, and the TokenConsumed and
   the usage itself go into metering's outbox, for tokens.consumed and for
   usage.reported. Bad usage is stored with its reason as from Kafka.
2. Only after that commit does HTTP answer 202, with each event's result
   (accepted, duplicate, or rejected with its reason): the usage is durable in
   PostgreSQL, whatever happens to the broker. An in-memory broker's
   acknowledgement alone would not be.
3. The outbox relay publishes the usage on usage.reported (keyed by consumer
   BU, the bytes as received) and its consumption on tokens.consumed.
4. Metering's consumer then reads the usage back from usage.reported: its
   source + id are stored already, with the same content, so it is counted as
   an echo (`metering.echoes`) and metered no second time.
So a replay of usage.reported sees HTTP usage like any other, and balances
rebuilt from it equal the ledger's."""

from __future__ import annotations

import fnmatch
import re
from urllib.parse import unquote_to_bytes
from typing import Final

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tokenhub.services.metering import domain
from tokenhub.services.metering.handlers import Incoming, Metering

SINGLE: Final = "application/cloudevents+json"
CE_HTTP_PREFIX: Final = b"ce-"
CE_KAFKA_PREFIX: Final = domain.CE_HEADER_PREFIX
BATCH: Final = "application/cloudevents-batch+json"
BATCH_EVENTS_MAX: Final = 1_000  # one transaction per request: bounded like a Kafka batch
BODY_BYTES_MAX: Final = 8 * 1024 * 1024


def _problem(status: int, title: str) -> JSONResponse:
    return JSONResponse({"error": title}, status_code=status)


# Strings whole (escapes included), then the punctuation that nests or separates.
_JSON_TOKENS: Final = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{},]')


def array_elements(body: bytes) -> list[bytes]:
    """The bytes of each top-level element of a JSON array, exactly as sent
    (surrounding whitespace trimmed), so a rejected element is stored as it came.
    The caller has checked that `body` parses as an array."""
    elements: list[bytes] = []
    depth = 0
    start = 0
    for token in _JSON_TOKENS.finditer(body):
        mark = token.group()
        if mark in (b"[", b"{"):
            depth += 1
            if depth == 1:
                start = token.end()
        elif mark in (b"]", b"}"):
            depth -= 1
            if depth == 0:
                element = body[start:token.start()].strip()
                if element:
                    elements.append(element)
        elif mark == b"," and depth == 1:
            elements.append(body[start:token.start()].strip())
            start = token.end()
    return elements


def _split(body: bytes, content_type: str) -> list[bytes] | None:
    """Each event's bytes. A batch is split into its elements; a body that is not a
    JSON array is metered as one event, so its bytes are stored with a reason."""
    if content_type.startswith(BATCH):
        try:
            items = orjson.loads(body)
        except orjson.JSONDecodeError:
            return [body]
        if not isinstance(items, list):
            return [body]
        elements = array_elements(body)
        if len(elements) != len(items):  # cannot happen for valid JSON; never store a wrong split
            return [orjson.dumps(item) for item in items]
        return elements
    return [body]


def binary_attributes(headers: list[tuple[bytes, bytes]], content_type: str) -> tuple[tuple[str, bytes], ...] | None:
    """The attributes of a binary-mode request (the CloudEvents HTTP binding:
    `ce-` headers, percent-encoded, with the data as the body), as the Kafka
    binding's `ce_` headers that metering's core reads; None for structured mode
    (a cloudevents content type, or no `ce-specversion`)."""
    if content_type.startswith(SINGLE) or content_type.startswith(BATCH):
        return None
    attributes = tuple((CE_KAFKA_PREFIX + name[len(CE_HTTP_PREFIX):].decode("latin-1"), unquote_to_bytes(value))
                       for name, value in headers if name.lower().startswith(CE_HTTP_PREFIX))
    if not any(name == CE_KAFKA_PREFIX + "specversion" for name, _ in attributes):
        return None
    return attributes


def _source(value: bytes) -> str | None:
    try:
        event = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    source = event.get("source") if isinstance(event, dict) else None
    return source if isinstance(source, str) else None


def create_http_app(metering: Metering) -> FastAPI:
    app = FastAPI(title="Token Hub ingest", version="1")

    @app.post("/v1/events", status_code=202)
    async def ingest(request: Request) -> Response:
        authorization = request.headers.get("authorization", "")
        token = authorization.removeprefix("Bearer ").strip()
        if not token:
            return _problem(401, "missing API key: send Authorization: Bearer <key>")
        api_key = await metering.store.api_key(token)
        if api_key is None:
            return _problem(401, "unknown or revoked API key")
        content_type = request.headers.get("content-type", "")
        if not (content_type.startswith(SINGLE) or content_type.startswith(BATCH) or content_type.startswith("application/json")):
            return _problem(415, f"content type must be {SINGLE}, {BATCH}, or application/json with ce- headers")
        body = await request.body()
        if len(body) > BODY_BYTES_MAX:
            return _problem(413, f"body larger than {BODY_BYTES_MAX} bytes; send smaller batches")
        key_header = ("http_key_id", api_key.key_id.encode())
        attributes = binary_attributes(request.headers.raw, content_type)
        if attributes is not None:
            # Binary mode: one event, its attributes in ce- headers, the body its data.
            sources = [value.decode(errors="replace") for name, value in attributes if name == "ce_source"]
            batch = [Incoming(domain.RawUsage(body, (*attributes, key_header)), topic="http")]
        else:
            values = _split(body, content_type)
            if values is None or len(values) > BATCH_EVENTS_MAX:
                return _problem(413, f"at most {BATCH_EVENTS_MAX} events per request")
            sources = [source for value in values if (source := _source(value)) is not None]
            batch = [Incoming(domain.RawUsage(value, (key_header,)), topic="http") for value in values]
        foreign = sorted({source for source in sources
                          if not any(fnmatch.fnmatchcase(source, allowed) for allowed in api_key.sources)})
        if foreign:
            return _problem(403, f"key {api_key.key_id} may not report for source {foreign[0]}")
        outcome = await metering.meter_batch(batch, publish_usage=True)
        position = {id(incoming): index for index, incoming in enumerate(batch)}
        return JSONResponse({
            "accepted": outcome.accepted,
            "duplicates": outcome.duplicates,
            "rejected_count": len(outcome.rejected),
            "rejected": [{"index": position[id(incoming)], "id": rejection.usage_id, "source": rejection.usage_source,
                          "reason_code": rejection.reason_code, "message": rejection.message}
                         for incoming, rejection in outcome.rejected],
        }, status_code=202)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app
