"""Connection pools. asyncpg is used here and in each service's adapters only."""

from __future__ import annotations

from typing import Any, Final

import asyncpg
import orjson

POOL_SIZE_MAX: Final = 8
"""Per process: two cores cannot use more concurrent transactions than this."""

COMMAND_TIMEOUT_S: Final = 60


def _encode_json(value: Any) -> str:
    """JSON that is already bytes (an event as received, validated by its
    consumer) goes to jsonb as it is, without a parse and a dump per row."""
    if isinstance(value, bytes | bytearray):
        return value.decode()
    return orjson.dumps(value).decode()


async def _init_connection(connection: asyncpg.Connection) -> None:
    await connection.set_type_codec("jsonb", encoder=_encode_json, decoder=orjson.loads, schema="pg_catalog")


async def create_pool(database_url: str, *, size_max: int = POOL_SIZE_MAX) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        database_url,
        min_size=1,
        max_size=size_max,
        command_timeout=COMMAND_TIMEOUT_S,
        init=_init_connection,
    )
    if pool is None:  # pragma: no cover - asyncpg returns None only when not awaited
        raise RuntimeError("could not create a database pool")
    return pool
