"""The API's own settings (`TOKENHUB_API_*`), beside the stack's (`infra.settings`)."""

from __future__ import annotations

import os
import socket
from typing import Final
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

READER_ROLE: Final = "tokenhub_reader"
"""Reads every service's schema, writes nothing (migration 0030)."""
WRITER_ROLE: Final = "tokenhub_api"
"""Writes the api schema (keys, webhooks, deliveries, audit runs) and, of a
service's tables, only invoicing's plans and billing cycles (migration 0031)."""
PORT_DEFAULT: Final = 8090


class ApiSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TOKENHUB_API_", extra="ignore", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(PORT_DEFAULT, ge=0, le=65535)
    reader_url: str | None = Field(None, description="PostgreSQL URL as tokenhub_reader (default: the stack's database as that role)")
    writer_url: str | None = Field(None, description="PostgreSQL URL as tokenhub_api (default: the stack's database as that role)")
    quota_catch_up_timeout_s: float = Field(600.0, gt=0, description="longest the quota state may take to read the topics at start")


def role_url(database_url: str, role: str) -> str:
    """The stack's database URL with another user and no password: what the
    embedded stack (trust on its Unix socket) needs. A deployment with
    passwords gives TOKENHUB_API_READER_URL and TOKENHUB_API_WRITER_URL."""
    parts = urlsplit(database_url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, f"{role}@{host}", parts.path, parts.query, parts.fragment))


def database_urls(api: ApiSettings, database_url: str) -> tuple[str, str]:
    """(reader URL, writer URL)."""
    return api.reader_url or role_url(database_url, READER_ROLE), api.writer_url or role_url(database_url, WRITER_ROLE)


def api_port() -> int:
    """The port `tokenhub up` serves the API on: TOKENHUB_API_PORT, else 8090 when
    it is free, else any free port (the banner says which)."""
    if os.environ.get("TOKENHUB_API_PORT"):
        return int(os.environ["TOKENHUB_API_PORT"])
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", PORT_DEFAULT))
            return PORT_DEFAULT
        except OSError:
            probe.bind(("127.0.0.1", 0))
            return int(probe.getsockname()[1])
