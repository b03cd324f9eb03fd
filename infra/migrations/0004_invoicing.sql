-- Invoicing: postings received, periods, invoices and their lines.
create schema if not exists invoicing;

create table invoicing.postings (
    posting_id uuid primary key,
    payer_bu text not null,
    period text not null,
    event_time timestamptz not null,
    chain text not null,
    sequence bigint not null,
    entry_hash text not null,
    invoice_id uuid,
    payload jsonb not null,
    received_at timestamptz not null default now()
);
create index postings_payer_period on invoicing.postings (payer_bu, period);

create table invoicing.invoices (
    invoice_id uuid primary key,
    payer_bu text not null,
    period text not null,
    number integer not null,
    status text not null check (status in ('issued', 'credited')),
    currency text not null,
    subtotal numeric(38, 12) not null,
    rounding numeric(38, 12) not null,
    total numeric(38, 12) not null,
    payload jsonb not null,
    issued_at timestamptz not null,
    unique (payer_bu, period),
    unique (payer_bu, number)
);

create table invoicing.closed_periods (
    period text primary key,
    closed_at timestamptz not null,
    actor text not null
);

create table invoicing.outbox (
    seq bigserial primary key,
    topic text not null,
    key bytea,
    value bytea not null,
    created_at timestamptz not null default now()
);

create table invoicing.counters (name text primary key, value bigint not null);
