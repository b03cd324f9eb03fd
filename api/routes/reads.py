"""Read endpoints: balances, statements, spend, invoices, settlements, budgets,
rejected and parked usage, price books, the registry and chain heads. Every list
pages by cursor in a stable order; a bu-reader key sees only what its business
unit pays, consumes or provides."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any, Final, Literal

import orjson
from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, Response
from pydantic import AwareDatetime

from tokenhub.api import reads
from tokenhub.api.access import Principal
from tokenhub.api.paging import PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX, BadCursor, decode_cursor, encode_cursor, page
from tokenhub.api.routes.quota import NAME_LENGTH_MAX, SLUG
from tokenhub.api.models import (
    Balance,
    BillingCycle,
    BudgetRow,
    ChainHead,
    DailySpend,
    InvoiceBody,
    ModelRow,
    ParkedRow,
    Plan,
    PriceBookVersion,
    RegistryBusinessUnit,
    RegistryConversionTable,
    RegistryFunding,
    RejectedDetail,
    RejectedRow,
    Page,
    SettledMonth,
    SettlementBody,
    Spend,
    Statement,
)
from tokenhub.api.web import AUTH_ERRORS, NOT_FOUND, ApiError, hub_of, principal, require_sees
from tokenhub.contracts.events import InvoiceIssued
from tokenhub.contracts.periods import PeriodError, containing, parse
from tokenhub.contracts.pricebook import BookIndex
from tokenhub.services.invoicing import queries as invoicing_queries
from tokenhub.api.webhooks import settlement_for
from tokenhub.views import invoices as invoice_views

router = APIRouter(tags=["reads"])
ERRORS: Final = {**AUTH_ERRORS, **NOT_FOUND}
MONTH: Final = r"^\d{4}-\d{2}$"
PERIOD: Final = r"^\d{4}-(\d{2}|W\d{2}|\d{2}-\d{2})$"
By = Literal["event-time", "posting-time"]
Cursor = Query(None, max_length=2000, description="from the previous page's next_cursor")
Limit = Query(PAGE_SIZE_DEFAULT, ge=1, le=PAGE_SIZE_MAX)


def _json(value: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(value), media_type="application/json", status_code=status)


def _after(cursor: str | None) -> list[Any] | None:
    try:
        return decode_cursor(cursor)
    except BadCursor as error:
        raise ApiError(422, f"cursor: {error}") from None


def _month(hub: Any, text: str | None) -> Any:
    try:
        month = parse(text, hub.settings.timezone) if text else containing(hub.now(), "month", hub.settings.timezone)
    except PeriodError as error:
        raise ApiError(422, f"period: {error}") from None
    if month.kind != "month":
        raise ApiError(422, f"period: a month such as 2026-03, not {text}")
    return month


def _paged(items: list[dict[str, Any]], key: Any, cursor: str | None, limit: int) -> Response:
    try:
        chosen, next_cursor = page(items, key, _after(cursor), limit)
    except BadCursor as error:
        raise ApiError(422, f"cursor: {error}") from None
    return _json({"items": chosen, "next_cursor": next_cursor})


def _sql_page(rows: list[dict[str, Any]], limit: int, key: Any) -> Response:
    items = rows[:limit]
    next_cursor = encode_cursor(key(items[-1]["_key"])) if len(rows) > limit and items else None
    return _json({"items": [{name: value for name, value in item.items() if name != "_key"} for item in items],
                  "next_cursor": next_cursor})


def _time_key(after: list[Any] | None) -> tuple[datetime, uuid.UUID] | None:
    if after is None:
        return None
    try:
        return datetime.fromisoformat(str(after[0])), uuid.UUID(str(after[1]))
    except (ValueError, IndexError):
        raise ApiError(422, "cursor: not a cursor of this list") from None


# --- balances and statements -------------------------------------------------------------

@router.get("/v1/balances", response_model=Page[Balance], responses=AUTH_ERRORS,
            summary="Balances per business unit: now, or as of a time by event or posting time")
async def balances(request: Request, as_of: AwareDatetime | None = Query(None, description="ISO time with zone"),
                   by: By = Query("event-time"), cursor: str | None = Cursor, limit: int = Limit,
                   who: Principal = Depends(principal)) -> Response:
    rows = await reads.balances(hub_of(request).reader, as_of=as_of, by=by)
    return _paged([row for row in rows if who.sees(row["bu"])], lambda row: [row["bu"]], cursor, limit)


@router.get("/v1/balances/{bu}", response_model=Balance, responses=ERRORS, summary="One business unit's balance")
async def balance(request: Request, bu: str = Path(pattern=SLUG, max_length=NAME_LENGTH_MAX),
                  as_of: AwareDatetime | None = Query(None), by: By = Query("event-time"),
                  who: Principal = Depends(principal)) -> Response:
    require_sees(who, bu)
    rows = await reads.balances(hub_of(request).reader, as_of=as_of, by=by, bu=bu)
    if not rows:
        raise ApiError(404, f"no business unit {bu}")
    return _json(rows[0])


@router.get("/v1/statements/{bu}", response_model=Statement, responses=ERRORS,
            summary="The entries behind a business unit's balance in [from, to), a page at a time")
async def statement(request: Request, bu: str = Path(pattern=SLUG, max_length=NAME_LENGTH_MAX),
                    start: AwareDatetime = Query(alias="from", description="inclusive, ISO time with zone"),
                    end: AwareDatetime = Query(alias="to", description="exclusive"), by: By = Query("event-time"),
                    cursor: str | None = Cursor, limit: int = Limit, who: Principal = Depends(principal)) -> Response:
    require_sees(who, bu)
    if end <= start:
        raise ApiError(422, "to: must be after from")
    after = _after(cursor)
    key = None
    if after is not None:
        try:
            key = (datetime.fromisoformat(str(after[0])), str(after[1]), int(after[2]))
        except (ValueError, IndexError):
            raise ApiError(422, "cursor: not a cursor of this list") from None
    try:
        found = await reads.statement(hub_of(request).reader, bu, start, end, by, key, limit)
    except reads.Unbalanced as error:
        raise ApiError(500, str(error)) from None
    return _json({"bu": bu, "from": start.isoformat(), "to": end.isoformat(), "by": by, "opening": found.opening,
                  "closing": found.closing, "entries": found.entries,
                  "next_cursor": encode_cursor([found.last_key[0].isoformat(), found.last_key[1], found.last_key[2]])
                  if found.more and found.last_key else None})


@router.get("/v1/chains", response_model=Page[ChainHead], responses=AUTH_ERRORS,
            summary="The head of each payer's hash chain (printed on invoices)")
async def chains(request: Request, cursor: str | None = Cursor, limit: int = Limit,
                 who: Principal = Depends(principal)) -> Response:
    rows = await reads.chain_heads(hub_of(request).reader)
    return _paged([row for row in rows if who.sees(row["chain"])], lambda row: [row["chain"]], cursor, limit)


# --- spend and budgets ------------------------------------------------------------------------

@router.get("/v1/spend/{payer}", response_model=Spend, responses=ERRORS,
            summary="Month to date: spend by consumer, app, model, class and modality, and the period tier reached")
async def spend(request: Request, payer: str = Path(pattern=SLUG, max_length=NAME_LENGTH_MAX),
                period: str | None = Query(None, pattern=MONTH, description="a month (default: this month)"),
                who: Principal = Depends(principal)) -> Response:
    require_sees(who, payer)
    hub = hub_of(request)
    return _json(await reads.spend(hub.reader, hub.settings, payer, _month(hub, period), hub.now()))


@router.get("/v1/spend/{payer}/daily", response_model=DailySpend, responses=ERRORS,
            summary="A payer's spend per day of a month and of the month before (by event time)")
async def daily(request: Request, payer: str = Path(pattern=SLUG, max_length=NAME_LENGTH_MAX),
                period: str | None = Query(None, pattern=MONTH, description="a month (default: this month)"),
                who: Principal = Depends(principal)) -> Response:
    require_sees(who, payer)
    hub = hub_of(request)
    month = _month(hub, period)
    previous = containing(month.start - timedelta(microseconds=1), "month", hub.settings.timezone)
    return _json({"bu": payer, "period": month.name, "previous_period": previous.name,
                  "days": await reads.daily_spend(hub.reader, payer, hub.settings.timezone, month),
                  "previous_days": await reads.daily_spend(hub.reader, payer, hub.settings.timezone, previous)})


@router.get("/v1/budgets", response_model=Page[BudgetRow], responses=AUTH_ERRORS,
            summary="Budgets in force for a month, with spend, thresholds crossed and quota state")
async def budgets(request: Request, period: str | None = Query(None, pattern=MONTH),
                  payer: str | None = Query(None, pattern=SLUG, max_length=NAME_LENGTH_MAX),
                  cursor: str | None = Cursor, limit: int = Limit, who: Principal = Depends(principal)) -> Response:
    hub = hub_of(request)
    rows = await reads.budgets(hub.reader, _month(hub, period).name)
    visible = [row for row in rows if who.sees(row["payer_bu"]) or (row["consumer_bu"] is not None and who.sees(row["consumer_bu"]))]
    if payer is not None:
        visible = [row for row in visible if row["payer_bu"] == payer]
    return _paged(visible, lambda row: [row["payer_bu"], row["consumer_bu"] or ""], cursor, limit)


# --- invoices and settlements ------------------------------------------------------------------

def _invoice_key(invoice: dict[str, Any]) -> list[Any]:
    return [invoice["payer_bu"], invoice["period_end"], invoice["invoice_id"]]


def _visible_invoices(found: list[InvoiceIssued], who: Principal) -> list[InvoiceIssued]:
    return [invoice for invoice in found if who.sees(invoice.payer_bu)]


@router.get("/v1/invoices", response_model=Page[InvoiceBody], responses=AUTH_ERRORS,
            summary="Issued invoices and drafts of open periods")
async def invoices(request: Request, payer: str | None = Query(None, pattern=SLUG, max_length=NAME_LENGTH_MAX),
                   period: str | None = Query(None, pattern=PERIOD),
                   status: Literal["draft", "issued", "credited"] | None = Query(None),
                   cursor: str | None = Cursor, limit: int = Limit, who: Principal = Depends(principal)) -> Response:
    hub = hub_of(request)
    found = _visible_invoices(await reads.invoices(hub.reader, hub.settings), who)
    chosen = [orjson.loads(invoice.model_dump_json()) for invoice in found
              if (payer is None or invoice.payer_bu == payer) and (period is None or invoice.period == period)
              and (status is None or invoice.status == status)]
    return _paged(chosen, _invoice_key, cursor, limit)


INVOICE_FORMATS: Final = {
    200: {"description": "the invoice as JSON (default), CSV or a printable HTML page",
          "content": {"application/json": {"schema": {"$ref": "#/components/schemas/InvoiceBody"}},
                      "text/csv": {"schema": {"type": "string"}}, "text/html": {"schema": {"type": "string"}}}},
}


@router.get("/v1/invoices/{invoice_id}", responses={**INVOICE_FORMATS, **ERRORS}, response_model=None,
            summary="One invoice (issued or draft) as JSON, CSV or HTML")
async def invoice(request: Request, invoice_id: uuid.UUID = Path(),
                  format: Literal["json", "csv", "html"] = Query("json"), who: Principal = Depends(principal)) -> Response:
    hub = hub_of(request)
    found = [invoice for invoice in _visible_invoices(await reads.invoices(hub.reader, hub.settings), who)
             if invoice.invoice_id == invoice_id]
    if not found:
        raise ApiError(404, f"no invoice {invoice_id}")
    if format in ("csv", "html"):  # the CLI's renderings, byte for byte (`tokenhub invoice show --format`)
        books = BookIndex.of(await reads.price_books(hub.reader))
        if format == "csv":
            return PlainTextResponse(invoice_views.invoice_csv(found, books), media_type="text/csv")
        names = {row["bu_id"]: row["display_name"] for row in await reads.registry(hub.reader, "business-units")}
        return HTMLResponse(invoice_views.invoice_html(found, hub.settings.timezone, books, names))
    return Response(found[0].model_dump_json().encode(), media_type="application/json")


@router.get("/v1/settlements", response_model=Page[SettledMonth], responses=AUTH_ERRORS, summary="Months settled so far")
async def settlements(request: Request, cursor: str | None = Cursor, limit: int = Limit,
                      who: Principal = Depends(principal)) -> Response:
    return _paged(await reads.settled_months(hub_of(request).reader), lambda row: [row["period"]], cursor, limit)


@router.get("/v1/settlements/{period}", response_model=SettlementBody, responses=ERRORS,
            summary="A month's matrix, net positions and transfers (provisional until the month closes)")
async def settlement(request: Request, period: str = Path(pattern=MONTH), who: Principal = Depends(principal)) -> Response:
    hub = hub_of(request)
    found, final = await reads.settlement(hub.reader, hub.settings, _month(hub, period))
    body = orjson.loads(found.model_dump_json())
    if not who.reads_all:
        body = settlement_for(who.bu or "", body)
    return _json({"final": final, **body})


# --- rejected and parked usage ---------------------------------------------------------------------

@router.get("/v1/rejected", response_model=Page[RejectedRow], responses=AUTH_ERRORS,
            summary="Rejected usage, oldest first, filterable by reason, source and time received")
async def rejected(request: Request, reason_code: str | None = Query(None, max_length=NAME_LENGTH_MAX),
                   source: str | None = Query(None, max_length=1000),
                   consumer: str | None = Query(None, pattern=SLUG, max_length=NAME_LENGTH_MAX),
                   received_from: AwareDatetime | None = Query(None, alias="from"),
                   received_to: AwareDatetime | None = Query(None, alias="to"),
                   cursor: str | None = Cursor, limit: int = Limit, who: Principal = Depends(principal)) -> Response:
    if consumer is not None:
        require_sees(who, consumer)
    scope = consumer if who.reads_all else who.bu
    rows = await reads.rejected(hub_of(request).reader, reason_code=reason_code, source=source, start=received_from,
                                end=received_to, consumer_bu=scope, after=_time_key(_after(cursor)), limit=limit + 1)
    return _sql_page(rows, limit, lambda key: [key[0].isoformat(), str(key[1])])


@router.get("/v1/rejected/{rejected_id}", response_model=RejectedDetail, responses=ERRORS,
            summary="One rejected usage event, with its original bytes")
async def rejected_one(request: Request, rejected_id: uuid.UUID = Path(), who: Principal = Depends(principal)) -> Response:
    row = await reads.rejected_one(hub_of(request).reader, rejected_id)
    if row is None or not who.sees(row["consumer_bu"]):
        raise ApiError(404, f"no rejected usage {rejected_id}")
    return _json(row)


@router.get("/v1/parked", response_model=Page[ParkedRow], responses=AUTH_ERRORS,
            summary="Consumption waiting for a price, oldest first")
async def parked(request: Request, payer: str | None = Query(None, pattern=SLUG, max_length=NAME_LENGTH_MAX),
                 model: str | None = Query(None, max_length=NAME_LENGTH_MAX),
                 cursor: str | None = Cursor, limit: int = Limit, who: Principal = Depends(principal)) -> Response:
    rows = await reads.parked(hub_of(request).reader, payer=payer, model=model, visible_to=None if who.reads_all else who.bu,
                              after=_time_key(_after(cursor)), limit=limit + 1)
    return _sql_page(rows, limit, lambda key: [key[0].isoformat(), str(key[1])])


# --- price books and the registry -----------------------------------------------------------------

def _version(book: Any) -> dict[str, Any]:
    return {"book_id": book.book_id, "version": book.version, "effective_from": book.effective_from.isoformat(),
            "currency": book.currency, "retroactive": book.retroactive, "actor": book.actor, "reason": book.reason,
            "published_at": book.published_at.isoformat(), "models": [entry.model for entry in book.models]}


@router.get("/v1/pricebooks", response_model=Page[PriceBookVersion], responses=AUTH_ERRORS,
            summary="Every price book version, by book and version")
async def pricebooks(request: Request, cursor: str | None = Cursor, limit: int = Limit,
                     who: Principal = Depends(principal)) -> Response:
    books = await reads.price_books(hub_of(request).reader)
    return _paged([_version(book) for book in books], lambda row: [row["book_id"], row["version"]], cursor, limit)


@router.get("/v1/pricebooks/{book_id}/versions/{version}", responses=ERRORS,
            response_model=dict[str, Any], summary="One price book version, whole (a BU's reader sees its own adjustments only)")
async def pricebook(request: Request, book_id: str = Path(max_length=NAME_LENGTH_MAX), version: int = Path(ge=1, le=2**31 - 1),
                    who: Principal = Depends(principal)) -> Response:
    books = [book for book in await reads.price_books(hub_of(request).reader) if book.book_id == book_id and book.version == version]
    if not books:
        raise ApiError(404, f"no price book {book_id} version {version}")
    return _json(reads.book_for(books[0], None if who.reads_all else who.bu))


def _registry_route(section: str, model: Any, key: str, visible: Any) -> None:
    @router.get(f"/v1/registry/{section}", response_model=Page[model], responses=AUTH_ERRORS, name=f"registry_{section}",
                summary=f"The registry: {section.replace('-', ' ')}")
    async def listing(request: Request, cursor: str | None = Cursor, limit: int = Limit,
                      who: Principal = Depends(principal)) -> Response:
        rows = await reads.registry(hub_of(request).reader, section)
        return _paged([row for row in rows if visible(who, row)], lambda row: [row[key]], cursor, limit)


_registry_route("business-units", RegistryBusinessUnit, "bu_id", lambda who, row: True)
_registry_route("models", ModelRow, "model_id", lambda who, row: True)
_registry_route("funding-agreements", RegistryFunding, "agreement_id",
                lambda who, row: who.sees(row["consumer_bu"], *(share["bu"] for share in row["payers"])))
_registry_route("conversion-tables", RegistryConversionTable, "version", lambda who, row: True)


@router.get("/v1/plans", response_model=Page[Plan], responses=AUTH_ERRORS,
            summary="Plans: payers assigned to a book's period tiers, with who assigned or ended them and why")
async def plans(request: Request, payer: str | None = Query(None, pattern=SLUG, max_length=NAME_LENGTH_MAX),
                cursor: str | None = Cursor, limit: int = Limit, who: Principal = Depends(principal)) -> Response:
    rows = [{name: reads._plain(value) for name, value in row.items()}
            for row in await invoicing_queries.plans(hub_of(request).reader, bu=payer)]
    return _paged([row for row in rows if who.sees(row["payer_bu"])],
                  lambda row: [row["payer_bu"], row["model"], row["first_month"]], cursor, limit)


@router.get("/v1/billing-cycles", response_model=Page[BillingCycle], responses=AUTH_ERRORS,
            summary="Billing cycles set per payer, who set each and why (a payer not listed is billed monthly)")
async def billing_cycles(request: Request, payer: str | None = Query(None, pattern=SLUG, max_length=NAME_LENGTH_MAX),
                         cursor: str | None = Cursor, limit: int = Limit, who: Principal = Depends(principal)) -> Response:
    rows = [{name: reads._plain(value) for name, value in row.items()} for row in await reads.billing_cycles(hub_of(request).reader)
            if (payer is None or row["payer_bu"] == payer) and who.sees(row["payer_bu"])]
    return _paged(rows, lambda row: [row["payer_bu"]], cursor, limit)
