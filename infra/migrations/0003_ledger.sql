-- Ledger: double-entry journal (money and Tokens), the archive of Priced,
-- per-payer hash chains, the balances projection, offsets and the outbox.
create schema if not exists ledger;

create table ledger.priced_archive (
    priced_id uuid primary key,
    payload_sha256 text not null,
    payload bytea not null,
    received_at timestamptz not null default now()
);

create table ledger.chains (
    chain text primary key,
    sequence bigint not null,
    head_hash text not null
);

create table ledger.entries (
    entry_id uuid primary key,
    priced_id uuid not null unique references ledger.priced_archive (priced_id),
    kind text not null,
    corrects_id uuid,
    chain text not null,
    sequence bigint not null,
    payer_bu text not null,
    consumer_bu text not null,
    provider_bu text not null,
    app text,
    model text not null,
    amount numeric(38, 12) not null,
    tokens bigint not null,
    event_time timestamptz not null,
    posted_at timestamptz not null,
    entry_hash text not null,
    previous_hash text not null,
    payload bytea not null,
    unique (chain, sequence)
);
create index entries_event_time on ledger.entries (event_time);
create index entries_posted_at on ledger.entries (posted_at);
create index entries_payer on ledger.entries (payer_bu, event_time);

create table ledger.postings (
    entry_id uuid not null references ledger.entries (entry_id),
    leg smallint not null,
    ledger text not null check (ledger in ('money', 'tokens')),
    account text not null,
    debit numeric(38, 12) not null default 0 check (debit >= 0),
    credit numeric(38, 12) not null default 0 check (credit >= 0),
    check (debit = 0 or credit = 0),
    primary key (entry_id, leg)
);
create index postings_account on ledger.postings (account);

-- Debits equal credits per entry and ledger, enforced by the database at commit.
create function ledger.check_entry_balanced() returns trigger language plpgsql as $$
declare
    unbalanced record;
begin
    select ledger, sum(debit) - sum(credit) as difference into unbalanced
    from ledger.postings where entry_id = new.entry_id
    group by ledger having sum(debit) <> sum(credit) limit 1;
    if found then
        raise exception 'entry % is unbalanced in the % ledger by %', new.entry_id, unbalanced.ledger, unbalanced.difference;
    end if;
    return null;
end $$;

create constraint trigger postings_balanced after insert or update on ledger.postings
    deferrable initially deferred for each row execute function ledger.check_entry_balanced();

-- The projection: running totals per account, updated in the posting transaction.
create table ledger.balances (
    account text not null,
    ledger text not null,
    debit_total numeric(38, 12) not null default 0,
    credit_total numeric(38, 12) not null default 0,
    primary key (ledger, account)
);

-- Offsets are a hint for one broker: a new (empty) broker has another cluster id.
create table ledger.offsets (
    cluster_id text not null,
    topic text not null,
    kafka_partition integer not null,
    next_offset bigint not null,
    primary key (cluster_id, topic, kafka_partition)
);

create table ledger.alerts (
    alert_id uuid primary key,
    kind text not null,
    detail jsonb not null,
    raised_at timestamptz not null default now()
);

create table ledger.outbox (
    seq bigserial primary key,
    topic text not null,
    key bytea,
    value bytea not null,
    created_at timestamptz not null default now()
);

create table ledger.counters (name text primary key, value bigint not null);
