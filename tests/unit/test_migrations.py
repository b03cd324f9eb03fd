"""Migration numbers are unique: they order the migrations, and two files with
one number run in an order nobody chose. One pair predates this rule and stays:
migrations are recorded by name, so renaming an applied one would apply it again
on every existing database."""

from __future__ import annotations

from collections import defaultdict
from typing import Final

from tokenhub.infra.migrate import MIGRATIONS_DIR, load_migrations

HISTORICAL_DUPLICATES: Final = {"0007": {"0007_invoicing_cycles", "0007_ledger_budgets_audit"}}


def test_migration_numbers_are_unique() -> None:
    by_number: dict[str, set[str]] = defaultdict(set)
    for migration in load_migrations():
        by_number[migration.name[:4]].add(migration.name)
    shared = {number: names for number, names in by_number.items() if len(names) > 1}
    assert shared == HISTORICAL_DUPLICATES, f"migration numbers used twice: {shared}; give each new migration its own"


def test_every_file_in_the_folder_is_a_migration() -> None:
    """A file the loader's pattern skips would silently never run."""
    names = {path.stem for path in MIGRATIONS_DIR.iterdir() if path.suffix == ".sql"}
    assert names == {migration.name for migration in load_migrations()}
