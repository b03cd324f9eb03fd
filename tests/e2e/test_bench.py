"""`tokenhub bench` as a person runs it, small: its own embedded stack and
services, every baseline client, both phases, replay and verify. What is
checked is what the figures rest on (exact counts, invariants, a baseline per
client); the figures themselves are not timed here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tokenhub.bench.passthrough import CLIENTS

EVENTS = 400
TRACE_ROWS = 200


def test_bench_counts_every_event_once_and_reports_every_baseline(tmp_path: Path) -> None:
    output = tmp_path / "bench.json"
    environment = {key: value for key, value in os.environ.items() if not key.startswith("TOKENHUB_")}
    finished = subprocess.run([sys.executable, "-m", "tokenhub.cli.main", "bench", "--events", str(EVENTS), "--rate", "400",
                               "--output", str(output)], env=environment, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stdout + finished.stderr[-3000:]
    report = json.loads(output.read_text())

    counts = report["counts"]
    assert counts["metering.accepted"] == EVENTS
    consumed = counts["metering.consumed"]
    assert consumed > EVENTS  # the load has split usage: one usage event, several payers
    assert counts["pricing.priced"] == counts["ledger.posted"] == counts["invoicing.postings"] == consumed
    assert report["verify_violations"] == 0
    # The latency phase stamps the same templates again, so both phases post the same number of Priced.
    assert report["replay_events"] == 2 * consumed
    assert report["latency_events"] == EVENTS
    # Month end over both phases' usage, then verify over every entry, the close's tier adjustments included.
    assert report["close_usage_events"] == 2 * EVENTS
    assert report["close_invoices"] > 0 and report["close_lines"] >= report["close_invoices"]
    adjustments = report["verify_entries"] - 2 * consumed
    assert 0 <= adjustments <= report["close_lines"]
    # Every table of the four schemas is counted, the journal and the two records of each event the largest.
    largest = {relation["relation"] for relation in report["stored_relations"][:3]}
    assert largest == {"ledger.journal", "pricing.priced", "metering.consumed"}
    assert report["stored_bytes"] >= sum(relation["total_bytes"] for relation in report["stored_relations"])
    assert report["bytes_per_usage_event"] == round(report["stored_bytes"] / (2 * EVENTS), 1)

    assert list(report["baselines"]) == list(CLIENTS)
    # A hop's CPU over 400 events can be below the clock tick, so only its presence is held here.
    assert all(baseline["events_per_s"] > 0 and baseline["hop_cpu_us_per_event"] >= 0
               and baseline["broker_cpu_us_per_event"] >= 0 for baseline in report["baselines"].values())
    assert report["baseline_events_per_s"] == report["baselines"]["aiokafka"]["events_per_s"]
    assert set(report["processes"]) == {"metering", "pricing", "ledger", "invoicing", "broker", "postgres"}
    assert all(stats["cpu_seconds"] > 0 and stats["peak_rss_mb"] > 0 for stats in report["processes"].values())
    assert "baseline (faststream-confluent, 4 hops)" in finished.stdout and "all hold" in finished.stdout
    assert "issue 21's targets" in finished.stdout and "invoice close" in finished.stdout


def test_bench_replays_a_trace_at_its_own_pace(tmp_path: Path) -> None:
    trace = tmp_path / "trace.csv"
    models = ("qwen-max", "qwen-turbo", "qwen-plus", "qwen3-coder-plus")
    trace.write_text("timestamp_ms,model,input_tokens,output_tokens\n" + "".join(
        f"{1_700_000_000_000 + index * 10},{models[index % len(models)]},{100 + index * 37},{index * 11}\n"
        for index in range(TRACE_ROWS)))
    output = tmp_path / "bench.json"
    environment = {key: value for key, value in os.environ.items() if not key.startswith("TOKENHUB_")}
    finished = subprocess.run([sys.executable, "-m", "tokenhub.cli.main", "bench", "--trace", str(trace), "--skip-baseline",
                               "--rate", "300", "--output", str(output)], env=environment, capture_output=True, text=True,
                              timeout=600)
    assert finished.returncode == 0, finished.stdout + finished.stderr[-3000:]
    report = json.loads(output.read_text())
    assert report["events"] == TRACE_ROWS  # without --events, the trace once
    assert report["counts"]["metering.accepted"] == TRACE_ROWS
    assert report["counts"]["ledger.posted"] == report["counts"]["metering.consumed"] >= TRACE_ROWS
    assert report["verify_violations"] == 0 and report["baselines"] == {}


def test_bench_refuses_a_bad_trace_in_one_line(tmp_path: Path) -> None:
    trace = tmp_path / "trace.csv"
    trace.write_text("timestamp_ms,model,input_tokens\n1,qwen-max,3\n")
    finished = subprocess.run([sys.executable, "-m", "tokenhub.cli.main", "bench", "--trace", str(trace)],
                              capture_output=True, text=True, timeout=120)
    assert finished.returncode != 0
    assert finished.stderr.strip().splitlines()[-1].endswith("the header lacks output_tokens "
                                                             "(wanted timestamp_ms,model,input_tokens,output_tokens)")
    assert "Traceback" not in finished.stderr
