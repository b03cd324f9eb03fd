"""Metering's Prometheus metrics: accepted, rejected by reason, duplicates, latency.
Made once per service (`Metering` owns them) against the registry it is given."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram


@dataclass(frozen=True)
class MeteringMetrics:
    accepted: Counter
    rejected: Counter
    duplicates: Counter
    echoes: Counter
    batch_seconds: Histogram

    @classmethod
    def create(cls, registry: CollectorRegistry) -> MeteringMetrics:
        return cls(
            accepted=Counter("tokenhub_metering_accepted", "Usage events accepted", registry=registry),
            rejected=Counter("tokenhub_metering_rejected", "Usage events rejected", ["reason"], registry=registry),
            duplicates=Counter("tokenhub_metering_duplicates", "Exact duplicate usage events dropped", registry=registry),
            echoes=Counter("tokenhub_metering_echoes", "Usage accepted over HTTP read back from usage.reported",
                           registry=registry),
            batch_seconds=Histogram("tokenhub_metering_batch_seconds", "Time to meter one batch", registry=registry),
        )

    def observe_batch(self, accepted: int, duplicates: int, echoes: int, reasons: list[str], seconds: float) -> None:
        self.accepted.inc(accepted)
        self.duplicates.inc(duplicates)
        self.echoes.inc(echoes)
        for reason in reasons:
            self.rejected.labels(reason=reason).inc()
        self.batch_seconds.observe(seconds)
