-- The journal entry is one row (docs/architecture.md, "Storage"): keyed by the
-- Priced it posts, so the row is the entry, the dedup key and the archive the
-- auditor rebuilds from; its movements in transfer form, one debit account,
-- one credit account and one quantity per ledger, so it balances by
-- construction; the Priced's canonical bytes and the entry's chain hash in the
-- same row. The LedgerPosted event is rebuilt from the row (the Priced, the
-- chain place and the posting time) byte for byte, so it is not stored again.
-- Replaces ledger.priced_archive (the Priced stored a second time),
-- ledger.entries (the LedgerPosted bytes and a copy of its fields) and
-- ledger.postings (four leg rows per entry).
create table ledger.journal (
    priced_id uuid primary key,
    sequence bigint not null check (sequence >= 1),
    event_time timestamptz not null,
    posted_at timestamptz not null,
    tokens bigint not null check (tokens >= 0),
    chain text not null,
    money_debit text not null,
    money_credit text not null,
    amount numeric(38, 12) not null check (amount >= 0),
    tokens_debit text not null,
    tokens_credit text not null,
    entry_hash bytea not null check (octet_length(entry_hash) = 32),
    priced bytea not null,
    -- The chart of accounts (decision 10): money moves between the payer's
    -- spend and the provider's revenue, Tokens between the consumer's consumed
    -- and the provider's served; a reversal swaps the sides, so every quantity
    -- is positive. The chain is the payer's.
    constraint journal_money_accounts check (
        (money_debit like 'bu:%:spend' and money_credit like 'bu:%:revenue')
        or (money_debit like 'bu:%:revenue' and money_credit like 'bu:%:spend')),
    constraint journal_tokens_accounts check (
        (tokens_debit like 'bu:%:consumed' and tokens_credit like 'bu:%:served')
        or (tokens_debit like 'bu:%:served' and tokens_credit like 'bu:%:consumed')),
    constraint journal_chain_is_the_payer check ('bu:' || chain || ':spend' in (money_debit, money_credit)),
    constraint journal_one_provider check (
        split_part(case when money_debit like '%:revenue' then money_debit else money_credit end, ':', 2)
        = split_part(case when tokens_debit like '%:served' then tokens_debit else tokens_credit end, ':', 2)),
    -- One entry at each place of a chain. Its index is also how verify and the
    -- republish after a broker loss stream each chain in order.
    constraint journal_chain_sequence unique (chain, sequence)
);
-- The primary key is the dedup: every posting batch asks which of its Priced
-- ids are posted already; restore and verify find a Priced's entry by it too.

-- Statements and point-in-time balances select entries by event time or by
-- posting time, and a quota that runs out lists what its payer funded in the
-- month: ranges of a column that grows with the table's physical order, which
-- a block-range index answers from a few pages.
create index journal_event_time on ledger.journal using brin (event_time);
create index journal_posted_at on ledger.journal using brin (posted_at);

-- A conflicting duplicate's alert as published, so a republish after a broker
-- loss sends it again (rows from before this migration keep their detail only).
alter table ledger.alerts add column payload bytea;

-- Corrections are new reversing entries, never updates or deletes.
create function ledger.refuse_journal_rewrite() returns trigger language plpgsql as $$
begin
    raise exception 'ledger.journal is append-only: post a reversing entry instead of %', lower(tg_op);
end $$;
create trigger journal_append_only before update or delete or truncate on ledger.journal
    for each statement execute function ledger.refuse_journal_rewrite();

-- Analysed from 100,000 changed rows on, as the tables it replaces were (0014).
alter table ledger.journal set (autovacuum_analyze_threshold = 100000, autovacuum_analyze_scale_factor = 0.1);

-- The entries as they are, moved: legs 0 and 1 are the money ledger's debit and
-- credit, legs 2 and 3 the Tokens ledger's (the ledger has always written them
-- so). Anything else, and a chain whose links do not hold, stops the migration:
-- the previous hash is not kept (it is the hash of the entry before), so it is
-- checked here, once, before it goes.
do $$
declare
    broken record;
begin
    select e.chain, e.sequence into broken from ledger.entries e
    where e.previous_hash <> coalesce(
        (select p.entry_hash from ledger.entries p where p.chain = e.chain and p.sequence = e.sequence - 1),
        case when e.sequence = 1 then repeat('0', 64) end)
       or e.previous_hash is null
    limit 1;
    if found then
        raise exception 'chain % sequence % does not link to the entry before it: run tokenhub verify first', broken.chain, broken.sequence;
    end if;
    select e.chain, e.sequence into broken from ledger.entries e
    where (select count(*) from ledger.postings p where p.entry_id = e.entry_id) <> 4
       or not exists (select from ledger.priced_archive a where a.priced_id = e.priced_id)
    limit 1;
    if found then
        raise exception 'chain % sequence % has not four legs and an archived Priced', broken.chain, broken.sequence;
    end if;
end $$;

insert into ledger.journal (priced_id, sequence, event_time, posted_at, tokens, chain, money_debit, money_credit, amount,
                            tokens_debit, tokens_credit, entry_hash, priced)
select e.priced_id, e.sequence, e.event_time, e.posted_at, legs.tokens, e.chain, legs.money_debit, legs.money_credit,
       legs.amount, legs.tokens_debit, legs.tokens_credit, decode(e.entry_hash, 'hex'), a.payload
from ledger.entries e
join ledger.priced_archive a using (priced_id)
join lateral (
    select max(p.account) filter (where p.leg = 0) as money_debit,
           max(p.account) filter (where p.leg = 1) as money_credit,
           max(p.debit) filter (where p.leg = 0) as amount,
           max(p.account) filter (where p.leg = 2) as tokens_debit,
           max(p.account) filter (where p.leg = 3) as tokens_credit,
           max(p.debit) filter (where p.leg = 2)::bigint as tokens,
           bool_and(case p.leg
               when 0 then p.ledger = 'money' and p.credit = 0
               when 1 then p.ledger = 'money' and p.debit = 0
               when 2 then p.ledger = 'tokens' and p.credit = 0
               else p.ledger = 'tokens' and p.debit = 0 end)
           and max(p.debit) filter (where p.leg = 0) = max(p.credit) filter (where p.leg = 1)
           and max(p.debit) filter (where p.leg = 2) = max(p.credit) filter (where p.leg = 3) as transfer_form
    from ledger.postings p where p.entry_id = e.entry_id
) as legs on legs.transfer_form
order by e.chain, e.sequence;

do $$
begin
    if (select count(*) from ledger.journal) <> (select count(*) from ledger.entries)
       or (select count(*) from ledger.journal) <> (select count(*) from ledger.priced_archive) then
        raise exception 'not every entry is in transfer form with its archived Priced; nothing was changed';
    end if;
end $$;

drop table ledger.postings;
drop table ledger.entries;
drop table ledger.priced_archive;
drop function ledger.check_postings_balanced();
drop function ledger.check_entries_archived();
drop function ledger.refuse_archive_change();
drop function ledger.refuse_journal_change();
drop function ledger.refuse_posting_change();
