-- Over quota is visible (issue 16, part 6).
-- A journal row remembers whether its entry was posted while its payer's quota
-- was exhausted: the mark is part of the entry's hashed content, so the entry
-- is rebuilt from the row with it. Rows from before are not marked, and their
-- entries hash as they always did (the mark is written only when true).
alter table ledger.journal add column overage boolean not null default false;

-- The last quota.state record published per payer: the next one is published
-- only when a figure changes, numbered one above it, and the boot republish
-- sends each payer's latest into a broker that lost the compacted topic.
create table ledger.quota_published (
    payer_bu text primary key,
    sequence bigint not null check (sequence >= 1),
    period text not null,
    state text not null check (state in ('allowed', 'exhausted')),
    published_at timestamptz not null,
    payload bytea not null
);
