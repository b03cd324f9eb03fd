-- The HTTP API: its own schema (API keys with roles, webhook subscriptions and
-- deliveries, audit runs) and two database roles, so that the API never holds
-- the credentials that can change a service's tables.
--   tokenhub_reader: reads every service's schema and nothing else; its
--     transactions are read-only by default. The API's read endpoints use it.
--   tokenhub_api: writes the api schema only (keys, webhooks, deliveries, runs).
-- Roles belong to the cluster, not the database: created once, granted per database.
do $$
begin
    if not exists (select from pg_roles where rolname = 'tokenhub_reader') then
        create role tokenhub_reader login;
    end if;
    if not exists (select from pg_roles where rolname = 'tokenhub_api') then
        create role tokenhub_api login;
    end if;
end $$;
alter role tokenhub_reader set default_transaction_read_only = on;

create schema if not exists api;

-- API keys for people and tools: only the SHA-256 of a key is stored; the key
-- is shown once. A bu-reader key names its business unit.
create table api.keys (
    key_id text primary key,
    key_sha256 text not null unique,
    role text not null check (role in ('bu-reader', 'finance', 'auditor', 'admin')),
    bu text,
    owner text not null,
    reason text not null,
    created_at timestamptz not null,
    expires_at timestamptz,
    revoked_at timestamptz,
    revoked_by text,
    changed_at timestamptz not null,
    check ((role = 'bu-reader') = (bu is not null)),
    check (expires_at is null or expires_at > created_at)
);
-- The API keeps every key in memory and refreshes what changed since its last look.
create index keys_changed on api.keys (changed_at);

-- A URL subscribed to kinds of events; the secret signs each delivery.
create table api.webhooks (
    webhook_id uuid primary key,
    url text not null,
    kinds text[] not null,
    bu text,  -- the subscriber's business unit: only its events; none: finance, all events
    secret text not null,
    owner text not null,
    key_id text not null references api.keys (key_id),
    created_at timestamptz not null,
    disabled_at timestamptz
);

-- One row per event per subscription (its dedup key), with every attempt's outcome.
create table api.deliveries (
    delivery_id uuid primary key,
    webhook_id uuid not null references api.webhooks (webhook_id),
    event_id text not null,
    kind text not null,
    body bytea not null,
    status text not null check (status in ('pending', 'delivered', 'failed')),
    attempts integer not null default 0,
    next_attempt_at timestamptz,
    last_status_code integer,
    last_error text,
    created_at timestamptz not null,
    delivered_at timestamptz,
    unique (webhook_id, event_id)
);
create index deliveries_due on api.deliveries (next_attempt_at) where status = 'pending';
create index deliveries_webhook on api.deliveries (webhook_id, created_at, delivery_id);

-- Each attempt as it happened, for the record.
create table api.delivery_attempts (
    delivery_id uuid not null references api.deliveries (delivery_id),
    attempt integer not null,
    attempted_at timestamptz not null,
    status_code integer,
    error text,
    duration_ms numeric(12, 3) not null,
    primary key (delivery_id, attempt)
);

-- Where the webhook follower is on each topic; a hint tagged with the broker's
-- cluster id, as the ledger keeps its offsets (a new broker starts afresh).
create table api.offsets (
    cluster_id text not null,
    topic text not null,
    kafka_partition integer not null,
    next_offset bigint not null,
    primary key (cluster_id, topic, kafka_partition)
);

-- verify and replay runs started through the API, with their reports.
create table api.audit_runs (
    run_id uuid primary key,
    kind text not null check (kind in ('verify', 'replay')),
    scope text,
    requested_by text not null,
    requested_at timestamptz not null,
    finished_at timestamptz,
    ok boolean,
    report jsonb,
    error text
);
create index audit_runs_time on api.audit_runs (requested_at, run_id);

-- The consumer BU a stored usage event names, or null when its bytes are not a
-- JSON object that names one (which is often why it was rejected): lets a
-- business unit's reader page through its own rejected usage in SQL.
create function api.usage_consumer(original bytea) returns text
language plpgsql immutable parallel safe as $$
begin
    return convert_from(original, 'UTF8')::jsonb -> 'data' ->> 'consumer_bu';
exception when others then
    return null;
end $$;

grant usage on schema metering, pricing, ledger, invoicing to tokenhub_reader;
grant select on all tables in schema metering, pricing, ledger, invoicing to tokenhub_reader;
-- Tables that later migrations add are readable too.
alter default privileges in schema metering, pricing, ledger, invoicing grant select on tables to tokenhub_reader;

grant usage on schema api to tokenhub_api, tokenhub_reader;
grant execute on function api.usage_consumer(bytea) to tokenhub_reader;
grant select, insert, update on all tables in schema api to tokenhub_api;
alter default privileges in schema api grant select, insert, update on tables to tokenhub_api;
