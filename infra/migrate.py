"""SQL migrations, applied in order and recorded; one schema per service.

Files are `NNNN_name.sql` in `infra/migrations/`. Each runs in its own
transaction under an advisory lock, so several instances starting at once
apply each migration exactly once. A changed file that was already applied
is an error: migrations are history, never edited.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import asyncpg
import structlog

MIGRATIONS_DIR: Final = Path(__file__).parent / "migrations"
_LOCK_KEY: Final = 0x70_6B_68_75_62  # arbitrary, fixed: "tokhub" migrations lock

_CREATE_TABLE: Final = """
create table if not exists public.tokenhub_migrations (
    name text primary key,
    checksum text not null,
    applied_at timestamptz not null default now()
)
"""

log = structlog.get_logger()


class MigrationError(RuntimeError):
    pass


@dataclass(frozen=True)
class Migration:
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    files = sorted(directory.glob("[0-9][0-9][0-9][0-9]_*.sql"))
    return [Migration(path.stem, path.read_text()) for path in files]


async def migrate(database_url: str, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply what is missing; return the names applied now."""
    connection = await asyncpg.connect(database_url)
    applied_now: list[str] = []
    try:
        await connection.execute("select pg_advisory_lock($1)", _LOCK_KEY)
        try:
            await connection.execute(_CREATE_TABLE)
            rows = await connection.fetch("select name, checksum from public.tokenhub_migrations")
            done = {row["name"]: row["checksum"] for row in rows}
            for migration in load_migrations(directory):
                if migration.name in done:
                    if done[migration.name] != migration.checksum:
                        raise MigrationError(f"migration {migration.name} changed after it was applied")
                    continue
                async with connection.transaction():
                    await connection.execute(migration.sql)
                    await connection.execute(
                        "insert into public.tokenhub_migrations (name, checksum) values ($1, $2)",
                        migration.name,
                        migration.checksum,
                    )
                applied_now.append(migration.name)
                log.info("migration_applied", migration=migration.name)
        finally:
            await connection.execute("select pg_advisory_unlock($1)", _LOCK_KEY)
    finally:
        await connection.close()
    return applied_now
