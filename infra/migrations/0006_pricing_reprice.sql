-- Repricing looks up the current Priced of each consumption by event time.
create index priced_current on pricing.priced (consumed_id) where superseded_by is null;
