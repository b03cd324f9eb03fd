"""verify and replay for auditors (and admins): started over HTTP, run in the
background with the auditor's own code (`tokenhub.audit`, independent of the
services'), their reports kept in the api schema for finance, auditors and
admins to read."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final, Literal

import structlog
from fastapi import APIRouter, Depends, Path, Query, Request, status

from tokenhub.api.access import Principal
from tokenhub.api.adapters import store
from tokenhub.api.hub import Hub
from tokenhub.api.models import Accepted, AuditRequest, AuditRun, Page
from tokenhub.api.paging import PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX, BadCursor, decode_cursor, encode_cursor
from tokenhub.api.web import AUTH_ERRORS, NOT_FOUND, ApiError, hub_of, principal, require_audit
from tokenhub.audit import replay as audit_replay
from tokenhub.audit import verify as audit_verify

router = APIRouter(tags=["audit"])
FIGURES: Final = ("spend", "revenue", "tokens_consumed", "tokens_served")
IDLE_TIMEOUT_S: Final = 3.0
log = structlog.get_logger()


def verify_report(report: Any) -> dict[str, Any]:
    return {"ok": report.ok, "scope": report.scope,
            "checks": [{"name": check.name, "title": check.title, "ok": check.ok, "examined": check.examined,
                        "skipped": check.skipped,
                        "violations": [{"subject": violation.subject, "detail": violation.detail} for violation in check.violations]}
                       for check in report.checks]}


def replay_report(report: Any) -> dict[str, Any]:
    def figures(values: dict[str, Decimal]) -> dict[str, str]:
        return {figure: f"{values[figure]:f}" for figure in FIGURES}

    return {"ok": report.ok, "source": report.source, "as_of": report.as_of.isoformat() if report.as_of else None,
            "bu": report.bu, "events": report.events, "conflicting_copies": report.conflicts,
            "differences": [{"bu": difference.bu, "figure": difference.figure, "rebuilt": f"{difference.rebuilt:f}",
                             "projected": f"{difference.projected:f}"} for difference in report.differences],
            "balances": {bu: figures(values) for bu, values in sorted(report.rebuilt.items())
                         if report.bu is None or bu == report.bu}}


async def _run(hub: Hub, run_id: uuid.UUID, kind: str, request: AuditRequest) -> None:
    report: dict[str, Any] | None = None
    error: str | None = None
    try:
        if kind == "verify":
            found = await audit_verify.verify(hub.reader, hub.bootstrap_servers, scope=request.bu,
                                                         minor_units=hub.settings.currency_minor_units,
                                                         idle_timeout_s=IDLE_TIMEOUT_S)
            report = verify_report(found)
        else:
            found = await audit_replay.replay(hub.reader, hub.bootstrap_servers, source=request.source,
                                                         bu=request.bu, as_of=request.as_of, with_reprice=request.reprice,
                                                         idle_timeout_s=IDLE_TIMEOUT_S)
            report = replay_report(found)
    except asyncio.CancelledError:
        error = "the API stopped before the run finished"
        raise
    except Exception as failure:  # noqa: BLE001 - the run's outcome is recorded, the API goes on
        log.exception("audit_run_failed", run_id=str(run_id), kind=kind)
        error = f"{type(failure).__name__}: {failure}"
    finally:
        async with hub.writer.acquire() as connection:
            await store.finish_run(connection, run_id, datetime.now(UTC), report["ok"] if report else None, report, error)
        log.info("audit_run_finished", run_id=str(run_id), kind=kind, ok=report["ok"] if report else None, error=error)


async def _start(request: Request, kind: Literal["verify", "replay"], body: AuditRequest, who: Principal) -> Accepted:
    hub = hub_of(request)
    run_id = uuid.uuid4()
    async with hub.writer.acquire() as connection:
        await store.insert_run(connection, run_id, kind, body.bu, who.owner, datetime.now(UTC))
    hub.tasks.append(asyncio.create_task(_run(hub, run_id, kind, body), name=f"api-audit-{run_id}"))
    return Accepted(status="accepted", id=str(run_id))


@router.post("/v1/audit/verify", status_code=status.HTTP_202_ACCEPTED, response_model=Accepted, responses=AUTH_ERRORS,
             summary="Start `verify`: hash chains and invariants 1-6 (auditor or admin keys)")
async def verify(request: Request, body: AuditRequest, who: Principal = Depends(require_audit)) -> Accepted:
    return await _start(request, "verify", body, who)


@router.post("/v1/audit/replay", status_code=status.HTTP_202_ACCEPTED, response_model=Accepted, responses=AUTH_ERRORS,
             summary="Start `replay`: rebuild balances from the log and compare (auditor or admin keys)")
async def replay(request: Request, body: AuditRequest, who: Principal = Depends(require_audit)) -> Accepted:
    return await _start(request, "replay", body, who)


@router.get("/v1/audit/runs", response_model=Page[AuditRun], responses=AUTH_ERRORS,
            summary="verify and replay runs, newest first (auditor, admin and finance keys)")
async def runs(request: Request, kind: Literal["verify", "replay"] | None = Query(None),
               cursor: str | None = Query(None, max_length=2000), limit: int = Query(PAGE_SIZE_DEFAULT, ge=1, le=PAGE_SIZE_MAX),
               who: Principal = Depends(principal)) -> Page[AuditRun]:
    if not who.reads_all:
        raise ApiError(403, "audit runs cover every business unit: finance, auditor and admin keys may read them")
    try:
        key = decode_cursor(cursor)
        before = None if key is None else (datetime.fromisoformat(str(key[0])), uuid.UUID(str(key[1])))
    except (BadCursor, ValueError, IndexError):
        raise ApiError(422, "cursor: not a cursor this API gave") from None
    async with hub_of(request).writer.acquire() as connection:
        rows = await store.list_runs(connection, kind, before, limit + 1)
    items = [AuditRun(**row) for row in rows[:limit]]
    return Page[AuditRun](items=items, next_cursor=encode_cursor([items[-1].requested_at.isoformat(), str(items[-1].run_id)])
                          if len(rows) > limit else None)


@router.get("/v1/audit/runs/{run_id}", response_model=AuditRun, responses={**AUTH_ERRORS, **NOT_FOUND}, summary="One run and its report")
async def run(request: Request, run_id: uuid.UUID = Path(), who: Principal = Depends(principal)) -> AuditRun:
    if not who.reads_all:
        raise ApiError(403, "audit runs cover every business unit: finance, auditor and admin keys may read them")
    async with hub_of(request).writer.acquire() as connection:
        row = await store.get_run(connection, run_id)
    if row is None:
        raise ApiError(404, f"no audit run {run_id}")
    return AuditRun(**row)
