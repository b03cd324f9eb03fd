-- The account index cost a third of the ledger's insert time (four legs per
-- entry, a few thousand distinct accounts, each leg a btree insert into a long
-- run of duplicates) and served only ad-hoc reads: balances come from the
-- projection, statements and as-of figures select entries by time or BU first
-- (entries_event_time, entries_posted_at, entries_payer) and reach their legs by
-- the postings primary key.
drop index ledger.postings_account;
