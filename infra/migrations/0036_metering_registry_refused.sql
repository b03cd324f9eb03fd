-- Registry changes metering refused (an unknown business unit or Token class,
-- shares not summing to 100 %, a payload that is no registry change...), one row
-- per change id with its reason and the original bytes: the change's outcome,
-- decided once, so a redelivered change keeps it. Applied changes are in
-- metering.registry_changes; a change id is in one table or the other.
create table metering.registry_refused (
    change_id uuid primary key,
    kind text,            -- null when the bytes hold no registry change
    entity_id text,
    reason text not null,
    original_bytes bytea not null,
    topic text not null,
    kafka_partition integer,
    kafka_offset bigint,
    refused_at timestamptz not null
);
create index registry_refused_at on metering.registry_refused (refused_at, change_id);
