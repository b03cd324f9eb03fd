-- Two indexes that no query reads, dropped: each was a btree insert per row on
-- the hot path (242,000 rows per 200,000 usage events in `tokenhub bench`).
-- ledger.entries_posted_at: entries are selected by event time, payer, chain or
-- priced id, never by posting time (posted_at is read as a value only).
-- pricing.priced_consumed: every lookup by consumption is of the current Priced
-- (reprice), which the partial index priced_current serves.
drop index ledger.entries_posted_at;
drop index pricing.priced_consumed;
