"""`tokenhub.audit`: the auditor's own recomputation, deliberately independent
of the services' code (docs/architecture.md, "Ledger, replay and audit").

Events and stored rows are read as plain JSON with exact numbers, balances are
summed, prices recomputed, hashes and invariants checked here, with none of
metering's, pricing's, the ledger's or invoicing's code, so a bug in a
service shows up as a difference instead of being repeated. Only `contracts`
(topic names, the chart of accounts, the time parser) and the connection
settings of `services.common` (Kafka security, the database pool) are shared.

- `log`: reading topics and events as an auditor does
- `balances`: balances rebuilt from Priced events or from account totals
- `reprice`: every Priced recomputed from its TokenConsumed and book version
- `replay`: balances rebuilt from the log or the archive, against the ledger's
- `verify`: the hash chains and the invariants 1-6 of docs/architecture.md
- `statement`: the entries behind a business unit's balance
- `restore`: a ledger rebuilt into an empty database; the one exception, it
  posts through the ledger's own shell because it rebuilds rather than judges
"""
