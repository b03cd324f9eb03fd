-- Final means final (docs/architecture.md, delivery semantics): when more invoices are
-- issued for a month already settled, the month is settled again with the next revision
-- number; the latest revision is the one that stands. Settlements stored before this
-- migration are revision 1.
alter table invoicing.settlements add column revision integer not null default 1 check (revision >= 1);
alter table invoicing.settlements drop constraint settlements_pkey;
-- INSERT_SETTLEMENT (on conflict do nothing), SELECT_LATEST_SETTLEMENT (order by revision desc limit 1)
-- and SELECT_SETTLED_MONTHS (distinct on period, latest revision first).
alter table invoicing.settlements add primary key (period, revision);

-- Plans with fees: a payer assigned to a price book's period tiers for one model over a
-- range of months. At close every billing period of the payer in those months gets its
-- tier line, the first tier's flat fee included, with or without usage. Assigned and
-- ended by a person, with a reason.
create table invoicing.plans (
    plan_id uuid primary key,           -- END_PLAN, by id
    payer_bu text not null,
    book_id text not null,
    model text not null,
    provider_bu text not null,          -- the model's provider, from the registry when assigned
    first_month text not null,
    last_month text,                    -- null: open-ended
    actor text not null,
    reason text not null,
    assigned_at timestamptz not null,
    ended_by text,
    end_reason text,
    ended_at timestamptz,
    check (last_month is null or last_month >= first_month)
);
-- SELECT_PLANS reads the whole table (a few rows per payer) at each close and listing.
