"""The one place that configures structlog: JSON lines when not a terminal,
the console renderer in a terminal (docs/architecture.md, Runtime)."""

from __future__ import annotations

import logging
import sys

import structlog

from tokenhub.infra.settings import Settings



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
