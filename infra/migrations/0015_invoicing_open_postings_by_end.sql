-- Invoicing asks after every batch which periods are due: the open postings
-- whose period ended before the watermark's horizon, of every payer. The
-- index postings_open leads with the payer, so answering read every open
-- posting's index entry, after every batch: a month's postings, all month.
-- Measured on PostgreSQL 18 with 300 payers and 300,000 open postings, none
-- due: 304 index pages and 1.3 ms per batch, growing with the month. Led by the
-- period's end, the question reads only the postings that are due, usually
-- none: 2 pages, 0.04 ms.
create index postings_open_by_end on invoicing.postings (period_end) where invoice_id is null;
