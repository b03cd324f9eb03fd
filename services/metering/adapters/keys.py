"""API keys for HTTP ingest: stored as SHA-256 only, bound to the sources they may report for."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Final

import asyncpg

KEY_PREFIX: Final = "thk"
SECRET_BYTES: Final = 24  # 192 bits: guessing is not an attack worth modelling

INSERT_KEY: Final = """
insert into metering.api_keys (key_id, key_sha256, sources, actor, reason) values ($1, $2, $3, $4, $5)
"""
SELECT_KEY: Final = "select key_id, sources from metering.api_keys where key_sha256 = $1 and revoked_at is null"
SELECT_KEYS: Final = """
select key_id, sources, actor, reason, created_at, revoked_at from metering.api_keys order by created_at
"""
REVOKE_KEY: Final = "update metering.api_keys set revoked_at = now() where key_id = $1 and revoked_at is null returning key_id"


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    sources: tuple[str, ...]


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> tuple[str, str]:
    """(key id, the key itself). The key is shown once and never stored."""
    key_id = secrets.token_hex(6)
    return key_id, f"{KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(SECRET_BYTES)}"


async def create(connection: asyncpg.Connection, sources: list[str], actor: str, reason: str) -> tuple[str, str]:
    key_id, key = new_key()
    await connection.execute(INSERT_KEY, key_id, digest(key), sources, actor, reason)
    return key_id, key


async def lookup(connection: asyncpg.Connection, key: str) -> ApiKey | None:
    row = await connection.fetchrow(SELECT_KEY, digest(key))
    return ApiKey(row["key_id"], tuple(row["sources"])) if row else None


async def revoke(connection: asyncpg.Connection, key_id: str) -> bool:
    return await connection.fetchval(REVOKE_KEY, key_id) is not None
