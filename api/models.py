"""Request and response bodies, so the OpenAPI document describes every one.
Amounts are strings in plain notation (never exponent form), as on the topics."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field

from tokenhub.api.webhooks import KINDS, URL_LENGTH_MAX

AmountText = str
"""An exact decimal in plain notation, for example "12.345000000000"."""

T = TypeVar("T")

PLAIN = r"^-?\d+(\.\d+)?$"


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorBody(Body):
    error: str = Field(description="what went wrong, in one line")


class Page(Body, Generic[T]):
    items: list[T]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null on the last page")


# --- identity and operations ----------------------------------------------------------

class Me(Body):
    key_id: str
    role: Literal["bu-reader", "finance", "auditor", "admin"]
    bu: str | None = Field(description="the business unit a bu-reader key reads for")
    owner: str
    currency: str = Field(description="the deployment's settlement currency")
    timezone: str = Field(description="the company time zone periods are in")
    period: str = Field(description="this month, by the API's clock")
    period_start: datetime
    period_end: datetime = Field(description="exclusive")


class Health(Body):
    status: Literal["ok"]


class Readiness(Body):
    status: Literal["ready", "not ready"]
    database: bool
    broker: bool
    quota_state: bool = Field(description="quota state has read what the topics held when the API started")
    webhooks: bool


class ServiceLagRow(Body):
    service: str
    records_behind: int | None = Field(description="records on its input topics past its stored offsets (null: broker unreachable)")
    by_topic: dict[str, int]
    outbox_events: int | None = Field(description="events written but not yet published (null: database unreachable)")


class ServiceLags(Body):
    services: list[ServiceLagRow]
    problems: list[str]


class DeadLetterRow(Body):
    position: int = Field(description="its place on the deadletter topic, from 0")
    service: str
    source_topic: str
    source_partition: int | None
    source_offset: int | None
    reason: str
    dead_lettered_at: str
    key: str | None
    value_bytes: int


class DeadLetterSummary(Body):
    total: int
    by_service: dict[str, int]
    items: list[DeadLetterRow] = Field(description="the last ones, oldest first")


# --- quota ------------------------------------------------------------------------------

class QuotaScope(Body):
    scope: str = Field(description="'*' for all of the payer's spend, else the consumer BU")
    budget_id: str
    budget: AmountText = Field(pattern=PLAIN)
    hard_limit: AmountText | None = Field(pattern=PLAIN)
    spent: AmountText = Field(pattern=PLAIN)
    remaining: AmountText | None = Field(pattern=PLAIN)
    exhausted: bool


class Quota(Body):
    payer_bu: str
    consumer_bu: str | None
    app: str | None
    period: str = Field(description="the month, in the company time zone, by event time")
    allowed: bool
    status: Literal["allowed", "exhausted"]
    spent: AmountText | None = Field(pattern=PLAIN, description="of the deciding scope; null when no budget has a hard limit")
    limit: AmountText | None = Field(pattern=PLAIN, description="the deciding scope's hard limit")
    remaining: AmountText | None = Field(pattern=PLAIN)
    currency: str | None
    app_spent: AmountText | None = Field(pattern=PLAIN, description="this month's spend of the consumer's app, when both are given")
    scopes: list[QuotaScope]
    postings_applied: int = Field(description="ledger postings quota state has applied")


# --- webhooks ---------------------------------------------------------------------------

WebhookKind = Literal[KINDS]  # type: ignore[valid-type]


class WebhookCreate(Body):
    url: AnyHttpUrl = Field(max_length=URL_LENGTH_MAX)
    kinds: list[WebhookKind] = Field(min_length=1, max_length=len(KINDS))  # type: ignore[valid-type]
    bu: str | None = Field(None, description="finance keys: only this BU's events (default: all); bu-reader keys: always their own")


class Webhook(Body):
    webhook_id: uuid.UUID
    url: str
    kinds: list[str]
    bu: str | None
    owner: str
    created_at: datetime
    disabled_at: datetime | None


class WebhookCreated(Webhook):
    secret: str = Field(description="signs every delivery (HMAC-SHA256); shown once")


class Delivery(Body):
    delivery_id: uuid.UUID
    webhook_id: uuid.UUID
    event_id: str
    kind: str
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    next_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None


class Attempt(Body):
    attempt: int
    attempted_at: datetime
    status_code: int | None
    error: str | None
    duration_ms: str


class DeliveryDetail(Delivery):
    body: dict[str, Any]
    attempt_log: list[Attempt]


class Accepted(Body):
    status: Literal["accepted"]
    id: str


# --- admin changes ------------------------------------------------------------------------

class Change(Body):
    reason: str = Field(min_length=1, max_length=1000, description="why: kept with the change")


class Published(Body):
    topic: str
    event_ids: list[str]
    actor: str


class BusinessUnitChange(Change):
    bu_id: str
    display_name: str
    parent_group: str | None = None
    cost_centre: str | None = None
    active: bool = True


class ModelChange(Change):
    model_id: str
    provider_bu: str
    modality: Literal["text", "embedding", "image", "video", "audio", "agent", "tool"]
    token_classes: list[str] = Field(min_length=1)
    display_name: str | None = None
    active: bool = True


class PayerShareBody(Body):
    bu: str
    percent: str = Field(pattern=PLAIN)


class FundingChange(Change):
    agreement_id: str
    consumer_bu: str
    app: str | None = None
    model_pattern: str | None = None
    payers: list[PayerShareBody] = Field(min_length=1)
    effective_from: datetime
    effective_to: datetime | None = None


class ConversionRuleBody(Body):
    unit: str
    token_class: str
    tokens_per_unit: str = Field(pattern=PLAIN)
    model_config = ConfigDict(extra="allow")


class ConversionChange(Change):
    version: int = Field(ge=1)
    effective_from: datetime
    rules: list[dict[str, Any]] = Field(min_length=1)


class BudgetChange(Change):
    payer_bu: str
    consumer_bu: str | None = None
    period_from: str | None = Field(None, pattern=r"^\d{4}-\d{2}$", description="first month (default: this month)")
    amount: str = Field(pattern=PLAIN)
    thresholds_percent: list[str] = Field(default=["50", "80", "100"], min_length=1, max_length=10)
    hard_limit: str | None = Field(None, pattern=PLAIN)


class PriceBookChange(Change):
    book: dict[str, Any] = Field(description="the price book document, as `tokenhub pricebook publish` reads it")
    retroactive: bool = False


MONTH = r"^\d{4}-\d{2}$"
TEXT = r"^[^\x00]+$"
"""No NUL character: no text column can hold one (plans and cycles are stored as sent)."""
SLUG = r"^[a-z0-9]+(?:-[a-z0-9]+)*$"


class PlanOrCycleChange(Body):
    reason: str = Field(min_length=1, max_length=1000, pattern=TEXT, description="why: kept with the change")


class PlanAssignment(PlanOrCycleChange):
    payer_bu: str = Field(pattern=SLUG, max_length=128, description="the payer, a business unit in the registry")
    book_id: str = Field(min_length=1, max_length=128, pattern=TEXT,
                         description="the price book whose period tiers apply (it must have them for the model)")
    model: str = Field(min_length=1, max_length=128, pattern=TEXT, description="a model in the registry")
    first_month: str = Field(pattern=MONTH, description="the first month, this month or later, for example 2026-04")
    last_month: str | None = Field(None, pattern=MONTH, description="the last month (default: until ended)")


class PlanEnd(PlanOrCycleChange):
    payer_bu: str = Field(pattern=SLUG, max_length=128)
    model: str = Field(min_length=1, max_length=128, pattern=TEXT)
    last_month: str = Field(pattern=MONTH, description="the last month the running plan covers, this month or later")


class Plan(Body):
    plan_id: uuid.UUID
    payer_bu: str
    book_id: str
    model: str
    provider_bu: str = Field(description="the model's provider, from the registry when assigned")
    first_month: str
    last_month: str | None = Field(description="null: until ended")
    actor: str = Field(description="who assigned it: the owner of the key that did")
    reason: str
    assigned_at: datetime
    ended_by: str | None
    end_reason: str | None
    ended_at: datetime | None


class BillingCycleChange(PlanOrCycleChange):
    payer_bu: str = Field(pattern=SLUG, max_length=128, description="the payer, a business unit in the registry")
    every: Literal["month", "week", "day"] = Field(description="how often its periods close (they nest in months)")


class BillingCycle(Body):
    payer_bu: str
    every: Literal["month", "week", "day"]
    actor: str = Field(description="who set it: the owner of the key that did")
    reason: str
    changed_at: datetime


class AuditRequest(Body):
    bu: str | None = Field(None, description="only this payer's chain and events")
    as_of: datetime | None = Field(None, description="replay only: balances as of this event time")
    source: Literal["topic", "archive"] = "archive"
    reprice: bool = False


class AuditRun(Body):
    run_id: uuid.UUID
    kind: Literal["verify", "replay"]
    scope: str | None
    requested_by: str
    requested_at: datetime
    finished_at: datetime | None
    ok: bool | None
    report: dict[str, Any] | None
    error: str | None


# --- reads ------------------------------------------------------------------------------

class Balance(Body):
    bu: str
    display_name: str
    spend: AmountText = Field(pattern=PLAIN)
    revenue: AmountText = Field(pattern=PLAIN)
    net: AmountText = Field(pattern=PLAIN, description="revenue - spend")
    tokens_consumed: int
    tokens_served: int


class Figures(Body):
    spend: AmountText = Field(pattern=PLAIN)
    revenue: AmountText = Field(pattern=PLAIN)
    tokens_consumed: AmountText = Field(pattern=PLAIN)
    tokens_served: AmountText = Field(pattern=PLAIN)


class StatementEntry(Body):
    entry_id: str
    priced_id: str
    kind: str
    corrects_id: str | None
    chain: str
    sequence: int
    event_time: datetime
    posted_at: datetime
    payer_bu: str
    consumer_bu: str
    provider_bu: str
    app: str | None
    model: str
    amount: AmountText = Field(pattern=PLAIN)
    tokens: int
    effect: Figures = Field(description="what this entry adds to each of the BU's figures")
    overage: bool = Field(description="posted while the payer's quota was exhausted: billed all the same, and marked")


class Statement(Body):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    bu: str
    start: datetime = Field(alias="from")
    end: datetime = Field(alias="to")
    by: Literal["event-time", "posting-time"]
    opening: Figures = Field(description="balances before `from`")
    closing: Figures = Field(description="balances before `to`")
    entries: list[StatementEntry]
    next_cursor: str | None


class ChainHead(Body):
    chain: str
    sequence: int
    head_hash: str


class SpendLine(Body):
    consumer_bu: str
    app: str
    model: str
    token_class: str
    modality: str
    tokens: int
    amount: AmountText = Field(pattern=PLAIN)
    overage: AmountText = Field(pattern=PLAIN, description="of the amount, what was posted while the quota was exhausted")


class SpendTotal(Body):
    key: str
    tokens: int
    amount: AmountText = Field(pattern=PLAIN)


class TierReached(Body):
    mode: Literal["graduated", "volume"]
    tier: int = Field(description="1-based")
    tiers: int
    from_tokens: int
    up_to_tokens: int | None
    unit_price_per_million: AmountText = Field(pattern=PLAIN)
    flat_fee: AmountText = Field(pattern=PLAIN)


class PeriodTierSoFar(Body):
    model: str
    tokens: int
    charge: AmountText = Field(pattern=PLAIN, description="the tier line if the period closed now")
    reached: TierReached | None


class Spend(Body):
    bu: str
    period: str
    currency: str
    spend: AmountText = Field(pattern=PLAIN)
    overage: AmountText = Field(pattern=PLAIN, description="of the spend, what was posted while the quota was exhausted "
                                                          "(billed all the same: a mark, never a second charge)")
    forecast_month_end: AmountText | None = Field(pattern=PLAIN, description="at the pace so far; null outside the month")
    lines: list[SpendLine]
    by: dict[Literal["consumer", "app", "model", "class", "modality"], list[SpendTotal]]
    period_tiers: list[PeriodTierSoFar]


class DaySpend(Body):
    day: str = Field(description="a day in the company time zone")
    spend: AmountText = Field(pattern=PLAIN)


class DailySpend(Body):
    bu: str
    period: str
    previous_period: str
    days: list[DaySpend] = Field(description="days with spend, by event time")
    previous_days: list[DaySpend]


class BudgetRow(Body):
    payer_bu: str
    consumer_bu: str | None
    period: str
    budget_id: str
    amount: AmountText = Field(pattern=PLAIN)
    currency: str
    thresholds_percent: list[str]
    hard_limit: AmountText | None
    spent: AmountText = Field(pattern=PLAIN)
    used_percent: str
    thresholds_crossed: list[str]
    quota_exhausted: bool
    actor: str
    reason: str
    set_at: datetime
    period_from: str


class SettledMonth(Body):
    period: str
    revision: int = Field(description="the settlement's latest revision: 1, then one more each time a later close adds invoices to the month")
    settled_at: datetime


class RejectedRow(Body):
    rejected_id: str
    reason_code: str
    message: str
    usage_source: str | None
    usage_id: str | None
    consumer_bu: str | None = Field(description="as the original names it, where it can be read")
    topic: str
    received_at: datetime
    resubmitted_at: datetime | None
    resubmitted_by: str | None
    size: int


class RejectedDetail(RejectedRow):
    original: str | None = Field(description="the bytes as received, when UTF-8")
    original_base64: str | None = Field(description="the bytes as received, base64, when not UTF-8")


class ParkedRow(Body):
    consumed_id: str
    payer_bu: str
    consumer_bu: str | None
    provider_bu: str | None
    model: str
    tokens: dict[str, int]
    event_time: datetime
    parked_at: datetime
    reason: str


class PriceBookVersion(Body):
    book_id: str
    version: int
    effective_from: datetime
    currency: str
    retroactive: bool
    actor: str
    reason: str
    published_at: datetime
    models: list[str]


class RegistryBusinessUnit(Body):
    bu_id: str
    display_name: str
    parent_group: str | None
    cost_centre: str | None
    active: bool
    actor: str
    reason: str
    changed_at: datetime


class ModelRow(Body):
    model_id: str
    provider_bu: str
    display_name: str | None
    modality: str
    token_classes: list[str]
    active: bool
    actor: str
    reason: str
    changed_at: datetime


class RegistryFunding(Body):
    agreement_id: str
    consumer_bu: str
    app: str | None
    model_pattern: str | None
    payers: list[dict[str, Any]]
    effective_from: datetime
    effective_to: datetime | None
    actor: str
    reason: str
    changed_at: datetime


class RegistryConversionTable(Body):
    version: int
    effective_from: datetime
    rules: list[dict[str, Any]]
    actor: str
    reason: str
    published_at: datetime


from tokenhub.contracts.events import InvoiceIssued as InvoiceBody  # noqa: E402 - the contract's own model is the body
from tokenhub.contracts.settlement import SettlementNetted  # noqa: E402


class SettlementBody(SettlementNetted):
    final: bool = Field(description="false: provisional, from what is invoiced so far (the month is not closed)")
