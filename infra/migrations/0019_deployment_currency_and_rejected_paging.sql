-- The deployment's one settlement currency, recorded when the stack is first
-- initialised (infra/deployment.py) and read from here by every process and
-- the CLI, never from one terminal's environment (docs/architecture.md decision 4).
create table public.tokenhub_deployment (
    singleton boolean primary key default true check (singleton),
    currency text not null check (currency ~ '^[A-Z]{3}$'),
    recorded_at timestamptz not null default now(),
    recorded_by text not null
);

-- Price book versions pricing refused (a currency other than the deployment's),
-- with the reason: stored, never used to price.
create table pricing.refused_books (
    book_id text not null,
    version integer not null,
    payload bytea not null,
    reason text not null,
    refused_at timestamptz not null default now(),
    primary key (book_id, version, refused_at)
);

-- `tokenhub rejected list` pages through rejected usage in order of arrival,
-- all of it (rejected_usage_received) or of one reason (rejected_usage_reason,
-- which replaces the index on the reason alone), so a flood of one reason can be read.
drop index metering.rejected_usage_reason;
create index rejected_usage_reason on metering.rejected_usage (reason_code, received_at, rejected_id);
create index rejected_usage_received on metering.rejected_usage (received_at, rejected_id);
