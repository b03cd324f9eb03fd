"""The one place that configures structlog: JSON lines when not a terminal,
the console renderer in a terminal (docs/architecture.md, Runtime); and the
context every unit of work binds: a batch its topic, partitions and offset
ranges, a record on its own its offset and event id."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import structlog
from aiokafka.structs import ConsumerRecord

from tokenhub.infra.settings import Settings

CLOUDEVENTS_ID_HEADER = "ce_id"
"""Where a binary-mode CloudEvent carries its id (the value holds only `data`)."""


def batch_context(service: str, records: Sequence[ConsumerRecord]) -> dict[str, Any]:
    """What a batch's log lines carry: its topic, and the offsets it spans per
    partition as `first-last`, so a line leads to the records behind it."""
    spans: dict[tuple[str, int], list[int]] = {}
    for record in records:
        span = spans.get((record.topic, record.partition))
        if span is None:
            spans[(record.topic, record.partition)] = [record.offset, record.offset]
        elif record.offset > span[1]:
            span[1] = record.offset
        elif record.offset < span[0]:
            span[0] = record.offset
    topics = sorted({topic for topic, _ in spans})
    context: dict[str, Any] = {"service": service, "batch_size": len(records),
                               "topic": topics[0] if len(topics) == 1 else topics}
    if len(spans) == 1:
        ((_, partition), (first, last)), = spans.items()
        context.update(partition=partition, offsets=f"{first}-{last}")
    else:
        context["offsets"] = {(str(partition) if len(topics) == 1 else f"{topic}:{partition}"): f"{first}-{last}"
                              for (topic, partition), (first, last) in sorted(spans.items())}
    return context


def record_context(record: ConsumerRecord) -> dict[str, Any]:
    """What the lines about one record carry (the path that isolates a failing
    record): where it is, and the id of the event it holds when it has one."""
    event_id = next((value.decode(errors="replace") for name, value in record.headers or ()
                     if name == CLOUDEVENTS_ID_HEADER and value), None)
    if event_id is None:
        try:
            payload = orjson.loads(record.value or b"")
            event_id = payload.get("id") if isinstance(payload, dict) else None
        except orjson.JSONDecodeError:
            event_id = None  # not JSON: the offset is what finds it
    return {"topic": record.topic, "partition": record.partition, "offset": record.offset,
            "event_id": None if event_id is None else str(event_id)}



def configure_logging(settings: Settings | None = None, *, stream: object = None) -> None:
    level_name = (settings.log_level if settings else "INFO").upper()
    level = logging.getLevelNamesMapping().get(level_name, logging.INFO)
    output = stream or sys.stderr
    log_format = settings.log_format if settings else "auto"
    use_console = log_format == "console" or (log_format == "auto" and output.isatty())  # type: ignore[attr-defined]
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer(colors=True) if use_console else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=output),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )
    # Libraries log through the standard library; keep their chatter at warnings.
    logging.basicConfig(level=logging.WARNING, stream=output, format="%(levelname)s %(name)s %(message)s")
    for noisy in ("aiokafka", "faststream", "kafka"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class LogFile:
    """A log file opened on the first line written, so a command that logs
    nothing leaves no file behind (a stream for `configure_logging`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file = None

    def write(self, text: str) -> int:
        if self.file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.file = self.path.open("a", encoding="utf-8")
        return self.file.write(text)

    def flush(self) -> None:
        if self.file is not None:
            self.file.flush()

    def isatty(self) -> bool:
        return False
