"""Issuing and revoking API keys (for `tokenhub apikey`): a key is shown once,
only its SHA-256 is stored, and every key names its owner, role and reason."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

from tokenhub.api.access import Role, digest, new_key
from tokenhub.api.adapters import store
from tokenhub.contracts.ids import check_slug


class KeyNotIssued(ValueError):
    """A key cannot be issued as asked."""


async def create(connection: asyncpg.Connection, role: str, bu: str | None, owner: str, reason: str, now: datetime,
                 expires_at: datetime | None) -> tuple[str, str]:
    """(key id, key)."""
    try:
        chosen = Role(role)
    except ValueError:
        raise KeyNotIssued(f"role {role!r}: one of {', '.join(item.value for item in Role)}") from None
    if (chosen is Role.BU_READER) != (bu is not None):
        raise KeyNotIssued("a bu-reader key names its business unit (--bu), and only a bu-reader key does")
    if bu is not None:
        check_slug(bu)
    if expires_at is not None and expires_at <= now:
        raise KeyNotIssued(f"--expires {expires_at.isoformat()} is not in the future")
    if not owner.strip() or not reason.strip():
        raise KeyNotIssued("a key names its owner and the reason it is issued")
    key_id, key = new_key()
    await store.insert_key(connection, key_id, digest(key), chosen, bu, owner, reason, now, expires_at)
    return key_id, key


async def listing(connection: asyncpg.Connection) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    after = None
    while True:
        page = await store.list_keys(connection, after, 1_000)
        rows += page
        if len(page) < 1_000:
            return rows
        after = (page[-1]["created_at"], page[-1]["key_id"])


async def revoke(connection: asyncpg.Connection, key_id: str, at: datetime, by: str) -> bool:
    return await store.revoke_key(connection, key_id, at, by)
