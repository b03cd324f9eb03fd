"""The quota benchmark's arithmetic: percentiles of the latencies it measured
and the server-side p99 read from the API's Prometheus histogram."""

from __future__ import annotations

from tokenhub.api.bench import _percentile, _server_p99

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
