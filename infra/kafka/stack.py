"""The local stack with Apache Kafka in place of the embedded broker: the same
embedded PostgreSQL, and a KRaft cluster from `cluster.py` under the state
folder's `kafka/`. `tokenhub up --broker kafka`, the benchmark's `--broker
kafka` and the Apache Kafka test tier start it; Tansu stays the default."""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Final, Literal

from tokenhub.infra.embedded import EmbeddedStack
from tokenhub.infra.kafka.cluster import KafkaCluster

BROKERS: Final = ("tansu", "kafka")
Broker = Literal["tansu", "kafka"]


class KafkaStack(EmbeddedStack):
    def __init__(self, state_dir: Path | None = None, durable: bool = False, statement_stats: bool = False,
                 brokers: int = 3, secure: bool = True, users: tuple[str, ...] = ("tokenhub",),
                 quick_start: bool = False) -> None:
        super().__init__(state_dir=state_dir, durable=durable, statement_stats=statement_stats)
        self.broker = KafkaCluster(self.state_dir / "kafka", nodes=brokers, secure=secure, users=users,  # type: ignore[assignment]
                                   quick_start=quick_start)

    @property
    def cluster(self) -> KafkaCluster:
        assert isinstance(self.broker, KafkaCluster)
        return self.broker

    def client_environment(self) -> dict[str, str]:
        return self.cluster.client_environment()

    def write_env_file(self, path: Path, extra: Mapping[str, str] | None = None) -> None:
        super().write_env_file(path, extra)
        extra = {name: value for name, value in self.client_environment().items() if name != "TOKENHUB_BOOTSTRAP_SERVERS"}
        with path.open("a") as env_file:
            env_file.write("".join(f"{name}={value}\n" for name, value in extra.items()))
        path.chmod(0o600)  # it holds the client's password

    def stop(self) -> None:
        super().stop()
        if self.temporary:  # as the embedded database is: a test's or benchmark's topics are not kept
            for node in self.cluster.nodes.values():
                shutil.rmtree(node.folder / "data", ignore_errors=True)


def open_stack(broker: Broker = "tansu", state_dir: Path | None = None, durable: bool = False,
               statement_stats: bool = False, brokers: int = 3) -> EmbeddedStack:
    if broker == "kafka":
        return KafkaStack(state_dir=state_dir, durable=durable, statement_stats=statement_stats, brokers=brokers)
    return EmbeddedStack(state_dir=state_dir, durable=durable, statement_stats=statement_stats)


def stack_environment(stack: EmbeddedStack) -> dict[str, str]:
    """The client settings a stack's broker needs beyond its address (none for Tansu)."""
    return stack.client_environment() if isinstance(stack, KafkaStack) else {}
