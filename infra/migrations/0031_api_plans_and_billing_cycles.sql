-- Plans and billing cycles through the API: an admin key assigns and ends plans and
-- sets a payer's billing cycle with the same invoicing functions the CLI calls
-- (`services.invoicing.handlers.assign_plan`, `end_plan`, `set_cycle`), as the API's
-- role `tokenhub_api`. It gets what those functions touch and nothing more: reading
-- plans, cycles and price books, adding plans, ending them (the end columns only),
-- and setting cycles. The reason these two are written directly rather than
-- published as events: invoicing keeps them in its own tables only, as the CLI does.
grant usage on schema invoicing to tokenhub_api;
grant select on invoicing.plans, invoicing.billing_cycles, invoicing.price_books to tokenhub_api;
grant insert on invoicing.plans to tokenhub_api;
grant update (last_month, ended_by, end_reason, ended_at) on invoicing.plans to tokenhub_api;
grant insert, update (kind, actor, reason, changed_at) on invoicing.billing_cycles to tokenhub_api;

-- Assigning and ending a plan take turns with closes: both lock invoicing.invoices in
-- share row exclusive mode. PostgreSQL 17 and later let a role take that lock with
-- MAINTAIN, which changes no row; PostgreSQL 16 (docker-compose's and the
-- testcontainers tier's) needs a table-level UPDATE for it, so there the API's role
-- could in principle rewrite an invoice; it has no code that does.
do $$
begin
    if current_setting('server_version_num')::integer >= 170000 then
        execute 'grant maintain on invoicing.invoices to tokenhub_api';
    else
        execute 'grant update on invoicing.invoices to tokenhub_api';
    end if;
end $$;
