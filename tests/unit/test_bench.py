"""The benchmark's pure parts: reading a trace, and when its events are due."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from tokenhub.bench.benchmark import BenchFailed, percentile, trace_schedule, trace_templates

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
