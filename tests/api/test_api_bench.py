"""The quota benchmark's arithmetic: percentiles of the latencies it measured,
the server-side p99 read from the API's Prometheus histogram, the ratio to the
baseline, and the baseline app itself."""

from __future__ import annotations

import dataclasses

import httpx
import pytest

from tokenhub.api.bench import BASELINE_BODY, BenchResult, _percentile, _server_p99, baseline_app

METRICS = """
tokenhub_api_request_seconds_bucket{le="0.001",method="GET",route="/v1/quota/{payer}"} 900.0
tokenhub_api_request_seconds_bucket{le="0.002",method="GET",route="/v1/quota/{payer}"} 985.0
tokenhub_api_request_seconds_bucket{le="0.005",method="GET",route="/v1/quota/{payer}"} 995.0
tokenhub_api_request_seconds_bucket{le="+Inf",method="GET",route="/v1/quota/{payer}"} 1000.0
tokenhub_api_request_seconds_count{method="GET",route="/v1/quota/{payer}"} 1000.0
tokenhub_api_request_seconds_bucket{le="0.001",method="GET",route="/v1/balances"} 0.0
tokenhub_api_request_seconds_count{method="GET",route="/v1/balances"} 7.0
"""


def test_percentiles_take_the_value_at_that_rank() -> None:
    values = [float(value) for value in range(1, 101)]
    assert (_percentile(values, 0.5), _percentile(values, 0.99), _percentile([], 0.99)) == (51.0, 100.0, 0.0)


def test_the_server_p99_is_the_first_bucket_holding_99_percent_of_quota_checks() -> None:
    assert _server_p99(METRICS) == "5"
    assert _server_p99(METRICS.replace("995.0", "989.0")) == "inf"
    assert _server_p99("") == "n/a"


def test_the_result_gives_the_quota_checks_latency_as_a_ratio_to_the_baselines() -> None:
    result = BenchResult(requests=3000, seconds=3.0, rate_offered=1000.0, errors=0, latency_ms_p50=1.5, latency_ms_p90=2.0,
                         latency_ms_p99=4.5, latency_ms_max=9.0, server_ms_p99_bucket="5", payers=200, postings=20000,
                         baseline_ms_p50=1.0, baseline_ms_p99=3.0)
    assert (result.ratio_p50, result.ratio_p99) == (1.5, 1.5)
    assert "quota check / baseline: p50 1.50x  p99 1.50x" in "\n".join(result.lines())
    assert result.document()["ratio_p99"] == 1.5 and result.document()["baseline_ms_p99"] == 3.0
    unmeasured = dataclasses.replace(result, baseline_ms_p50=None, baseline_ms_p99=None)
    assert unmeasured.ratio_p99 is None and "baseline: not measured" in unmeasured.lines()


@pytest.mark.asyncio
async def test_the_baseline_app_answers_any_request_with_its_fixed_body() -> None:
    transport = httpx.ASGITransport(app=baseline_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
        response = await client.get("/v1/quota/bench-payer-7?consumer=bench-payer-7", headers={"authorization": "Bearer x"})
    assert (response.status_code, response.content) == (200, BASELINE_BODY)
    assert response.json()["status"] == "allowed"
