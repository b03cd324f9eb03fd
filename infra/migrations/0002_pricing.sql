-- Pricing: price book versions, the archive of TokenConsumed, parked consumption
-- and what was priced with which version.
create schema if not exists pricing;

create table pricing.price_books (
    book_id text not null,
    version integer not null,
    effective_from timestamptz not null,
    payload bytea not null,
    retroactive boolean not null,
    actor text not null,
    reason text not null,
    published_at timestamptz not null,
    primary key (book_id, version)
);
create index price_books_effective on pricing.price_books (effective_from);

create table pricing.consumed_archive (
    consumed_id uuid primary key,
    payer_bu text not null,
    model text not null,
    event_time timestamptz not null,
    payload bytea not null,
    received_at timestamptz not null default now()
);
create index consumed_archive_time on pricing.consumed_archive (event_time);

-- Consumption with no applicable price: priced when a matching book arrives.
create table pricing.parked (
    consumed_id uuid primary key references pricing.consumed_archive (consumed_id),
    model text not null,
    event_time timestamptz not null,
    reason text not null,
    parked_at timestamptz not null default now()
);

-- The current Priced for each consumption (charges and corrections), so a
-- reprice knows what to reverse. History stays on the topic and in the ledger.
create table pricing.priced (
    priced_id uuid primary key,
    consumed_id uuid not null,
    kind text not null,
    book_id text not null,
    book_version integer not null,
    total_amount numeric(38, 12) not null,
    payload bytea not null,
    superseded_by uuid,
    priced_at timestamptz not null default now()
);
create index priced_consumed on pricing.priced (consumed_id);

create table pricing.outbox (
    seq bigserial primary key,
    topic text not null,
    key bytea,
    value bytea not null,
    created_at timestamptz not null default now()
);

create table pricing.counters (name text primary key, value bigint not null);
