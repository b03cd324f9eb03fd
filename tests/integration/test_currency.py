"""One settlement currency per deployment (issue 16, hole 2): recorded in the
database when the stack is first initialised, read from there by every process
and the CLI whatever a terminal's environment says, a change refused once money
has been priced, and a price book in another currency refused by pricing and
kept with its reason."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from urllib.parse import urlparse, urlunparse

import asyncpg
import pytest

from tokenhub.infra.deployment import adopt_recorded_currency
from tokenhub.contracts.canonical import canonical_json
from tokenhub.contracts.pricebook import book_from_document
from tokenhub.contracts.topics import DEAD_LETTER, PRICEBOOK_PUBLISHED
from tokenhub.infra.deployment import CurrencyLocked, record_currency, recorded_currency
from tokenhub.infra.migrate import migrate
from tokenhub.infra.pipeline import wait_until
from tokenhub.infra.settings import Settings
from tokenhub.services.common.kafka import send_events
from tests.integration.support import World, delta, published_values, read_counters

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture
async def fresh_database(backend) -> AsyncIterator[str]:
    name = f"currency_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(backend.settings.database_url)
    try:
        await admin.execute(f"create database {name}")
    finally:
        await admin.close()
    url = urlunparse(urlparse(backend.settings.database_url)._replace(path=f"/{name}"))
    await migrate(url)
    try:
        yield url
    finally:
        admin = await asyncpg.connect(backend.settings.database_url)
        try:
            await admin.execute(f"drop database {name} with (force)")
        finally:
            await admin.close()


async def test_the_currency_is_recorded_once_and_cannot_change_after_money_is_priced(fresh_database: str) -> None:
    assert await recorded_currency(fresh_database) is None
    assert await record_currency(fresh_database, Settings(currency="USD")) == "USD"
    # A later start without the setting, or with the default, keeps what was recorded.
    assert await record_currency(fresh_database, Settings()) == "USD"
    # Before any money is priced, an explicit change is taken.
    assert await record_currency(fresh_database, Settings(currency="EUR")) == "EUR"
    connection = await asyncpg.connect(fresh_database)
    try:
        await connection.execute(
            "insert into pricing.priced (priced_id, kind, event_time, model, request_input_tokens, payload) "
            "values ($1, 'charge', now(), 'qwen-max', 1, '{}')", uuid.uuid4())
    finally:
        await connection.close()
    with pytest.raises(CurrencyLocked, match="settlement currency is EUR and money has been priced"):
        await record_currency(fresh_database, Settings(currency="USD"))
    assert await recorded_currency(fresh_database) == "EUR"
    assert await record_currency(fresh_database, Settings(currency="EUR")) == "EUR"


async def test_a_terminal_with_another_currency_uses_the_recorded_one(backend, monkeypatch: pytest.MonkeyPatch) -> None:
    recorded = await recorded_currency(backend.settings.database_url)
    assert recorded == "CNY"  # the test stack was initialised with the default
    monkeypatch.setenv("TOKENHUB_CURRENCY", "USD")
    monkeypatch.setenv("TOKENHUB_DATABASE_URL", backend.settings.database_url)
    monkeypatch.setenv("TOKENHUB_BOOTSTRAP_SERVERS", backend.settings.bootstrap_servers)
    terminal = Settings()
    assert terminal.currency == "USD"
    # The CLI's entry point does this before any command, outside an event loop.
    assert (await asyncio.to_thread(adopt_recorded_currency, terminal)).currency == "CNY"
    assert Settings().currency == "CNY"  # and every later read of the settings in this process


async def test_pricing_refuses_a_book_in_another_currency_and_keeps_it_with_its_reason(backend) -> None:
    world = World(backend.settings)
    await world.publish(["shop"])
    before = await read_counters(world.settings)
    book = book_from_document({"book_id": f"{world.prefix}-usd", "version": 1, "currency": "USD",
                       "effective_from": (datetime.now(UTC) - timedelta(days=1)).isoformat(),
                       "models": [{"model": world.model, "unit_prices_per_million": {"input": "1", "output": "2"}}]},
                              actor="tests", reason="a list in dollars", retroactive=True, published_at=datetime.now(UTC))
    await send_events(world.settings.bootstrap_servers, PRICEBOOK_PUBLISHED.name,
                      [(book.book_id.encode(), canonical_json(book))], settings=world.settings)

    async def refused() -> bool:
        return delta(await read_counters(world.settings), before, "pricing.books_refused") == 1
    await wait_until(refused, 60, "pricing to refuse the book in USD")
    connection = await asyncpg.connect(world.settings.database_url)
    try:
        rows = await connection.fetch("select version, payload, reason from pricing.refused_books where book_id = $1",
                                      book.book_id)
        stored = await connection.fetchval("select count(*) from pricing.price_books where book_id = $1", book.book_id)
    finally:
        await connection.close()
    assert [(row["version"], bytes(row["payload"]), row["reason"]) for row in rows] == [
        (1, canonical_json(book), f"book {book.book_id} v1 is in USD; the settlement currency is CNY "
                                  "(import a foreign list with an explicit rate)")]
    assert stored == 0
    assert delta(await read_counters(world.settings), before, "pricing.books") == 0
    # And on the dead-letter topic, with its reason, as bad usage is.
    (dead,) = await published_values(world.settings.bootstrap_servers or "", DEAD_LETTER.name, book.book_id.encode(), 1)
    assert dead == canonical_json(book)
