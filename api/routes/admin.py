"""Changes through the API, for admin keys only, each with the key's owner as the
actor and the reason given. The registry, budgets and price books are published
as the same events the CLI publishes; a registry change or budget naming what
the registry does not hold is refused (422) with the reason metering would give.
Like the CLI, the API publishes and returns, and the owning service applies (or
refuses) the change from the topic. Plans and billing cycles live in invoicing's
tables only: the API makes them with the invoicing functions the CLI calls
(`assign_plan`, `end_plan`, `set_cycle`), as its own database role (migration
0031), and answers with what was stored."""

from __future__ import annotations

from typing import Any, Final

import asyncpg
import orjson
from fastapi import APIRouter, Depends, Request, status
from fastapi.responses import Response
from pydantic import ValidationError

from tokenhub.api.access import Principal
from tokenhub.api import reads
from tokenhub.api.models import (
    BillingCycle,
    BillingCycleChange,
    BudgetChange,
    ErrorBody,
    BusinessUnitChange,
    ConversionChange,
    FundingChange,
    ModelChange,
    Plan,
    PlanAssignment,
    PlanEnd,
    PriceBookChange,
    Published,
)
from tokenhub.api.web import AUTH_ERRORS, ApiError, hub_of, require_admin
from tokenhub.contracts.budgets import BudgetSet, budget_set_id
from tokenhub.contracts.canonical import canonical_json
from tokenhub.contracts.events import PriceBookPublished
from tokenhub.contracts.ids import derive_id
from tokenhub.contracts.periods import PeriodError, containing
from tokenhub.contracts.registry import PAYLOAD_MODELS, RegistryKind, registry_change
from tokenhub.contracts.topics import BUDGETS_CONFIGURED, PRICEBOOK_PUBLISHED, REGISTRY_CHANGED
from tokenhub.services.invoicing import queries as invoicing_queries
from tokenhub.services.invoicing.domain import PlanError
from tokenhub.services.invoicing.handlers import assign_plan, end_plan, set_cycle
from tokenhub.services.metering import queries as metering_queries
from tokenhub.services.metering import registry
from tokenhub.services.pricing import queries as pricing_queries
from tokenhub.services.pricing.validation import PriceBookInvalid, validate_book

router = APIRouter(tags=["changes (admin)"])
CHANGE_ERRORS = {**AUTH_ERRORS}


def _invalid(error: ValidationError) -> ApiError:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    return ApiError(422, f"{where}: {first['msg']}" if where else first["msg"])


async def _registry(request: Request, kind: RegistryKind, fields: dict[str, Any], entity_id: str, reason: str,
                    who: Principal) -> Published:
    hub = hub_of(request)
    try:
        entity = PAYLOAD_MODELS[kind].model_validate(fields)
        change = registry_change(kind, entity, entity_id, who.owner, reason, hub.now())
    except ValidationError as error:
        raise _invalid(error) from None
    # The same check metering makes when the change arrives, so what it would refuse is refused here, with its reason.
    refusal = registry.check_change(entity, await metering_queries.registry(hub.reader))
    if refusal is not None:
        raise ApiError(422, refusal.text())
    await hub.publish(REGISTRY_CHANGED.name, [(entity_id.encode(), canonical_json(change))])
    return Published(topic=REGISTRY_CHANGED.name, event_ids=[str(change.id)], actor=who.owner)


@router.post("/v1/registry/business-units", status_code=status.HTTP_202_ACCEPTED, response_model=Published,
             responses=CHANGE_ERRORS, summary="Register or update a business unit")
async def business_unit(request: Request, body: BusinessUnitChange, who: Principal = Depends(require_admin)) -> Published:
    return await _registry(request, "business_unit", body.model_dump(exclude={"reason"}), body.bu_id, body.reason, who)


@router.post("/v1/registry/models", status_code=status.HTTP_202_ACCEPTED, response_model=Published,
             responses=CHANGE_ERRORS, summary="Register or update a model, tool or agent")
async def model(request: Request, body: ModelChange, who: Principal = Depends(require_admin)) -> Published:
    return await _registry(request, "model", body.model_dump(exclude={"reason"}), body.model_id, body.reason, who)


@router.post("/v1/registry/funding-agreements", status_code=status.HTTP_202_ACCEPTED, response_model=Published,
             responses=CHANGE_ERRORS, summary="Create or replace a funding agreement (who pays for whom)")
async def funding(request: Request, body: FundingChange, who: Principal = Depends(require_admin)) -> Published:
    return await _registry(request, "funding_agreement", body.model_dump(exclude={"reason"}), body.agreement_id, body.reason, who)


@router.post("/v1/registry/conversion-tables", status_code=status.HTTP_202_ACCEPTED, response_model=Published,
             responses=CHANGE_ERRORS, summary="Publish a conversion table version (non-text units to Tokens)")
async def conversion(request: Request, body: ConversionChange, who: Principal = Depends(require_admin)) -> Published:
    return await _registry(request, "conversion_table", body.model_dump(exclude={"reason"}), str(body.version), body.reason, who)


@router.post("/v1/budgets", status_code=status.HTTP_202_ACCEPTED, response_model=Published, responses=CHANGE_ERRORS,
             summary="Set a payer's monthly budget (published on budgets.configured)")
async def budget(request: Request, body: BudgetChange, who: Principal = Depends(require_admin)) -> Published:
    hub = hub_of(request)
    now = hub.now()
    month = body.period_from or containing(now, "month", hub.settings.timezone).name
    try:
        event = BudgetSet.model_validate({
            "id": budget_set_id(body.payer_bu, body.consumer_bu, month, now.isoformat()), "event_time": now,
            "cause_id": f"{who.owner}:budget:{body.payer_bu}", "payer_bu": body.payer_bu, "consumer_bu": body.consumer_bu,
            "period_from": month, "amount": body.amount, "thresholds_percent": tuple(body.thresholds_percent),
            "hard_limit": body.hard_limit, "currency": hub.settings.currency, "actor": who.owner, "reason": body.reason,
            "set_at": now,
        })
    except ValidationError as error:
        raise _invalid(error) from None
    refusal = registry.check_budget(event.payer_bu, event.consumer_bu, await metering_queries.registry(hub.reader))
    if refusal is not None:
        raise ApiError(422, refusal.text())
    await hub.publish(BUDGETS_CONFIGURED.name, [(event.payer_bu.encode(), canonical_json(event))])
    return Published(topic=BUDGETS_CONFIGURED.name, event_ids=[str(event.id)], actor=who.owner)


@router.post("/v1/pricebooks", status_code=status.HTTP_202_ACCEPTED, response_model=Published,
             responses={**CHANGE_ERRORS, 409: {"model": ErrorBody, "description": "that version is published already"}},
             summary="Validate and publish a price book version")
async def pricebook(request: Request, body: PriceBookChange, who: Principal = Depends(require_admin)) -> Published:
    hub = hub_of(request)
    now = hub.now()
    document = body.book
    book_id, version = str(document.get("book_id", "")), document.get("version")
    try:
        book = PriceBookPublished.model_validate({
            **document, "id": str(derive_id("pricebook", book_id, str(version))), "event_time": document.get("effective_from"),
            "cause_id": f"{who.owner}:{book_id}:{version}", "retroactive": body.retroactive, "actor": who.owner,
            "reason": body.reason, "published_at": now,
        })
        validate_book(book, hub.settings.currency, now, retroactive=body.retroactive)
    except ValidationError as error:
        raise _invalid(error) from None
    except PriceBookInvalid as error:
        raise ApiError(422, str(error)) from None
    if await pricing_queries.book_stored(hub.reader, book.book_id, book.version):
        latest = await pricing_queries.latest_version(hub.reader, book.book_id)
        raise ApiError(409, f"version {book.version} of book {book.book_id} is already published and never changes; "
                            f"publish version {(latest or 0) + 1} instead")
    await hub.publish(PRICEBOOK_PUBLISHED.name, [(book.book_id.encode(), canonical_json(book))])
    return Published(topic=PRICEBOOK_PUBLISHED.name, event_ids=[str(book.id)], actor=who.owner)


# --- plans and billing cycles (invoicing's tables, through invoicing's functions) ---------

PLAN_ERRORS: Final = {**CHANGE_ERRORS, 409: {"model": ErrorBody, "description": (
    "refused by the plans as they stand: another plan of the payer for the model overlaps, a month has ended, "
    "the book has no period tiers for the model, no plan of the payer for the model is running")}}


async def _known_payer(hub: Any, payer_bu: str) -> None:
    if payer_bu not in {row["bu_id"] for row in await metering_queries.business_units(hub.reader)}:
        raise ApiError(422, f"no business unit {payer_bu} in the registry")


async def _known_model(hub: Any, model_id: str) -> dict[str, Any]:
    models = {row["model_id"]: row for row in await metering_queries.models(hub.reader)}
    if model_id not in models:
        raise ApiError(422, f"no model {model_id} in the registry")
    return models[model_id]


def _as_stored(row: dict[str, Any], status_code: int = 200) -> Response:
    """A row as GET shows it, to the character."""
    return Response(orjson.dumps({name: reads._plain(value) for name, value in row.items()}), status_code=status_code,
                    media_type="application/json")


async def _stored_plan(hub: Any, payer_bu: str, plan_id: Any, status_code: int = 200) -> Response:
    """The plan as stored, as GET /v1/plans shows it."""
    rows = [row for row in await invoicing_queries.plans(hub.reader, bu=payer_bu) if row["plan_id"] == plan_id]
    if not rows:  # the function returned after its commit: the row is there
        raise RuntimeError(f"plan {plan_id} was saved but cannot be read back")
    return _as_stored(rows[0], status_code)


@router.post("/v1/plans", status_code=status.HTTP_201_CREATED, response_model=Plan, responses=PLAN_ERRORS,
             summary="Put a payer on a price book's period tiers for a model over months (its flat fees included)")
async def plan_assign(request: Request, body: PlanAssignment, who: Principal = Depends(require_admin)) -> Response:
    hub = hub_of(request)
    await _known_payer(hub, body.payer_bu)
    model_row = await _known_model(hub, body.model)
    if await pricing_queries.latest_version(hub.reader, body.book_id) is None:
        raise ApiError(422, f"no price book {body.book_id}")
    try:
        made = await assign_plan(hub.writer, hub.settings, payer_bu=body.payer_bu, book_id=body.book_id, model=body.model,
                                 provider_bu=model_row["provider_bu"], first_month=body.first_month,
                                 last_month=body.last_month, actor=who.owner, reason=body.reason, now=hub.now())
    except PeriodError as error:
        raise ApiError(422, str(error)) from None
    except PlanError as error:
        raise ApiError(409, str(error)) from None
    except asyncpg.UniqueViolationError:  # the same plan, assigned by two requests at once
        raise ApiError(409, f"{body.payer_bu} already has a plan for {body.model} from {body.first_month}") from None
    return await _stored_plan(hub, made.payer_bu, made.plan_id, status.HTTP_201_CREATED)


@router.post("/v1/plans/end", response_model=Plan, responses=PLAN_ERRORS,
             summary="End a payer's running plan for a model with a month (periods billed under it stay billed)")
async def plan_end(request: Request, body: PlanEnd, who: Principal = Depends(require_admin)) -> Response:
    hub = hub_of(request)
    await _known_payer(hub, body.payer_bu)
    await _known_model(hub, body.model)
    try:
        ended = await end_plan(hub.writer, hub.settings, payer_bu=body.payer_bu, model=body.model,
                               last_month=body.last_month, actor=who.owner, reason=body.reason, now=hub.now())
    except PeriodError as error:
        raise ApiError(422, str(error)) from None
    except PlanError as error:
        raise ApiError(409, str(error)) from None
    return await _stored_plan(hub, ended.payer_bu, ended.plan_id)


@router.post("/v1/billing-cycles", response_model=BillingCycle, responses=CHANGE_ERRORS,
             summary="Bill a payer every month (the default), week or day from now on")
async def billing_cycle(request: Request, body: BillingCycleChange, who: Principal = Depends(require_admin)) -> Response:
    hub = hub_of(request)
    await _known_payer(hub, body.payer_bu)
    await set_cycle(hub.writer, body.payer_bu, body.every, who.owner, body.reason, hub.now())
    (stored,) = [row for row in await reads.billing_cycles(hub.reader) if row["payer_bu"] == body.payer_bu]
    return _as_stored(stored)
