"""The services' connection pool and the insert helper their adapters share.
Within a service, SQL lives in its adapters/ (handlers hand them a connection
and never run a statement themselves); read-only tools and boot open their own."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final

import asyncpg
import orjson

POOL_SIZE_MAX: Final = 8
"""Per process: two cores cannot use more concurrent transactions than this."""

COMMAND_TIMEOUT_S: Final = 60


JSONB_VERSION: Final = b"\x01"
"""jsonb's binary wire form is a version byte, then the JSON text."""


def _encode_jsonb(value: Any) -> bytes:
    """JSON that is already bytes (an event as received, validated by its
    consumer) goes to jsonb as it is, without a parse and a dump per row."""
    if isinstance(value, bytes | bytearray):
        return JSONB_VERSION + value
    return JSONB_VERSION + orjson.dumps(value)


def _decode_jsonb(data: bytes) -> Any:
    if data[:1] != JSONB_VERSION:
        raise ValueError(f"jsonb in an unknown binary version {data[:1]!r}")
    return orjson.loads(data[1:])


async def _init_connection(connection: asyncpg.Connection) -> None:
    # Binary, so that COPY (binary only in asyncpg) can write jsonb columns too.
    await connection.set_type_codec("jsonb", encoder=_encode_jsonb, decoder=_decode_jsonb, schema="pg_catalog",
                                    format="binary")


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


@asynccontextmanager
async def pooled(database_url: str, *, size_max: int = POOL_SIZE_MAX) -> AsyncIterator[asyncpg.Pool]:
    """A pool for one piece of work (a command, a tool's read), closed after it."""
    pool = await create_pool(database_url, size_max=size_max)
    try:
        yield pool
    finally:
        await pool.close()


async def insert_new(connection: asyncpg.Connection, *, schema: str, table: str, columns: Sequence[str],
                     records: list[tuple[Any, ...]], key_columns: int, fallback_sql: str) -> set[Any]:
    """Insert rows some of which may be stored already (redeliveries, retries),
    inside the caller's transaction, and return the keys of the rows inserted
    now: the first `key_columns` values of a record (one value, or a tuple).

    COPY first, in a savepoint: nearly every batch is new, and COPY costs
    PostgreSQL about a third less than `insert ... select * from unnest(...)`.
    A key already there fails the COPY with a unique violation; the savepoint is
    rolled back and `fallback_sql` (that insert, `on conflict do nothing
    returning` the key columns, taking one array per column) inserts the rest."""
    if not records:
        return set()
    try:
        async with connection.transaction():  # a savepoint within the caller's transaction
            await connection.copy_records_to_table(table, schema_name=schema, columns=list(columns), records=records)
    except asyncpg.UniqueViolationError:
        rows = await connection.fetch(fallback_sql, *(list(values) for values in zip(*records, strict=True)))
        return {row[0] for row in rows} if key_columns == 1 else {tuple(row) for row in rows}
    return {record[0] for record in records} if key_columns == 1 else {record[:key_columns] for record in records}
