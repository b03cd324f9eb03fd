"""Rows that may be stored already are inserted with COPY, and with the
conflict-tolerant insert when one of them is: either way the caller learns
exactly which rows are new, and nothing stored before is touched."""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from tokenhub.services.common.db import insert_new

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_insert_new_returns_exactly_the_rows_stored_now(backend) -> None:  # noqa: ANN001
    table = f"insert_new_{uuid.uuid4().hex[:12]}"
    connection = await asyncpg.connect(backend.settings.database_url)
    columns = ("source", "id", "note")
    fallback = (f"insert into public.{table} (source, id, note) select * from unnest($1::text[], $2::text[], $3::text[]) "
                "on conflict do nothing returning source, id")

    async def insert(records: list[tuple[str, str, str]]) -> set:
        async with connection.transaction():
            return await insert_new(connection, schema="public", table=table, columns=columns, records=records,
                                    key_columns=2, fallback_sql=fallback)

    try:
        await connection.execute(f"create table public.{table} (source text, id text, note text, primary key (source, id))")
        assert await insert([("a", "1", "first"), ("a", "2", "first"), ("b", "1", "first")]) == {("a", "1"), ("a", "2"), ("b", "1")}
        assert await insert([("a", "1", "again"), ("c", "9", "new"), ("a", "2", "again"), ("c", "8", "new")]) == {("c", "9"), ("c", "8")}
        assert await insert([("d", "1", "one"), ("d", "1", "twice in one batch")]) == {("d", "1")}
        assert await insert([]) == set()
        rows = {(row["source"], row["id"]): row["note"] for row in await connection.fetch(f"select * from public.{table}")}
        assert rows == {("a", "1"): "first", ("a", "2"): "first", ("b", "1"): "first", ("c", "9"): "new", ("c", "8"): "new",
                        ("d", "1"): "one"}
    finally:
        await connection.execute(f"drop table if exists public.{table}")
        await connection.close()
