-- Usage that arrives over HTTP is metered at once and also published on
-- usage.reported through metering's outbox, so that a replay of the topic sees
-- all usage. Its idempotency key keeps the bytes metering published: they are
-- the durable record of that usage until the topic has it, and they let the
-- consumer recognise the copy that comes back from the topic as this event,
-- not as a duplicate someone sent. Null for usage that arrived on the topic.
alter table metering.dedup add column usage_value bytea;
