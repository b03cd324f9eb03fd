"""`tokenhub.views`: how Token Hub's figures read for people and tools, shared
by the CLI, the HTTP API and the pages. Times in the company's zone, money
rounded for reading only, tables, invoices as text, CSV and HTML, balances,
statements, settlements, the auditor's reports, the stack's status, the demo's
and the benchmark's reports, and the JSON documents with their schemas.

Pure functions from domain and contract types to text: no I/O, no clock, and
nothing here imports `tokenhub.cli` (the CLI imports this, as the API does)."""
