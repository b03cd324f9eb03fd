-- Monthly settlements between business units, one per period, immutable.
create table invoicing.settlements (
    period text primary key,
    payload jsonb not null,
    settled_at timestamptz not null
);
