-- Payloads are stored zstd-compressed with a trained dictionary from now on
-- (contracts/stored.py, docs/architecture.md "Storage and durability"), so
-- PostgreSQL can no longer read a field inside a journal row's Priced. The one
-- query that asked it to, the apps a payer funded in a month when its quota
-- runs out (services/ledger/adapters/store.py SELECT_FUNDED), reads this column
-- instead. Rows written before it keep their Priced as raw JSON and no app here
-- (the query reads theirs from the JSON): adding a column without a default
-- rewrites nothing, and the journal is append-only.
alter table ledger.journal add column app text;
