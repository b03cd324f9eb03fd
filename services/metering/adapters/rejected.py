"""Rejected usage sent back by a person: who resubmitted it, when and why is
kept with the stored original (metering validates the resubmitted copy again)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Final

import asyncpg

MARK_RESUBMITTED: Final = """
update metering.rejected_usage set resubmitted_at = $2, resubmitted_by = $3 where rejected_id = $1
"""


async def mark_resubmitted(pool: asyncpg.Pool, rejected_id: uuid.UUID, at: datetime, by: str) -> None:
    async with pool.acquire() as connection:
        await connection.execute(MARK_RESUBMITTED, rejected_id, at, by)
