-- Metering: BU registry, model catalogue, conversion tables, funding agreements,
-- dedup keys and rejected usage (authoritative).
create schema if not exists metering;

create table metering.business_units (
    bu_id text primary key,
    display_name text not null,
    parent_group text,
    cost_centre text,
    active boolean not null default true,
    actor text not null,
    reason text not null,
    changed_at timestamptz not null
);

create table metering.models (
    model_id text primary key,
    provider_bu text not null references metering.business_units (bu_id),
    display_name text,
    modality text not null,
    token_classes text[] not null,
    active boolean not null default true,
    actor text not null,
    reason text not null,
    changed_at timestamptz not null
);

-- Every registry change as it arrived: the event history behind the tables above.
create table metering.registry_changes (
    change_id uuid primary key,
    kind text not null,
    entity_id text not null,
    payload jsonb not null,
    actor text not null,
    reason text not null,
    changed_at timestamptz not null
);

create table metering.conversion_tables (
    version integer primary key,
    effective_from timestamptz not null,
    rules jsonb not null,
    actor text not null,
    reason text not null,
    published_at timestamptz not null
);

create table metering.funding_agreements (
    agreement_id text primary key,
    consumer_bu text not null,
    app text,
    model_pattern text,
    payers jsonb not null,
    effective_from timestamptz not null,
    effective_to timestamptz,
    actor text not null,
    reason text not null,
    changed_at timestamptz not null,
    check (effective_to is null or effective_to > effective_from)
);
create index funding_agreements_consumer on metering.funding_agreements (consumer_bu);

-- source + id is the idempotency key; the unique constraint keeps several
-- instances safe. Rows older than the accepted window plus skew may be pruned.
create table metering.dedup (
    usage_source text not null,
    usage_id text not null,
    content_sha256 text not null,
    event_time timestamptz not null,
    received_at timestamptz not null default now(),
    primary key (usage_source, usage_id)
);
create index dedup_event_time on metering.dedup (event_time);

create table metering.rejected_usage (
    rejected_id uuid primary key,
    reason_code text not null,
    message text not null,
    original_bytes bytea not null,
    original_sha256 text not null,
    headers jsonb not null,
    usage_source text,
    usage_id text,
    topic text not null,
    kafka_partition integer,
    kafka_offset bigint,
    received_at timestamptz not null default now(),
    resubmitted_at timestamptz,
    resubmitted_by text
);
create index rejected_usage_reason on metering.rejected_usage (reason_code);

create table metering.api_keys (
    key_id text primary key,
    key_sha256 text not null unique,
    sources text[] not null,
    actor text not null,
    reason text not null,
    created_at timestamptz not null default now(),
    revoked_at timestamptz
);

create table metering.outbox (
    seq bigserial primary key,
    topic text not null,
    key bytea,
    value bytea not null,
    created_at timestamptz not null default now()
);

create table metering.counters (name text primary key, value bigint not null);
