-- Pricing's record is what it produced: each Priced, one row, stored as the
-- canonical bytes it published (docs/architecture.md decision 11). A charge's
-- id is derived from its TokenConsumed's id alone (contracts.ids.priced_id), so
-- the primary key is keyed by the consumption: a redelivered TokenConsumed is
-- priced to the same id and refused here, which makes the key pricing's dedup.
-- Reversals and corrections name the book version that caused them.
--
-- Pricing no longer keeps a second copy of every TokenConsumed (metering's
-- record holds it, migration 0017): repricing rebuilds a consumption from its
-- Priced (Tokens per class, payer, model, event time) and the one figure a
-- Priced does not carry, the request's whole input, kept here because it
-- chooses the context tier. Parked consumption keeps its input, since it has no
-- output yet.
create table pricing.priced_record (
    seq bigint generated always as identity,
    priced_id uuid not null primary key,  -- pricing.priced_pkey (renamed below): the dedup of every insert
    kind text not null,
    event_time timestamptz not null,
    model text not null,
    request_input_tokens bigint not null,
    superseded_by uuid,
    payload bytea not null
);
-- pricing.priced_seq: production order, for the republish after a broker loss
-- (produced_records reads seq ranges in order); appended in seq order, so a
-- block range index answers it without an index entry per row.
create index priced_seq on pricing.priced_record using brin (seq) with (autosummarize = on);
-- pricing.priced_event_time: `tokenhub pricebook reprice` reads the current
-- Priced of an event-time window a page at a time. Usage arrives close to its
-- event time, so the ranges of event time per block are narrow.
create index priced_event_time on pricing.priced_record using brin (event_time) with (autosummarize = on);
alter table pricing.priced_record set (autovacuum_analyze_threshold = 100000);

insert into pricing.priced_record (priced_id, kind, event_time, model, request_input_tokens, superseded_by, payload)
select priced.priced_id, priced.kind, archive.event_time, archive.model,
       (convert_from(archive.payload, 'UTF8')::jsonb ->> 'request_input_tokens')::bigint, priced.superseded_by,
       priced.payload
from pricing.priced priced join pricing.consumed_archive archive using (consumed_id)
order by priced.priced_at, priced.priced_id;

alter table pricing.parked add column payload bytea;
update pricing.parked parked set payload = archive.payload
from pricing.consumed_archive archive where archive.consumed_id = parked.consumed_id;

do $$
begin
    if (select count(*) from pricing.priced_record) <> (select count(*) from pricing.priced) then
        raise exception 'a Priced whose TokenConsumed pricing did not archive: it cannot be repriced';
    end if;
    if exists (select from pricing.parked where payload is null) then
        raise exception 'parked consumption whose TokenConsumed pricing did not archive';
    end if;
end $$;

alter table pricing.parked alter column payload set not null;
alter table pricing.parked drop constraint parked_consumed_id_fkey;
drop table pricing.priced;
drop table pricing.consumed_archive;
alter table pricing.priced_record rename to priced;
alter index pricing.priced_record_pkey rename to priced_pkey;
