-- Usage posted while its payer's quota was exhausted is kept in running totals
-- of its own kind, so invoices show it as overage lines; it is summed into the
-- totals like any charge (a mark, never a second charge).
alter table invoicing.line_totals drop constraint line_totals_kind_check;
alter table invoicing.line_totals add constraint line_totals_kind_check
    check (kind in ('charge', 'overage', 'reversal', 'period_tier'));
