"""Changes through the API, for admin keys only: the registry, budgets and price
books, published as the same events the CLI publishes, with the key's owner as
the actor and the reason given. Like the CLI, the API publishes and returns;
the owning service applies (or refuses) the change from the topic."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, status
from pydantic import ValidationError

from tokenhub.api.access import Principal
from tokenhub.api.models import (
    BudgetChange,
    ErrorBody,
    BusinessUnitChange,
    ConversionChange,
    FundingChange,
    ModelChange,
    PriceBookChange,
    Published,
)
from tokenhub.api.web import AUTH_ERRORS, ApiError, hub_of, require_admin
from tokenhub.contracts.budgets import BudgetSet, budget_set_id
from tokenhub.contracts.canonical import canonical_json
from tokenhub.contracts.events import PriceBookPublished
from tokenhub.contracts.ids import derive_id
from tokenhub.contracts.periods import containing
from tokenhub.contracts.registry import PAYLOAD_MODELS, RegistryKind, registry_change
from tokenhub.contracts.topics import BUDGETS_CONFIGURED, PRICEBOOK_PUBLISHED, REGISTRY_CHANGED
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
