-- The outbox holds one row per staged batch, its events as parallel arrays,
-- instead of one row per event. Under load the per-event rows cost an insert,
-- a claim and a delete each, and the relay's claim walked past thousands of dead
-- rows between vacuums (the busiest statement of the whole pipeline). A batch of
-- a thousand events is now one insert and one delete. The arrays are stored
-- out of line without compression: they are written once and read once, and
-- compressing them would cost more CPU than the bytes it saves.
do $$
declare
    service text;
begin
    foreach service in array array['metering', 'pricing', 'ledger', 'invoicing'] loop
        execute format('create table %I.outbox_batches (
            seq bigserial primary key,
            topics text[] not null,
            keys bytea[] not null,
            "values" bytea[] not null,
            created_at timestamptz not null default now(),
            check (cardinality(topics) = cardinality(keys) and cardinality(keys) = cardinality("values"))
        )', service);
        execute format('alter table %I.outbox_batches alter column keys set storage external,
            alter column "values" set storage external', service);
        -- Rows staged before this migration keep their order, as one batch.
        execute format('insert into %I.outbox_batches (topics, keys, "values")
            select array_agg(topic order by seq), array_agg(key order by seq), array_agg(value order by seq)
            from %I.outbox having count(*) > 0', service, service);
        execute format('drop table %I.outbox', service);
        execute format('alter table %I.outbox_batches rename to outbox', service);
        execute format('alter table %I.outbox set (autovacuum_vacuum_scale_factor = 0,
            autovacuum_vacuum_threshold = 200, autovacuum_vacuum_cost_delay = 0)', service);
    end loop;
end $$;
