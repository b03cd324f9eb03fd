-- Invoicing keeps running totals, not a copy of every posting (docs/architecture.md,
-- storage). Until now each LedgerPosted was stored whole (jsonb) with a row and four
-- index entries, and closing a period read and parsed every posting of it: about
-- 500 postings/s. Now a batch adds into totals per invoice-line key, and a close reads
-- the period's totals: its time depends on the number of lines, not of events.
--
-- Duplicates are recognised by the ledger's gapless sequence per chain: each chain's
-- applied-through sequence is its watermark, and a posting at or below it is a
-- duplicate. A posting ahead of a missing sequence waits (invoicing.waiting) until the
-- gap closes; invoicing logs `chain_gap_waiting` and `tokenhub`'s queries list them.
--
-- What credit notes need stays identifiable: a reversal names the charge it reverses,
-- whose invoice is its period's own, unless the charge came after that invoice was
-- issued (a late charge, kept here one by one: they are few).
--
-- Payloads are the canonical bytes that were published (bytea). Every index below names
-- the query it serves.

create table invoicing.chains (
    chain text primary key,             -- LOCK_CHAINS, UPDATE_CHAINS: by chain, once per batch
    sequence bigint not null,           -- every posting of the chain through this one is applied
    waiting integer not null,           -- postings of the chain waiting ahead of a gap
    latest_event_time timestamptz       -- the event-time watermark is the latest over the chains
) with (fillfactor = 70);               -- updated every batch: room for HOT updates

create table invoicing.waiting (
    chain text not null,
    sequence bigint not null,
    payload bytea not null,             -- the LedgerPosted as received
    received_at timestamptz not null,
    primary key (chain, sequence)       -- SELECT_WAITING and DELETE_WAITING, by chain
);

create table invoicing.line_totals (
    payer_bu text not null,
    period text not null,
    period_end timestamptz not null,
    kind text not null check (kind in ('charge', 'reversal', 'period_tier')),
    consumer_bu text not null,
    provider_bu text not null,
    app text,
    model text not null,
    token_class text not null,
    unit_price_per_million numeric(38, 12) not null,
    book_id text,
    book_version integer,
    tokens bigint not null,
    amount numeric(38, 12) not null,
    invoice_id uuid                     -- null while open; period tier adjustments arrive with theirs
) with (fillfactor = 70);
-- ADD_LINE_TOTALS (on conflict ... where invoice_id is null), once per batch; and a close's
-- and a draft's read of a payer's open totals (SELECT_OPEN_LINES, SELECT_PAYER_OPEN_LINES).
create unique index line_totals_open on invoicing.line_totals (payer_bu, period, kind, consumer_bu, provider_bu, app,
    model, token_class, unit_price_per_million, book_id, book_version) nulls not distinct where invoice_id is null;
-- SELECT_MONTH_FLOWS: a month's settlement reads the totals on the month's invoices.
create index line_totals_by_invoice on invoicing.line_totals (invoice_id) where invoice_id is not null;
-- SELECT_SPEND (month to date) and SELECT_PERIOD_TOKENS (a period's tier, re-evaluated):
-- a payer's totals of a month or period, on invoices or not.
create index line_totals_by_payer on invoicing.line_totals (payer_bu, period_end);

create table invoicing.chain_totals (
    payer_bu text not null,
    period text not null,
    period_end timestamptz not null,
    chain text not null,
    postings bigint not null,           -- an invoice's postings_count
    head_sequence bigint not null,      -- and the chain heads it prints
    head_hash text not null,
    invoice_id uuid
) with (fillfactor = 70);
-- ADD_CHAIN_TOTALS, once per batch; SELECT_OPEN_CHAINS and SELECT_PAYER_OPEN_CHAINS.
create unique index chain_totals_open on invoicing.chain_totals (payer_bu, period, chain) where invoice_id is null;
-- SELECT_DUE_PERIODS after every batch, and SELECT_OPEN_PAYER_PERIODS at a close: open
-- periods that ended by a time (see 0015: led by the end, it reads only what is due).
create index chain_totals_open_by_end on invoicing.chain_totals (period_end) where invoice_id is null;

create table invoicing.late_charges (
    priced_id uuid primary key,         -- MARK_CREDITED: the reversed charge, by its Priced id
    payer_bu text not null,
    period text not null,
    period_end timestamptz not null,
    invoice_id uuid
);
-- ASSIGN_LATE at a close.
create index late_charges_open on invoicing.late_charges (payer_bu, period_end) where invoice_id is null;

create table invoicing.reversals (
    priced_id uuid primary key,         -- INSERT_REVERSALS (on conflict do nothing)
    corrects_id uuid not null,
    payer_bu text not null,
    period text not null,
    period_end timestamptz not null,
    invoice_id uuid
);
-- ASSIGN_REVERSALS at a close.
create index reversals_open on invoicing.reversals (payer_bu, period_end) where invoice_id is null;

-- Every posting received so far goes into the new form. A chain is applied through the
-- end of its gapless run from sequence 1; anything above a gap waits for it, as a
-- posting arriving now would.
create function invoicing.canonical_text(value jsonb) returns text language plpgsql immutable strict as $$
-- The canonical JSON form (contracts.canonical: keys sorted, no whitespace, UTF-8) of a
-- jsonb value, whose own text form orders keys by length and adds spaces. Scalars print
-- as jsonb prints them: strings escaped as orjson escapes them, numbers as written.
declare
    result text;
begin
    case jsonb_typeof(value)
    when 'object' then
        select '{' || coalesce(string_agg(to_jsonb(entry.key)::text || ':' || invoicing.canonical_text(entry.item), ','
                                          order by entry.key collate "C"), '') || '}'
        into result from jsonb_each(value) as entry(key, item);
    when 'array' then
        select '[' || coalesce(string_agg(invoicing.canonical_text(element.item), ',' order by element.position), '') || ']'
        into result from jsonb_array_elements(value) with ordinality as element(item, position);
    else
        result := value::text;
    end case;
    return result;
end
$$;

do $$
begin
    if exists (select 1 from invoicing.postings where period_end is null) then
        raise exception 'invoicing.postings has rows without a period end (stored before migration 0007): '
                        'set their period_end before upgrading';
    end if;
end
$$;

insert into invoicing.chains (chain, sequence, waiting, latest_event_time)
select chain, coalesce(max(sequence) filter (where sequence = position), 0), count(*) filter (where sequence <> position),
       max(event_time)
from (select chain, sequence, event_time, row_number() over (partition by chain order by sequence) as position
      from invoicing.postings) as numbered
group by chain;

insert into invoicing.waiting (chain, sequence, payload, received_at)
select p.chain, p.sequence, convert_to(invoicing.canonical_text(p.payload), 'UTF8'), p.received_at
from invoicing.postings p join invoicing.chains c using (chain)
where p.sequence > c.sequence;

create temporary table applied on commit drop as
select p.* from invoicing.postings p join invoicing.chains c using (chain) where p.sequence <= c.sequence;

insert into invoicing.line_totals (payer_bu, period, period_end, kind, consumer_bu, provider_bu, app, model, token_class,
    unit_price_per_million, book_id, book_version, tokens, amount, invoice_id)
select p.payer_bu, p.period, p.period_end,
       case p.payload ->> 'kind' when 'adjustment' then 'period_tier' when 'reversal' then 'reversal' else 'charge' end,
       p.payload ->> 'consumer_bu', p.payload ->> 'provider_bu', p.payload ->> 'app', p.payload ->> 'model',
       line ->> 'token_class', (line ->> 'unit_price_per_million')::numeric, p.payload ->> 'book_id',
       (p.payload ->> 'book_version')::integer, sum((line ->> 'tokens')::bigint), sum((line ->> 'amount')::numeric),
       p.invoice_id
from applied p, jsonb_array_elements(p.payload -> 'lines') as line
group by 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 15;

insert into invoicing.chain_totals (payer_bu, period, period_end, chain, postings, head_sequence, head_hash, invoice_id)
select payer_bu, period, period_end, chain, count(*), max(sequence), (array_agg(entry_hash order by sequence desc))[1],
       invoice_id
from applied where payload ->> 'kind' <> 'adjustment'
group by payer_bu, period, period_end, chain, invoice_id;

-- Charges on an invoice of another period than their own came after their period's
-- invoice, as do open charges of a period that has an invoice.
insert into invoicing.late_charges (priced_id, payer_bu, period, period_end, invoice_id)
select (p.payload ->> 'priced_id')::uuid, p.payer_bu, p.period, p.period_end, p.invoice_id
from applied p join invoicing.invoices own on own.payer_bu = p.payer_bu and own.period = p.period
where p.payload ->> 'kind' in ('charge', 'correction') and p.invoice_id is distinct from own.invoice_id;

insert into invoicing.reversals (priced_id, corrects_id, payer_bu, period, period_end, invoice_id)
select (payload ->> 'priced_id')::uuid, (payload ->> 'corrects_id')::uuid, payer_bu, period, period_end, invoice_id
from applied where payload ->> 'kind' = 'reversal' and payload ? 'corrects_id';

drop table invoicing.postings;

-- Invoices and settlements as the canonical bytes that were published. An invoice's
-- period end gets its own column: a month's settlement selects its invoices by it.
alter table invoicing.invoices add column period_end timestamptz;
update invoicing.invoices set period_end = (payload ->> 'period_end')::timestamptz;
alter table invoicing.invoices alter column period_end set not null;
alter table invoicing.invoices alter column payload type bytea using convert_to(invoicing.canonical_text(payload), 'UTF8');
alter table invoicing.settlements alter column payload type bytea using convert_to(invoicing.canonical_text(payload), 'UTF8');
-- SELECT_MONTH_FLOWS and SELECT_MONTH_INVOICES: a month's invoices.
create index invoices_by_period_end on invoicing.invoices (period_end);

drop function invoicing.canonical_text(jsonb);
