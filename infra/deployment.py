"""The deployment's settlement currency, recorded in the database when the stack
is first initialised and read from there by every process and the CLI
(docs/architecture.md decision 4), never from one terminal's environment.

`record_currency` runs at boot (`infra.boot.prepare`): the first time it stores
the currency the stack was initialised with; later a currency given explicitly
(TOKENHUB_CURRENCY) that differs is taken only while no money has been priced,
and refused once it has: amounts already posted would change their meaning.
`recorded_currency` is what every other process reads at start."""

from __future__ import annotations

import asyncio
import os
from typing import Final

import asyncpg
import structlog

from tokenhub.infra.settings import ENV_PREFIX, Settings, load_settings

log = structlog.get_logger()

_LOCK_KEY: Final = 0x63_75_72_72  # fixed, arbitrary: "curr"
SELECT_CURRENCY: Final = "select currency from public.tokenhub_deployment"
INSERT_CURRENCY: Final = """
insert into public.tokenhub_deployment (currency, recorded_by) values ($1, $2) on conflict (singleton) do nothing
"""
UPDATE_CURRENCY: Final = "update public.tokenhub_deployment set currency = $1, recorded_at = now(), recorded_by = $2"
# Money is priced once pricing has stored any Priced (its record, migration 0018).
MONEY_POSTED: Final = "select exists (select from pricing.priced)"
TABLE_EXISTS: Final = "select to_regclass('public.tokenhub_deployment') is not null"


class CurrencyLocked(RuntimeError):
    """A change of the settlement currency after money was priced in the one recorded."""


async def record_currency(database_url: str, settings: Settings, *, by: str = "tokenhub init") -> str:
    """Record the settlement currency at first initialisation; the currency in force."""
    requested = settings.currency
    explicit = "currency" in settings.model_fields_set
    connection = await asyncpg.connect(database_url)
    try:
        async with connection.transaction():
            await connection.execute("select pg_advisory_xact_lock($1)", _LOCK_KEY)
            recorded = await connection.fetchval(SELECT_CURRENCY)
            if recorded is None:
                await connection.execute(INSERT_CURRENCY, requested, by)
                log.info("currency_recorded", currency=requested)
                return requested
            if not explicit or requested == recorded:
                return recorded
            if await connection.fetchval(MONEY_POSTED):
                raise CurrencyLocked(f"the settlement currency is {recorded} and money has been priced in it; "
                                     f"it cannot become {requested} (unset TOKENHUB_CURRENCY to use {recorded})")
            await connection.execute(UPDATE_CURRENCY, requested, by)
            log.warning("currency_changed", currency=requested, was=recorded)
            return requested
    finally:
        await connection.close()


async def recorded_currency(database_url: str) -> str | None:
    """The recorded settlement currency; None before the stack is initialised."""
    connection = await asyncpg.connect(database_url)
    try:
        if not await connection.fetchval(TABLE_EXISTS):
            return None
        return await connection.fetchval(SELECT_CURRENCY)
    finally:
        await connection.close()


def adopt_recorded_currency(settings: Settings) -> Settings:
    """The deployment's recorded currency in place of this terminal's, for this
    process and every `load_settings` in it (docs/architecture.md decision 4).
    Without a reachable, initialised database, the settings stay as they are: a
    command that needs the database says so itself."""
    if not settings.database_url:
        return settings
    try:
        recorded = asyncio.run(recorded_currency(settings.database_url))
    except (OSError, asyncpg.PostgresError, asyncio.TimeoutError):
        return settings
    if recorded is None or recorded == settings.currency:
        return settings
    os.environ[f"{ENV_PREFIX}CURRENCY"] = recorded
    return load_settings()
