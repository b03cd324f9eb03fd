-- Billing cycles per payer (month by default; day or week, nested in months),
-- the end of each posting's period, and price books for period tiers.
alter table invoicing.postings add column period_end timestamptz;
create index postings_open on invoicing.postings (payer_bu, period_end) where invoice_id is null;

create table invoicing.billing_cycles (
    payer_bu text primary key,
    kind text not null check (kind in ('month', 'week', 'day')),
    actor text not null,
    reason text not null,
    changed_at timestamptz not null
);

create table invoicing.price_books (
    book_id text not null,
    version integer not null,
    effective_from timestamptz not null,
    payload bytea not null,
    primary key (book_id, version)
);
