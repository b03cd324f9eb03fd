-- Debits = credits per entry and ledger, checked once per INSERT statement over
-- the rows it added (a transition table) instead of once per posting row: the
-- ledger writes each batch's legs in one statement, so every entry is whole
-- when it is checked, and a batch costs one check instead of four per entry.
drop trigger postings_balanced on ledger.postings;
drop function ledger.check_entry_balanced();

create function ledger.check_postings_balanced() returns trigger language plpgsql as $$
declare
    unbalanced record;
begin
    select entry_id, ledger, sum(debit) - sum(credit) as difference into unbalanced
    from added group by entry_id, ledger having sum(debit) <> sum(credit) limit 1;
    if found then
        raise exception 'entry % is unbalanced in the % ledger by %', unbalanced.entry_id, unbalanced.ledger,
            unbalanced.difference;
    end if;
    return null;
end $$;

create trigger postings_balanced after insert on ledger.postings
    referencing new table as added for each statement execute function ledger.check_postings_balanced();

-- Postings are never updated or deleted: corrections are new, reversing entries.
create function ledger.refuse_posting_change() returns trigger language plpgsql as $$
begin
    raise exception 'ledger postings are immutable: post a reversing entry instead';
end $$;

create trigger postings_immutable before update or delete on ledger.postings
    for each statement execute function ledger.refuse_posting_change();
