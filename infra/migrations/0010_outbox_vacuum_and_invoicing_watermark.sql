-- Outbox rows live for milliseconds: inserted with a batch, deleted once the
-- broker has them. Left to the default autovacuum (20 % of a table that is
-- nearly always empty), tens of thousands of dead rows piled up in front of the
-- relay's `order by seq limit n`, and claiming cost 40 ms a call under load.
-- Vacuum them as soon as a few thousand have gone.
alter table metering.outbox set (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 2000,
    autovacuum_vacuum_cost_delay = 0, autovacuum_analyze_scale_factor = 0, autovacuum_analyze_threshold = 2000);
alter table pricing.outbox set (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 2000,
    autovacuum_vacuum_cost_delay = 0, autovacuum_analyze_scale_factor = 0, autovacuum_analyze_threshold = 2000);
alter table ledger.outbox set (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 2000,
    autovacuum_vacuum_cost_delay = 0, autovacuum_analyze_scale_factor = 0, autovacuum_analyze_threshold = 2000);
alter table invoicing.outbox set (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 2000,
    autovacuum_vacuum_cost_delay = 0, autovacuum_analyze_scale_factor = 0, autovacuum_analyze_threshold = 2000);

-- Invoicing reads its event-time watermark after every batch: without an index
-- that was a scan of every posting it ever received.
create index postings_event_time on invoicing.postings (event_time);
