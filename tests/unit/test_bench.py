"""The benchmark's pure parts: reading a trace, and when its events are due."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from tokenhub.bench.benchmark import BenchFailed, ProcessStats, Report, percentile, targets, trace_schedule, trace_templates

NOW = datetime(2026, 3, 10, 12, tzinfo=UTC)


def _trace(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "trace.csv"
    path.write_text(text)
    return path


def test_a_trace_keeps_its_models_tokens_and_pace(tmp_path: Path) -> None:
    path = _trace(tmp_path, "timestamp_ms,model,input_tokens,output_tokens\n"
                            "1000,qwen-max,1200,300\n1250,qwen-turbo,80,20\n3000,qwen-max,5,0\n")
    events = trace_templates(path, NOW)
    assert [(event["data"]["model"], event["data"]["input_tokens"], event["data"]["output_tokens"]) for event in events] == [
        ("qwen-max", 1200, 300), ("qwen-turbo", 80, 20), ("qwen-max", 5, 0)]
    assert [event["offset_ms"] for event in events] == [0, 250, 2000]
    assert [event["time"] for event in events] == ["2026-03-10T11:00:00+00:00", "2026-03-10T11:00:00.250000+00:00",
                                                   "2026-03-10T11:00:02+00:00"]
    # Its own pace, and once more end to end, one average gap (1 s) after the last row.
    assert trace_schedule(events, 7) == [0.0, 0.25, 2.0, 3.0, 3.25, 5.0, 6.0]


@pytest.mark.parametrize(("text", "message"), [
    ("timestamp_ms,model,input_tokens\n1,qwen-max,3\n", "the header lacks output_tokens"),
    ("timestamp_ms,model,input_tokens,output_tokens\n1,qwen-max,3,4\n2,qwen-max,many,4\n", "line 3"),
    ("timestamp_ms,model,input_tokens,output_tokens\n", "has no rows"),
    ("", "the header lacks timestamp_ms, model, input_tokens, output_tokens"),
])
def test_a_bad_trace_is_refused_naming_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(BenchFailed, match=message):
        trace_templates(_trace(tmp_path, text), NOW)


def test_percentile_is_nearest_rank() -> None:
    values = [float(value) for value in range(1, 101)]
    assert (percentile(values, 0.50), percentile(values, 0.95), percentile(values, 0.99)) == (50.0, 95.0, 99.0)
    assert percentile([7.0], 0.99) == 7.0 and percentile([], 0.5) == 0.0


def _report(**figures: object) -> Report:
    report = Report(events=9_000, instances=1, latency_events=1_000, latency_rate_offered=5_000, **figures)
    report.processes = {"metering": ProcessStats(10.0, 120.0), "ledger-2": ProcessStats(5.0, 151.0),
                        "postgres": ProcessStats(0.5, 400.0), "broker": ProcessStats(1.0, 900.0)}
    return report


def test_targets_judge_each_figure_by_its_direction() -> None:
    report = _report(cpu_ms_per_event=0.25, baseline_events_per_s=60_000.0, pipeline_events_per_s=12_000.0, ratio_to_baseline=0.2, latency_ms_p99=800.0,
                     verify_entries_per_s=99_999.0, close_usage_events_per_s=50_000.0,
                     replay_archive_events_per_s=400_000.0, bytes_per_usage_event=1_500.0)
    judged = {target.measure: (target.figure, target.met(target.target), target.met(target.stretch))
              for target in targets(report)}
    assert judged == {
        "CPU per usage event, all processes": (0.25, True, False),
        # PostgreSQL's 0.5 CPU s over 10,000 usage events of both phases.
        "PostgreSQL CPU per usage event": (0.05, True, True),
        "end to end": (12_000.0, True, True),
        "ratio to the plain aiokafka passthrough": (0.2, True, False),
        "p99 production -> ledger commit at 5,000/s offered": (0.8, True, True),
        "verify": (99_999.0, False, False),
        "invoice close of a month": (50_000.0, True, None),
        "replay from the archive": (400_000.0, True, None),
        "bytes stored per usage event": (1_500.0, True, True),
        # The largest of the services' peaks, a second instance's included; the broker and PostgreSQL are not services.
        "peak RSS of a service": (151.0, False, None),
    }


@pytest.mark.parametrize(("offered", "p99_ms", "target", "stretch"), [
    (1_000, 300.0, None, None),       # below both rates: says nothing of either
    (3_000, 300.0, True, None),       # the target's rate
    (3_000, 1_200.0, False, None),
    (4_000, 900.0, True, None),       # met at a higher rate: met at the target's too
    (4_000, 1_200.0, None, None),     # missed at a higher rate: says nothing of the target's
    (5_000, 1_000.0, True, True),     # the stretch's rate
    (5_000, 1_200.0, None, False),
])
def test_the_latency_target_is_judged_only_where_its_offered_rate_says_something(
        offered: int, p99_ms: float, target: bool | None, stretch: bool | None) -> None:
    report = _report(latency_ms_p99=p99_ms)
    report.latency_rate_offered = offered
    latency = next(target for target in targets(report) if target.measure.startswith("p99"))
    assert (latency.met(latency.target), latency.met(latency.stretch)) == (target, stretch)


def test_the_ratio_is_not_judged_without_a_baseline() -> None:
    ratio = next(target for target in targets(_report()) if target.measure.startswith("ratio"))
    assert (ratio.target, ratio.stretch) == (None, None)
