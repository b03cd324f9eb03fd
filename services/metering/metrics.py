"""Metering's Prometheus metrics: accepted, rejected by reason, duplicates, latency."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import Counter, Histogram


@dataclass(frozen=True)
class MeteringMetrics:
    accepted: Counter
    rejected: Counter
    duplicates: Counter
    batch_seconds: Histogram

    def observe_batch(self, accepted: int, duplicates: int, reasons: list[str], seconds: float) -> None:
        self.accepted.inc(accepted)
        self.duplicates.inc(duplicates)
        for reason in reasons:
            self.rejected.labels(reason=reason).inc()
        self.batch_seconds.observe(seconds)


METRICS = MeteringMetrics(
    accepted=Counter("tokenhub_metering_accepted", "Usage events accepted"),
    rejected=Counter("tokenhub_metering_rejected", "Usage events rejected", ["reason"]),
    duplicates=Counter("tokenhub_metering_duplicates", "Exact duplicate usage events dropped"),
    batch_seconds=Histogram("tokenhub_metering_batch_seconds", "Time to meter one batch"),
)
