"""Every service serves /metrics and /healthz on the port derived from the
stack's settings, and each figure is served by the service that owns it."""

from __future__ import annotations

import httpx
import pytest

from tests.integration.support import SETTLE_TIMEOUT_S
from tokenhub.contracts.topics import SERVICES
from tokenhub.infra.pipeline import wait_until
from tokenhub.infra.settings import Settings
from tokenhub.services.common.metrics import metrics_port

pytestmark = pytest.mark.asyncio(loop_scope="session")

OWN_FIGURES = {
    "metering": "tokenhub_metering_accepted_total",
    "pricing": "tokenhub_pricing_parked_now",
}


async def test_each_service_serves_its_health_and_only_its_own_figures(backend) -> None:  # noqa: ANN001
    settings = Settings(metrics_port_base=int(backend.services.env["TOKENHUB_METRICS_PORT_BASE"]))
    pages: dict[str, str] = {}
    async with httpx.AsyncClient(timeout=5) as client:
        for service in SERVICES:
            base = f"http://127.0.0.1:{metrics_port(settings, service)}"
            health: dict = {}

            async def healthy(base: str = base) -> bool:
                nonlocal health
                try:
                    response = await client.get(f"{base}/healthz")
                except httpx.TransportError:
                    return False
                health = response.json()
                return response.status_code == 200

            await wait_until(healthy, SETTLE_TIMEOUT_S, f"{service}'s /healthz")
            assert (health["service"], health["status"]) == (service, "ok")
            pages[service] = (await client.get(f"{base}/metrics")).text
    for service, page in pages.items():
        assert "# TYPE tokenhub_records_processed_total counter" in page
        for owner, figure in OWN_FIGURES.items():
            assert (figure in page) == (owner == service), f"{figure} on {service}'s /metrics"
