-- Every leg belongs to an entry and every entry to an archived Priced, checked
-- once per INSERT statement over the rows it added instead of by a foreign key.
-- A foreign key runs a lookup and takes a row lock on the referenced row for
-- each inserted row: four per entry for the legs, one for the entry, and the
-- locks are writes. The ledger inserts a batch's entries and legs in one
-- statement each, so one set-based check per statement sees the same rows.
-- What a foreign key also prevented, deleting the referenced row, is refused
-- outright: entries were already append-only and the archive of Priced, the
-- auditor's log, now is too.
alter table ledger.postings drop constraint postings_entry_id_fkey;
alter table ledger.entries drop constraint entries_priced_id_fkey;

create or replace function ledger.check_postings_balanced() returns trigger language plpgsql as $$
declare
    unbalanced record;
    orphan uuid;
begin
    select entry_id, ledger, sum(debit) - sum(credit) as difference into unbalanced
    from added group by entry_id, ledger having sum(debit) <> sum(credit) limit 1;
    if found then
        raise exception 'entry % is unbalanced in the % ledger by %', unbalanced.entry_id, unbalanced.ledger,
            unbalanced.difference;
    end if;
    select legs.entry_id into orphan from (select distinct entry_id from added) legs
    where not exists (select from ledger.entries e where e.entry_id = legs.entry_id) limit 1;
    if found then
        raise exception 'postings of entry %, which is not in the journal', orphan using errcode = 'foreign_key_violation';
    end if;
    return null;
end $$;

create function ledger.check_entries_archived() returns trigger language plpgsql as $$
declare
    missing uuid;
begin
    select a.priced_id into missing from added a
    where not exists (select from ledger.priced_archive p where p.priced_id = a.priced_id) limit 1;
    if found then
        raise exception 'entry for Priced %, which is not in the archive', missing using errcode = 'foreign_key_violation';
    end if;
    return null;
end $$;

create trigger entries_archived after insert on ledger.entries
    referencing new table as added for each statement execute function ledger.check_entries_archived();

create function ledger.refuse_archive_change() returns trigger language plpgsql as $$
begin
    raise exception 'ledger.priced_archive is append-only: it is the log balances are rebuilt from';
end $$;

create trigger priced_archive_append_only before update or delete or truncate on ledger.priced_archive
    for each statement execute function ledger.refuse_archive_change();
