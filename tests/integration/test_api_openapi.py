"""Schemathesis against the API's own OpenAPI document, on the real stack:
requests generated from every operation's parameters and bodies, with a
finance key and a business unit's key, and with an admin key for the changes
made in invoicing's tables (plans, billing cycles), get no server error and no
response the document does not describe (status, content type, headers, body).
The admin key stays off the changes published as events: generated units,
models and books that pass validation would stay in the session's registry."""

from __future__ import annotations

import asyncio
import uuid
from builtins import BaseExceptionGroup

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.integration.api_support import RunningApi, api  # noqa: F401 - a fixture
from tokenhub.client.api import ApiClient

pytestmark = pytest.mark.asyncio(loop_scope="session")
EXAMPLES_PER_OPERATION = 12  # two roles x every operation: about 1,000 requests, a minute or two
ADMIN_CHANGES = {("POST", "/v1/plans"), ("POST", "/v1/plans/end"), ("POST", "/v1/billing-cycles")}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]


async def test_generated_requests_get_no_server_error_and_no_undocumented_response(api: RunningApi) -> None:  # noqa: F811
    owner = f"schemathesis-{uuid.uuid4().hex[:6]}"
    keys = {"finance": await api.key("finance", owner=owner), "bu-reader": await api.key("bu-reader", "schemathesis-unit"),
            "admin": await api.key("admin", owner=owner)}
    async with httpx.AsyncClient(base_url=api.url) as http:
        document = (await http.get("/openapi.json")).json()
    schema = schemathesis.openapi.from_dict(document)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 40, [operation.label for operation in operations]
    assert ADMIN_CHANGES <= {(operation.method.upper(), operation.path) for operation in operations}
    failures: list[str] = []

    def run() -> None:
        for operation in operations:
            for role, key in keys.items():
                if role == "admin" and (operation.method.upper(), operation.path) not in ADMIN_CHANGES:
                    continue
                @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
                          suppress_health_check=list(HealthCheck))
                @given(operation.as_strategy())
                def check(case: schemathesis.Case) -> None:
                    response = case.call(base_url=api.url, headers={"authorization": f"Bearer {key}"}, timeout=60)
                    case.validate_response(response, checks=CHECKS)

                try:
                    check()
                except (Exception, BaseExceptionGroup) as failure:  # noqa: BLE001 - every operation is tried; all are reported
                    failures.append(f"{operation.label} as {role}: {str(failure)[:1500]}")

    await asyncio.to_thread(run)
    async with ApiClient(api.url, keys["finance"]) as finance:
        for hook in await finance.all("/v1/webhooks"):
            if hook["owner"] == owner and hook["disabled_at"] is None:
                await finance.request("DELETE", f"/v1/webhooks/{hook['webhook_id']}")  # generated URLs hear of nothing more
    assert not failures, "\n\n".join(failures)
