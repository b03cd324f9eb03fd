-- Metering's record is what it produced: each TokenConsumed, one row, stored as
-- the canonical bytes it published (docs/architecture.md decision 11). The row
-- is keyed by its usage's source + id, and that key is metering's dedup, so the
-- separate table of dedup keys goes; pricing's copy of every TokenConsumed goes
-- too (migration 0018). Replay, restore and the republish after a broker loss
-- read this table; the outbox relays the same bytes.
--
-- A usage event split among several payers has one row per payer. Only its
-- first row (the lowest payer index) carries the usage's content hash, and only
-- those rows are in the unique index: a copy of the event with other content,
-- however it would split, meets the same key and is refused as a conflicting
-- duplicate, while the other payers' rows cost no index entry at all.
-- `usage_value`, on the first row of usage that came over HTTP, is the bytes
-- metering published on usage.reported for it (migration 0016).
create table metering.consumed (
    seq bigint generated always as identity,
    usage_source text not null,
    usage_id text not null,
    content_sha256 bytea,
    usage_value bytea,
    payload bytea not null,
    check (usage_value is null or content_sha256 is not null)
);
-- metering.consumed_usage: the idempotency key, read by every batch's claim
-- (insert ... on conflict, then the stored hash of the keys seen before).
create unique index consumed_usage on metering.consumed (usage_source, usage_id) where content_sha256 is not null;
-- metering.consumed_seq: production order, for the republish after a broker
-- loss (produced_records reads seq ranges in order). Rows are appended in seq
-- order, so a block range index of a few pages answers it; a btree would cost
-- an index entry per row for a query that runs only at recovery.
create index consumed_seq on metering.consumed using brin (seq) with (autosummarize = on);
-- As the archives it replaces (migration 0014): analysed from 100,000 changed rows on.
alter table metering.consumed set (autovacuum_analyze_threshold = 100000);

-- What the current release stored, in the order it was produced: pricing's
-- archive of every TokenConsumed it received, then what metering staged and has
-- not relayed yet (its outbox), each event once. The content hash comes from
-- the dedup key; a key pruned after the accepted window leaves an empty hash,
-- which no copy can match (such a copy is too old to be accepted anyway).
-- Keys without any stored TokenConsumed are not carried over: their
-- consumption never reached pricing, so a producer's re-send is metered anew
-- (its TokenConsumed has the same id, which pricing recognises).
insert into metering.consumed (usage_source, usage_id, content_sha256, usage_value, payload)
select produced.usage_source, produced.usage_id,
       case when produced.first then coalesce(decode(dedup.content_sha256, 'hex'), '\x'::bytea) end,
       case when produced.first then dedup.usage_value end,
       produced.payload
from (
    select event.*, row_number() over (partition by event.usage_source, event.usage_id
                                       order by event.payer_index, event.consumed_id) = 1 as first
    from (
        select distinct on (consumed_id) consumed_id, usage_source, usage_id, payer_index, payload, produced_at, staged_seq
        from (
            select document ->> 'id' as consumed_id, document ->> 'usage_source' as usage_source,
                   document ->> 'usage_id' as usage_id, coalesce((document ->> 'payer_index')::int, 0) as payer_index,
                   payload, produced_at, staged_seq
            from (
                select convert_from(payload, 'UTF8')::jsonb as document, payload, received_at as produced_at,
                       0::bigint as staged_seq
                from pricing.consumed_archive
                union all
                select convert_from(staged.value, 'UTF8')::jsonb, staged.value, outbox.created_at, outbox.seq
                from metering.outbox outbox, unnest(outbox.topics, outbox."values") as staged(topic, value)
                where staged.topic = 'tokens.consumed'
            ) stored
        ) parsed
        order by consumed_id, produced_at, staged_seq
    ) event
) produced
left join metering.dedup dedup using (usage_source, usage_id)
order by produced.produced_at, produced.staged_seq, produced.usage_source, produced.usage_id, produced.payer_index;

drop table metering.dedup;

-- A rejection's stored time is the time of the UsageRejected published for it,
-- so what metering produced can be published again byte for byte.
comment on column metering.rejected_usage.received_at is 'event time of the UsageRejected published for this row';
