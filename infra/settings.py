"""Settings from environment variables, or from the state folder of the local
stack that `tokenhub up` started (`.tokenhub/stack.env`)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, Literal, Self, get_origin

from pydantic import AwareDatetime, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from tokenhub.client.security import KafkaSecurity

ENV_PREFIX: Final = "TOKENHUB_"
STATE_DIR_DEFAULT: Final = Path(".tokenhub")
STACK_ENV_FILE: Final = "stack.env"
TOPIC_PARTITIONS_MAX: Final = 1_000
"""Far above what one deployment's services could share out; a typo such as
40000 should fail here, not as a broker's error at topic creation."""
REPLICATION_FACTOR_MAX: Final = 7


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
    metrics_host: str = Field("127.0.0.1", description="where every service serves /metrics and /healthz")
    metrics_port_base: int | None = Field(
        None, ge=1, le=65_000, description="the stack's metrics ports start here: each service adds its place in the "
        "topology (metering 0, pricing 1, ledger 2, invoicing 3) and 10 per instance index; unset: no metrics port")
    metrics_port: int | None = Field(None, ge=1, le=65_535,
                                     description="this one process's metrics port, in place of the derived one")
    log_level: str = "INFO"
    log_format: Literal["auto", "json", "console"] = "auto"
    now: AwareDatetime | None = Field(None, description="an injected clock: fixes 'now' for demos and tests")
    fault_point: str | None = Field(None, description="test-only: crash at this named point")

    # Apache Kafka in production (README, "Deployment"). The defaults suit the
    # embedded broker: one replica, no idempotent producer, no authentication.
    topic_partitions: int | None = Field(
        None, ge=1, le=TOPIC_PARTITIONS_MAX,
        description="partitions of each keyed topic that services share by partition (usage.reported, "
                    "tokens.consumed, tokens.priced, ledger.posted); unset keeps the contracts' default")
    topic_partitions_by_name: dict[str, int] = Field(
        default_factory=dict, description="partitions of named topics, as JSON: {\"usage.reported\": 12}")
    topic_replication_factor: int = Field(1, ge=1, le=REPLICATION_FACTOR_MAX, description="replicas of every topic")
    topic_min_insync_replicas: int = Field(
        1, ge=1, le=REPLICATION_FACTOR_MAX,
        description="replicas that must have a record before acks=all succeeds (at most the replication factor)")
    producer_acks: Literal["all", "1"] = Field(
        "all", description="all: a record is acknowledged once every in-sync replica has it")
    producer_idempotence: bool = Field(
        False, description="idempotent producers (Apache Kafka; the embedded broker has none): "
                           "a retried send is written once per partition")
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"] = "SCRAM-SHA-512"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = Field(None, description="PEM file of the certificate authority that signed the brokers'")
    kafka_ssl_certfile: Path | None = Field(None, description="a client certificate, where brokers ask for one (mutual TLS)")
    kafka_ssl_keyfile: Path | None = None

    @model_validator(mode="after")
    def _kafka_settings_agree(self) -> Self:
        if self.topic_min_insync_replicas > self.topic_replication_factor:
            raise ValueError("topic_min_insync_replicas cannot exceed topic_replication_factor: no write would succeed")
        if self.producer_idempotence and self.producer_acks != "all":
            raise ValueError("an idempotent producer needs producer_acks=all")
        for name, partitions in self.topic_partitions_by_name.items():
            if not 1 <= partitions <= TOPIC_PARTITIONS_MAX:
                raise ValueError(f"topic {name}: {partitions} partitions, not between 1 and {TOPIC_PARTITIONS_MAX}")
        self.kafka_security()  # SASL without credentials, a certificate without its key: refused here
        return self

    def kafka_security(self) -> KafkaSecurity:
        """How every Kafka client of this deployment connects (services, CLI, HTTP ingest)."""
        return KafkaSecurity(
            protocol=self.kafka_security_protocol,
            sasl_mechanism=self.kafka_sasl_mechanism,
            username=self.kafka_sasl_username,
            password=self.kafka_sasl_password.get_secret_value() if self.kafka_sasl_password else None,
            cafile=self.kafka_ssl_cafile,
            certfile=self.kafka_ssl_certfile,
            keyfile=self.kafka_ssl_keyfile,
        )

    def partitions_of(self, topic: str, default: int) -> int:
        """Partitions of `topic`: a named setting first, then `topic_partitions` for
        the topics that instances share by partition (those with more than one by
        default). Single-partition topics (price books, registry, invoices) keep
        one unless named: their consumers need one order."""
        if topic in self.topic_partitions_by_name:
            return self.topic_partitions_by_name[topic]
        if default > 1 and self.topic_partitions is not None:
            return self.topic_partitions
        return default

    def require_stack(self) -> tuple[str, str]:
        if not self.bootstrap_servers or not self.database_url:
            raise StackNotFound(
                "no broker or database configured: start the local stack with `tokenhub up` "
                f"or set {ENV_PREFIX}BOOTSTRAP_SERVERS and {ENV_PREFIX}DATABASE_URL"
            )
        return self.bootstrap_servers, self.database_url


def settings_for(environment: Mapping[str, str], **overrides: object) -> Settings:
    """Settings as a process started with `environment` would read them (a child's
    TOKENHUB_* variables over this process's), for the parent that starts it."""
    values: dict[str, object] = {}
    for name, value in environment.items():
        if not name.startswith(ENV_PREFIX):
            continue
        field = name[len(ENV_PREFIX):].lower()
        if field in Settings.model_fields:
            is_mapping = get_origin(Settings.model_fields[field].annotation) is dict
            values[field] = json.loads(value) if is_mapping else value
    return Settings(**(values | overrides))  # type: ignore[arg-type]


def load_settings(**overrides: object) -> Settings:
    """Environment first; what it leaves unset comes from the local stack's env file."""
    state_dir = Path(os.environ.get(f"{ENV_PREFIX}STATE_DIR", STATE_DIR_DEFAULT))
    env_file = state_dir / STACK_ENV_FILE
    return Settings(_env_file=env_file if env_file.exists() else None, **overrides)  # type: ignore[call-arg]


def clock(settings: Settings) -> datetime:
    """'Now', injectable so that demos and tests are reproducible."""
    return settings.now.astimezone(UTC) if settings.now else datetime.now(UTC)
