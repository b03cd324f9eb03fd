"""Webhooks' functional core: which events a subscription receives (and what of
them it may see), how a delivery is signed, when it is tried again, and when
rejected usage becomes a burst worth telling someone about. Pure: the shell
(`delivery.py`) reads the topics, stores deliveries and sends them.

Signature, as Stripe and Standard Webhooks do it: the header
`Tokenhub-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>`;
a receiver recomputes it with the secret it was shown once and refuses stale
timestamps (`tokenhub.client.api.verify_signature`)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

import orjson

from tokenhub.contracts.ids import derive_id

SIGNATURE_HEADER: Final = "Tokenhub-Signature"
EVENT_ID_HEADER: Final = "Tokenhub-Event-Id"
EVENT_TYPE_HEADER: Final = "Tokenhub-Event-Type"
DELIVERY_ID_HEADER: Final = "Tokenhub-Delivery-Id"
SECRET_BYTES: Final = 32

KINDS: Final = (
    "budget.threshold_crossed",
    "budget.quota_exhausted",
    "budget.quota_restored",
    "invoice.issued",
    "settlement.netted",
    "usage.rejected_burst",
)
BACKOFF_S: Final = (1.0, 5.0, 30.0, 120.0, 600.0, 1800.0)
"""Waits before the 2nd, 3rd, ... attempt: a receiver down for a deploy gets its
events within seconds, one down for an hour within the last try; then the
delivery is failed and can be re-sent by hand."""
REJECTED_BURST_COUNT: Final = 20
REJECTED_BURST_WINDOW_S: Final = 60
"""Twenty rejections within a minute (per business unit, and overall) is a
producer sending something broken, not a stray bad event."""
WEBHOOKS_PER_OWNER_MAX: Final = 50
URL_LENGTH_MAX: Final = 2_000


def new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(SECRET_BYTES)


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def delivery_id(webhook_id: uuid.UUID, event_id: str) -> uuid.UUID:
    return derive_id("webhook.delivery", str(webhook_id), event_id)


def next_attempt(attempts: int, now: datetime, backoff_s: tuple[float, ...] = BACKOFF_S) -> datetime | None:
    """When to try again after `attempts` failed ones; None when it is given up."""
    if attempts > len(backoff_s):
        return None
    return now + timedelta(seconds=backoff_s[attempts - 1])


@dataclass(frozen=True)
class Subscription:
    webhook_id: uuid.UUID
    url: str
    kinds: frozenset[str]
    bu: str | None
    """None: a finance or admin subscription, every event whole."""
    secret: str


@dataclass(frozen=True)
class Notice:
    """One event as webhooks see it: its kind, id, the BUs it concerns and its body."""

    kind: str
    event_id: str
    business_units: frozenset[str]
    data: dict[str, Any]


def notice_of(kind: str, event: dict[str, Any]) -> Notice | None:
    """The webhook notice of an event read from a topic (as JSON), or None if
    webhooks do not carry it (a conflicting duplicate alert, say)."""
    if kind not in KINDS:
        return None
    if kind == "settlement.netted":
        units = {flow["payer_bu"] for flow in event.get("matrix", ())} | {flow["provider_bu"] for flow in event.get("matrix", ())}
        units |= set(event.get("positions", {}))
    else:
        units = {event.get("payer_bu"), event.get("consumer_bu")} - {None}
    return Notice(kind, str(event["id"]), frozenset(units), event)


def settlement_for(bu: str, event: dict[str, Any]) -> dict[str, Any]:
    """A settlement as one BU may see it: its own flows, position and transfers."""
    return {
        **event,
        "matrix": [flow for flow in event.get("matrix", ()) if bu in (flow["payer_bu"], flow["provider_bu"])],
        "positions": {name: value for name, value in event.get("positions", {}).items() if name == bu},
        "rounded_positions": {name: value for name, value in event.get("rounded_positions", {}).items() if name == bu},
        "rounding_residue_bu": event.get("rounding_residue_bu") if event.get("rounding_residue_bu") == bu else None,
        "transfers": [transfer for transfer in event.get("transfers", ()) if bu in (transfer["from_bu"], transfer["to_bu"])],
    }


def body_for(subscription: Subscription, notice: Notice) -> bytes | None:
    """The body this subscription gets for this notice, or None if it gets none."""
    if notice.kind not in subscription.kinds:
        return None
    data = notice.data
    if subscription.bu is None and notice.kind == "usage.rejected_burst" and notice.business_units:
        return None  # finance hears of the overall burst once, not again per business unit
    if subscription.bu is not None:
        if subscription.bu not in notice.business_units:
            return None
        if notice.kind == "settlement.netted":
            data = settlement_for(subscription.bu, data)
    return orjson.dumps({"id": notice.event_id, "type": notice.kind, "data": data}, option=orjson.OPT_SORT_KEYS)


def deliveries(subscriptions: Iterable[Subscription], notices: Iterable[Notice]) -> list[tuple[Subscription, Notice, bytes]]:
    return [(subscription, notice, body) for notice in notices for subscription in subscriptions
            if (body := body_for(subscription, notice)) is not None]


@dataclass(frozen=True)
class Rejection:
    event_id: str
    at: datetime
    reason_code: str
    consumer_bu: str | None


class BurstCounter:
    """Rejections per tumbling window, overall and per consumer BU. A window
    that reaches the threshold yields one burst notice, with an id derived from
    the scope and window, so the same burst read twice is one event."""

    def __init__(self, count: int = REJECTED_BURST_COUNT, window_s: int = REJECTED_BURST_WINDOW_S) -> None:
        self.count = count
        self.window_s = window_s
        self._windows: dict[tuple[str, int], dict[str, int]] = {}
        self._seen: set[str] = set()

    def add(self, rejections: Iterable[Rejection]) -> list[Notice]:
        bursts = []
        for rejection in rejections:
            if rejection.event_id in self._seen:
                continue
            self._seen.add(rejection.event_id)
            window = int(rejection.at.timestamp()) // self.window_s
            for scope in ("*", rejection.consumer_bu) if rejection.consumer_bu else ("*",):
                reasons = self._windows.setdefault((scope, window), {})
                reasons[rejection.reason_code] = reasons.get(rejection.reason_code, 0) + 1
                if sum(reasons.values()) == self.count:
                    start = datetime.fromtimestamp(window * self.window_s, rejection.at.tzinfo)
                    event_id = str(derive_id("usage.rejected_burst", scope, str(window)))
                    bursts.append(Notice("usage.rejected_burst", event_id, frozenset() if scope == "*" else frozenset({scope}), {
                        "id": event_id, "consumer_bu": None if scope == "*" else scope,
                        "window_start": start.isoformat(), "window_end": (start + timedelta(seconds=self.window_s)).isoformat(),
                        "rejected": self.count, "reason_codes": dict(sorted(reasons.items())),
                    }))
        self._forget()
        return bursts

    def _forget(self) -> None:
        """Windows more than two windows old cannot grow: dropped, so memory stays bounded."""
        if len(self._windows) <= 1_000:
            return
        newest = max(window for _, window in self._windows)
        self._windows = {key: value for key, value in self._windows.items() if key[1] >= newest - 2}
        if len(self._seen) > 100_000:
            self._seen.clear()
