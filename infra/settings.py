"""Settings from environment variables, or from the state folder of the local
stack that `tokenhub up` started (`.tokenhub/stack.env`)."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, Literal

from pydantic import AwareDatetime, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX: Final = "TOKENHUB_"
STATE_DIR_DEFAULT: Final = Path(".tokenhub")
STACK_ENV_FILE: Final = "stack.env"


class StackNotFound(RuntimeError):
    """No broker or database configured and no local stack running."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    bootstrap_servers: str | None = Field(None, description="Kafka bootstrap servers, host:port[,host:port]")
    database_url: str | None = Field(None, description="PostgreSQL URL (asyncpg)")
    state_dir: Path = STATE_DIR_DEFAULT
    currency: str = Field("CNY", pattern=r"^[A-Z]{3}$", description="the one settlement currency")
    currency_minor_units: int = Field(2, ge=0, le=4)
    timezone: str = "Asia/Shanghai"
    accepted_window_days: int = Field(35, ge=1, le=400, description="oldest event time metering accepts")
    future_skew_seconds: int = Field(300, ge=0, le=3600, description="how far in the future an event time may be")
    message_bytes_max: int = Field(64 * 1024, ge=1024, description="largest usage message accepted")
    allowed_lateness_hours: int = Field(48, ge=0, description="how long after a period's end it stays open")
    instance_index: int = Field(0, ge=0, description="this instance's index among its service's instances")
    instance_count: int = Field(1, ge=1)
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    metrics_port: int | None = None
    log_level: str = "INFO"
    log_format: Literal["auto", "json", "console"] = "auto"
    now: AwareDatetime | None = Field(None, description="an injected clock: fixes 'now' for demos and tests")
    fault_point: str | None = Field(None, description="test-only: crash at this named point")

    def require_stack(self) -> tuple[str, str]:
        if not self.bootstrap_servers or not self.database_url:
            raise StackNotFound(
                "no broker or database configured: start the local stack with `tokenhub up` "
                f"or set {ENV_PREFIX}BOOTSTRAP_SERVERS and {ENV_PREFIX}DATABASE_URL"
            )
        return self.bootstrap_servers, self.database_url


def load_settings(**overrides: object) -> Settings:
    """Environment first; what it leaves unset comes from the local stack's env file."""
    state_dir = Path(os.environ.get(f"{ENV_PREFIX}STATE_DIR", STATE_DIR_DEFAULT))
    env_file = state_dir / STACK_ENV_FILE
    return Settings(_env_file=env_file if env_file.exists() else None, **overrides)  # type: ignore[call-arg]


def clock(settings: Settings) -> datetime:
    """'Now', injectable so that demos and tests are reproducible."""
    return settings.now.astimezone(UTC) if settings.now else datetime.now(UTC)
