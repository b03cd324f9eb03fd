"""Readiness means what it says: an API whose broker does not answer is up
(/healthz) but not ready (/readyz answers 503 and says which dependency is
missing), so an orchestrator sends it no traffic; the session's API, with both
answering, is ready (tests/integration/test_api.py)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.integration.api_support import start_api, stop_api
from tokenhub.infra.embedded import free_port

pytestmark = pytest.mark.asyncio(loop_scope="session")
READYZ_TIMEOUT_S = 30.0
"""The API bounds each dependency's check (two seconds each); this only catches a hang."""


async def test_an_api_whose_broker_does_not_answer_is_up_but_not_ready(backend, tmp_path: Path) -> None:  # noqa: ANN001
    nobody = f"127.0.0.1:{free_port()}"  # nothing listens there
    api = await start_api(nobody, backend.endpoints.database_url, tmp_path, until_ready=False)
    try:
        async with httpx.AsyncClient(base_url=api.url, timeout=READYZ_TIMEOUT_S) as http:
            assert (await http.get("/healthz")).json() == {"status": "ok"}
            for _ in range(2):  # and again: a failed look leaves nothing half-started that would pass the next one
                response = await http.get("/readyz")
                assert response.status_code == 503, response.text
                assert response.json() == {"status": "not ready", "database": True, "broker": False,
                                           "quota_state": False, "webhooks": False}
    finally:
        stop_api(api)
