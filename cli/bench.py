"""`tokenhub bench`: runs the benchmark (`bench.benchmark`), prints its
figures (`views.bench`) and writes them as JSON."""

from __future__ import annotations

import argparse
from pathlib import Path

import psutil

from tokenhub.bench.benchmark import EVENTS_DEFAULT, LATENCY_RATE_DEFAULT, run_bench, write_report
from tokenhub.cli import args
from tokenhub.cli.errors import CliError
from tokenhub.infra.settings import Settings
from tokenhub.services.common.logging import configure_logging
from tokenhub.views.bench import report_text


async def bench(arguments: argparse.Namespace) -> int:
    configure_logging(Settings(log_level="WARNING"))  # the benchmark reports in a table; progress goes to stderr
    if arguments.events is not None and arguments.events <= 0:
        raise CliError("--events must be positive")
    report = await run_bench(events=arguments.events, rate=arguments.rate, trace=Path(arguments.trace) if arguments.trace else None,
                             as_fast_as_possible=arguments.as_fast_as_possible, instances=arguments.instances,
                             skip_baseline=arguments.skip_baseline, broker=arguments.broker)
    print(report_text(report, psutil.cpu_count()))
    output = write_report(report, Path(arguments.output) if arguments.output else None)
    print(f"wrote {output}")
    if report.verify_violations > 0:
        raise CliError(f"verify found {report.verify_violations} invariant violations after the run: the figures do not count")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    arg = args.arg
    args.command(
        subparsers, "bench", "benchmark the pipeline against a plain aiokafka baseline", bench,
        arg("--events", type=int, help=f"usage events to send (default {EVENTS_DEFAULT:,}, or a trace's rows once)"),
        arg("--rate", type=int, default=LATENCY_RATE_DEFAULT,
            help=f"offered events/s for the latency phase (default: {LATENCY_RATE_DEFAULT:,})"),
        arg("--trace", help="a CSV of usage to replay: timestamp_ms,model,input_tokens,output_tokens"),
        arg("--as-fast-as-possible", action="store_true", help="replay a trace without its pace"),
        arg("--instances", type=int, choices=(1, 2), default=1, help="instances of each service (default: 1)"),
        arg("--skip-baseline", action="store_true", help="measure the pipeline only, not the plain baselines"),
        arg("--broker", choices=("tansu", "kafka"), default="tansu",
            help="tansu: the embedded broker (default); kafka: one Apache Kafka node (infra/kafka), same-run baselines on it"),
        arg("--output", help="where to write the JSON report (default: bench-results/bench-TIME.json)"),
        examples=("tokenhub bench --events 20000", "tokenhub bench --instances 2 --output report.json"))
