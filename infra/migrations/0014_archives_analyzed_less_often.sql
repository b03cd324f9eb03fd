-- The tables that grow with every event are analysed from 100,000 changed rows
-- on, not from 50. By default autovacuum analyses a table once a tenth of it
-- has changed, plus 50 rows: a growing table is analysed again every few
-- seconds while it is small, and each analysis samples 30,000 rows and sorts
-- every column of them, payloads included. Over `tokenhub bench --events 40000`
-- that was 61 analyses of these seven tables and 7.4 s of PostgreSQL's CPU, a
-- third of all it used. Their reads by key or by range go through indexes, and
-- PostgreSQL finds a range's actual ends in the index; the audit's full scans
-- are planned on row counts, which the vacuums after inserts keep current.
-- Once a table has a million rows its tenth governs again, as by default.
do $$
declare
    grown text;
begin
    foreach grown in array array['metering.dedup', 'pricing.consumed_archive', 'pricing.priced',
                                 'ledger.priced_archive', 'ledger.entries', 'ledger.postings',
                                 'invoicing.postings'] loop
        execute format('alter table %s set (autovacuum_analyze_threshold = 100000)', grown);
    end loop;
end $$;
