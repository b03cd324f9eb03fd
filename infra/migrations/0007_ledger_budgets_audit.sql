-- Ledger: an append-only journal, budgets per payer and month, budget alerts
-- raised once per BU, scope, month and threshold, and quota states.

-- Corrections are new reversing entries, never updates or deletes: the
-- database refuses both on the journal.
create function ledger.refuse_journal_change() returns trigger language plpgsql as $$
begin
    raise exception 'ledger.% is append-only: post a reversing entry instead of % (entry %)',
        tg_table_name, lower(tg_op), old.entry_id;
end $$;

create trigger entries_append_only before update or delete on ledger.entries
    for each row execute function ledger.refuse_journal_change();
create trigger postings_append_only before update or delete on ledger.postings
    for each row execute function ledger.refuse_journal_change();

-- Every BudgetSet as received (the archive of budgets.configured); the one in
-- force for a month is the latest set with period_from at or before it.
create table ledger.budgets (
    budget_id uuid primary key,
    payer_bu text not null,
    scope text not null,  -- a consumer BU, or '*' for all of the payer's spend
    period_from text not null,
    amount numeric(38, 12) not null check (amount > 0),
    thresholds_percent numeric[] not null,
    hard_limit numeric(38, 12) check (hard_limit > 0),
    currency text not null,
    actor text not null,
    reason text not null,
    set_at timestamptz not null,
    payload bytea not null,
    received_at timestamptz not null default now()
);
create index budgets_payer on ledger.budgets (payer_bu, scope, period_from);

-- Month-to-date spend by event time, per payer and consumer, kept in the
-- posting transaction so a budget check reads one row instead of the journal.
create table ledger.period_spend (
    payer_bu text not null,
    consumer_bu text not null,
    period text not null,
    amount numeric(38, 12) not null,
    primary key (payer_bu, period, consumer_bu)
);

-- One row per alert raised; the unique keys make a replayed or redelivered
-- crossing a no-op.
create table ledger.budget_alerts (
    alert_id uuid primary key,
    kind text not null check (kind in ('threshold', 'exhausted', 'restored')),
    payer_bu text not null,
    scope text not null,
    period text not null,
    threshold_percent numeric,
    budget_id uuid not null,
    payload bytea not null,
    raised_at timestamptz not null default now()
);
create unique index budget_alerts_threshold_once on ledger.budget_alerts (payer_bu, scope, period, threshold_percent)
    where kind = 'threshold';

-- Whether a payer's quota is exhausted in a month, per scope; `transitions`
-- numbers exhaustions and restorations so each has its own deterministic id.
-- A month is closed once the next began: late usage for it raises no new quota alert.
create table ledger.quota_states (
    payer_bu text not null,
    scope text not null,
    period text not null,
    exhausted boolean not null,
    transitions integer not null,
    closed boolean not null default false,
    primary key (payer_bu, scope, period)
);
create index quota_states_exhausted on ledger.quota_states (period) where exhausted and not closed;
