"""The api schema's tables: asyncpg here and only here. The API writes them as
tokenhub_api; `tokenhub apikey` writes keys with the operator's credentials."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import asyncpg

from tokenhub.api.access import KeyRecord, Role
from tokenhub.api.webhooks import Subscription

# --- keys -------------------------------------------------------------------------

INSERT_KEY: Final = """
insert into api.keys (key_id, key_sha256, role, bu, owner, reason, created_at, expires_at, changed_at)
values ($1, $2, $3, $4, $5, $6, $7, $8, clock_timestamp())
"""
SELECT_KEYS_CHANGED: Final = """
select key_id, key_sha256, role, bu, owner, expires_at, revoked_at, changed_at from api.keys
where changed_at > $1 order by changed_at
"""
SELECT_KEY_LIST: Final = """
select key_id, role, bu, owner, reason, created_at, expires_at, revoked_at, revoked_by from api.keys
where ($1::timestamptz is null or (created_at, key_id) > ($1, $2)) order by created_at, key_id limit $3
"""
REVOKE_KEY: Final = """
update api.keys set revoked_at = $2, revoked_by = $3, changed_at = clock_timestamp()
where key_id = $1 and revoked_at is null returning key_id
"""


def _key(row: asyncpg.Record) -> KeyRecord:
    return KeyRecord(row["key_id"], row["key_sha256"], Role(row["role"]), row["bu"], row["owner"], row["expires_at"],
                     row["revoked_at"])


async def insert_key(connection: asyncpg.Connection, key_id: str, key_sha256: str, role: Role, bu: str | None, owner: str,
                     reason: str, created_at: datetime, expires_at: datetime | None) -> None:
    await connection.execute(INSERT_KEY, key_id, key_sha256, role.value, bu, owner, reason, created_at, expires_at)


async def keys_changed_since(connection: asyncpg.Connection, since: datetime) -> list[tuple[KeyRecord, datetime]]:
    return [(_key(row), row["changed_at"]) for row in await connection.fetch(SELECT_KEYS_CHANGED, since)]


async def list_keys(connection: asyncpg.Connection, after: tuple[datetime, str] | None, limit: int) -> list[dict[str, Any]]:
    created, key_id = after if after else (None, "")
    return [dict(row) for row in await connection.fetch(SELECT_KEY_LIST, created, key_id, limit)]


async def revoke_key(connection: asyncpg.Connection, key_id: str, at: datetime, by: str) -> bool:
    return await connection.fetchval(REVOKE_KEY, key_id, at, by) is not None


# --- webhooks ---------------------------------------------------------------------

INSERT_WEBHOOK: Final = """
insert into api.webhooks (webhook_id, url, kinds, bu, secret, owner, key_id, created_at) values ($1, $2, $3, $4, $5, $6, $7, $8)
"""
WEBHOOK_COLUMNS: Final = "webhook_id, url, kinds, bu, owner, key_id, created_at, disabled_at"
SELECT_WEBHOOKS: Final = f"""
select {WEBHOOK_COLUMNS} from api.webhooks
where ($1::text is null or bu = $1) and ($2::timestamptz is null or (created_at, webhook_id) > ($2, $3::uuid))
order by created_at, webhook_id limit $4
"""
SELECT_WEBHOOK: Final = f"select {WEBHOOK_COLUMNS} from api.webhooks where webhook_id = $1"
COUNT_OWNER_WEBHOOKS: Final = "select count(*) from api.webhooks where key_id = $1 and disabled_at is null"
DISABLE_WEBHOOK: Final = """
update api.webhooks set disabled_at = $2 where webhook_id = $1 and disabled_at is null returning webhook_id
"""
SELECT_ACTIVE_SUBSCRIPTIONS: Final = """
select webhook_id, url, kinds, bu, secret from api.webhooks where disabled_at is null
"""


async def insert_webhook(connection: asyncpg.Connection, webhook_id: uuid.UUID, url: str, kinds: list[str], bu: str | None,
                         secret: str, owner: str, key_id: str, created_at: datetime) -> None:
    await connection.execute(INSERT_WEBHOOK, webhook_id, url, kinds, bu, secret, owner, key_id, created_at)


async def count_owner_webhooks(connection: asyncpg.Connection, key_id: str) -> int:
    return await connection.fetchval(COUNT_OWNER_WEBHOOKS, key_id)


async def list_webhooks(connection: asyncpg.Connection, bu: str | None, after: tuple[datetime, uuid.UUID] | None,
                        limit: int) -> list[dict[str, Any]]:
    created, webhook_id = after if after else (None, uuid.UUID(int=0))
    return [dict(row) for row in await connection.fetch(SELECT_WEBHOOKS, bu, created, webhook_id, limit)]


async def get_webhook(connection: asyncpg.Connection, webhook_id: uuid.UUID) -> dict[str, Any] | None:
    row = await connection.fetchrow(SELECT_WEBHOOK, webhook_id)
    return dict(row) if row else None


async def disable_webhook(connection: asyncpg.Connection, webhook_id: uuid.UUID, at: datetime) -> bool:
    return await connection.fetchval(DISABLE_WEBHOOK, webhook_id, at) is not None


async def active_subscriptions(connection: asyncpg.Connection) -> list[Subscription]:
    return [Subscription(row["webhook_id"], row["url"], frozenset(row["kinds"]), row["bu"], row["secret"])
            for row in await connection.fetch(SELECT_ACTIVE_SUBSCRIPTIONS)]


# --- deliveries -------------------------------------------------------------------

CLAIM_DELIVERIES: Final = """
insert into api.deliveries (delivery_id, webhook_id, event_id, kind, body, status, next_attempt_at, created_at)
select d, w, e, k, b, 'pending', $6, $6 from unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::bytea[]) as t(d, w, e, k, b)
on conflict do nothing returning delivery_id
"""
LEASE_DUE: Final = """
with due as (
    select d.delivery_id from api.deliveries d join api.webhooks w using (webhook_id)
    where d.status = 'pending' and d.next_attempt_at <= $1 and w.disabled_at is null
    order by d.next_attempt_at limit $2
    for update of d skip locked
)
update api.deliveries d set next_attempt_at = $3 from due, api.webhooks w
where d.delivery_id = due.delivery_id and w.webhook_id = d.webhook_id
returning d.delivery_id, d.webhook_id, d.event_id, d.kind, d.body, d.attempts, w.url, w.secret
"""
RECORD_ATTEMPT: Final = """
insert into api.delivery_attempts (delivery_id, attempt, attempted_at, status_code, error, duration_ms)
values ($1, $2, $3, $4, $5, $6)
"""
UPDATE_DELIVERY: Final = """
update api.deliveries set attempts = $2, status = $3, next_attempt_at = $4, last_status_code = $5, last_error = $6,
    delivered_at = case when $3 = 'delivered' then $7 else delivered_at end
where delivery_id = $1
"""
DELIVERY_COLUMNS: Final = ("delivery_id, webhook_id, event_id, kind, status, attempts, next_attempt_at, last_status_code, "
                           "last_error, created_at, delivered_at")
SELECT_DELIVERIES: Final = f"""
select {DELIVERY_COLUMNS} from api.deliveries
where webhook_id = $1 and ($2::timestamptz is null or (created_at, delivery_id) > ($2, $3::uuid))
order by created_at, delivery_id limit $4
"""
SELECT_DELIVERY: Final = f"select {DELIVERY_COLUMNS}, body from api.deliveries where delivery_id = $1"
SELECT_ATTEMPTS: Final = """
select attempt, attempted_at, status_code, error, duration_ms from api.delivery_attempts where delivery_id = $1 order by attempt
"""
RESEND: Final = """
update api.deliveries set status = 'pending', next_attempt_at = $2 where delivery_id = $1 returning delivery_id
"""


@dataclass(frozen=True)
class DueDelivery:
    delivery_id: uuid.UUID
    webhook_id: uuid.UUID
    event_id: str
    kind: str
    body: bytes
    attempts: int
    url: str
    secret: str


async def claim_deliveries(connection: asyncpg.Connection, rows: list[tuple[uuid.UUID, uuid.UUID, str, str, bytes]],
                           now: datetime) -> set[uuid.UUID]:
    """Store deliveries not stored before (one per event and subscription, even
    with several API instances or a topic read twice); the ids stored now."""
    if not rows:
        return set()
    columns = [list(column) for column in zip(*rows, strict=True)]
    return {row[0] for row in await connection.fetch(CLAIM_DELIVERIES, *columns, now)}


async def lease_due(connection: asyncpg.Connection, now: datetime, limit: int, lease_until: datetime) -> list[DueDelivery]:
    """Deliveries due now, leased until `lease_until` (their next attempt moves
    there), so another instance does not send them meanwhile; a sender that
    dies mid-way leaves them to be tried again when the lease ends."""
    return [DueDelivery(row["delivery_id"], row["webhook_id"], row["event_id"], row["kind"], bytes(row["body"]),
                        row["attempts"], row["url"], row["secret"])
            for row in await connection.fetch(LEASE_DUE, now, limit, lease_until)]


async def record_attempt(connection: asyncpg.Connection, delivery: DueDelivery, attempt: int, at: datetime,
                         status_code: int | None, error: str | None, duration_ms: float, status: str,
                         next_attempt_at: datetime | None) -> None:
    await connection.execute(RECORD_ATTEMPT, delivery.delivery_id, attempt, at, status_code, error, round(duration_ms, 3))
    await connection.execute(UPDATE_DELIVERY, delivery.delivery_id, attempt, status, next_attempt_at, status_code, error, at)


async def list_deliveries(connection: asyncpg.Connection, webhook_id: uuid.UUID, after: tuple[datetime, uuid.UUID] | None,
                          limit: int) -> list[dict[str, Any]]:
    created, delivery = after if after else (None, uuid.UUID(int=0))
    return [dict(row) for row in await connection.fetch(SELECT_DELIVERIES, webhook_id, created, delivery, limit)]


async def get_delivery(connection: asyncpg.Connection, delivery_id: uuid.UUID) -> dict[str, Any] | None:
    row = await connection.fetchrow(SELECT_DELIVERY, delivery_id)
    if row is None:
        return None
    return {**dict(row), "attempt_log": [dict(attempt) for attempt in await connection.fetch(SELECT_ATTEMPTS, delivery_id)]}


async def resend(connection: asyncpg.Connection, delivery_id: uuid.UUID, now: datetime) -> bool:
    return await connection.fetchval(RESEND, delivery_id, now) is not None


# --- offsets of the webhook follower ----------------------------------------------

SELECT_OFFSETS: Final = "select topic, kafka_partition, next_offset from api.offsets where cluster_id = $1"
UPSERT_OFFSETS: Final = """
insert into api.offsets (cluster_id, topic, kafka_partition, next_offset)
select $1, * from unnest($2::text[], $3::int[], $4::bigint[])
on conflict (cluster_id, topic, kafka_partition) do update set next_offset = greatest(offsets.next_offset, excluded.next_offset)
"""


async def load_offsets(connection: asyncpg.Connection, cluster_id: str) -> dict[tuple[str, int], int]:
    return {(row["topic"], row["kafka_partition"]): row["next_offset"] for row in await connection.fetch(SELECT_OFFSETS, cluster_id)}


async def save_offsets(connection: asyncpg.Connection, cluster_id: str, offsets: dict[tuple[str, int], int]) -> None:
    if offsets:
        items = sorted(offsets.items())
        await connection.execute(UPSERT_OFFSETS, cluster_id, [topic for (topic, _), _ in items],
                                 [partition for (_, partition), _ in items], [offset for _, offset in items])


# --- audit runs -------------------------------------------------------------------

INSERT_RUN: Final = """
insert into api.audit_runs (run_id, kind, scope, requested_by, requested_at) values ($1, $2, $3, $4, $5)
"""
FINISH_RUN: Final = "update api.audit_runs set finished_at = $2, ok = $3, report = $4, error = $5 where run_id = $1"
RUN_COLUMNS: Final = "run_id, kind, scope, requested_by, requested_at, finished_at, ok, report, error"
SELECT_RUNS: Final = f"""
select {RUN_COLUMNS} from api.audit_runs
where ($1::text is null or kind = $1) and ($2::timestamptz is null or (requested_at, run_id) < ($2, $3::uuid))
order by requested_at desc, run_id desc limit $4
"""
SELECT_RUN: Final = f"select {RUN_COLUMNS} from api.audit_runs where run_id = $1"
FAIL_UNFINISHED: Final = """
update api.audit_runs set finished_at = $1, error = 'the API stopped before the run finished' where finished_at is null
"""


async def insert_run(connection: asyncpg.Connection, run_id: uuid.UUID, kind: str, scope: str | None, by: str,
                     at: datetime) -> None:
    await connection.execute(INSERT_RUN, run_id, kind, scope, by, at)


async def finish_run(connection: asyncpg.Connection, run_id: uuid.UUID, at: datetime, ok: bool | None,
                     report: dict[str, Any] | None, error: str | None) -> None:
    await connection.execute(FINISH_RUN, run_id, at, ok, report, error)


async def list_runs(connection: asyncpg.Connection, kind: str | None, before: tuple[datetime, uuid.UUID] | None,
                    limit: int) -> list[dict[str, Any]]:
    requested, run_id = before if before else (None, uuid.UUID(int=0))
    return [dict(row) for row in await connection.fetch(SELECT_RUNS, kind, requested, run_id, limit)]


async def get_run(connection: asyncpg.Connection, run_id: uuid.UUID) -> dict[str, Any] | None:
    row = await connection.fetchrow(SELECT_RUN, run_id)
    return dict(row) if row else None


async def fail_unfinished_runs(connection: asyncpg.Connection, at: datetime) -> None:
    await connection.execute(FAIL_UNFINISHED, at)
