"""Apache Kafka in KRaft mode on loopback ports, run from the jars that
`infra/kafka/fetch.py` caches: N nodes, each a broker and a controller in one
JVM (Kafka's "combined" mode, which its documentation offers for development
and test clusters; production separates them, see docker-compose.yml), with a
static controller quorum of all N. Replication factor min(3, N) and
min.insync.replicas one less (at least 1), so three nodes survive the loss of
any one without refusing an acks=all write.

Secured by default as a deployment is: the brokers' listener speaks SASL_SSL
(SCRAM-SHA-512 users bootstrapped into the metadata when storage is formatted,
a TLS certificate authority of the cluster's own); the brokers replicate over
the same listener as the `broker` user. The controllers' listener stays
PLAINTEXT on 127.0.0.1: KRaft cannot authenticate it with SCRAM (the
credentials live in the metadata the controllers serve), and no client uses it.

    cluster = KafkaCluster(Path(".tokenhub/kafka"), nodes=3)
    cluster.start()                 # formats storage on first start, waits until every broker is up
    cluster.client_environment()    # TOKENHUB_* settings for the services and the CLI
    cluster.kill(2); cluster.restart(2)
    cluster.stop()

Everything lives under the state folder: `cluster.json` (cluster id, ports,
users and keystore password, mode 0600), the CA and keystores in `tls/`,
and per node `node-N/` with server.properties, its log and its data. A
second start of the same folder reuses all of it, so topics and committed
offsets survive a restart of the cluster.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import concurrent.futures
import json
import os
import secrets
import signal
import subprocess
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Final

import structlog

from tokenhub.client.security import KafkaSecurity
from tokenhub.infra.embedded import StackError, free_port, wait_for_port
from tokenhub.infra.kafka.fetch import classpath, kafka_version
from tokenhub.infra.kafka.tls import Authority

START_TIMEOUT_S: Final = 240.0
"""Three JVMs starting at once on two cores took 8-12 s on a quiet machine and
over a minute on one running several test suites at once; a start is called
failed only well past that."""
STOP_GRACE_S: Final = 30.0
"""A broker's controlled shutdown moves its partition leaders away first; it
needs a controller quorum, so the nodes are stopped together and given this long."""
FORMAT_TIMEOUT_S: Final = 60.0
HEAP_MB_DEFAULT: Final = 512
"""Per node. Token Hub's topics on a test or development cluster are small;
a production broker sizes its heap to its load (Kafka's default is 1 GB)."""
BROKER_USER: Final = "broker"
CLIENT_USER: Final = "tokenhub"
SASL_MECHANISM: Final = "SCRAM-SHA-512"
READY_POLL_S: Final = 0.25
ADMIN_TIMEOUT_MS: Final = 5_000

log = structlog.get_logger()


def new_cluster_id() -> str:
    """Kafka's cluster id: a UUID in URL-safe base64 without padding (22 characters),
    never starting with "-", which the storage tool would read as an option (Kafka's
    own `Uuid.randomUuid` skips those too)."""
    while True:
        candidate = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not candidate.startswith("-"):
            return candidate


@dataclass
class NodePorts:
    node_id: int
    broker_port: int
    controller_port: int


@dataclass
class ClusterLayout:
    """What the state folder remembers between starts."""

    cluster_id: str
    nodes: list[NodePorts]
    secure: bool
    users: dict[str, str] = field(default_factory=dict)
    keystore_password: str = ""
    kafka_version: str = ""

    @classmethod
    def load(cls, path: Path) -> ClusterLayout:
        raw = json.loads(path.read_text())
        raw["nodes"] = [NodePorts(**node) for node in raw["nodes"]]
        return cls(**raw)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2))
        path.chmod(0o600)  # passwords


@dataclass
class Node:
    ports: NodePorts
    folder: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def node_id(self) -> int:
        return self.ports.node_id

    @property
    def log_path(self) -> Path:
        return self.folder / "server.log"

    @property
    def properties_path(self) -> Path:
        return self.folder / "server.properties"

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class KafkaCluster:
    def __init__(self, state_dir: Path, nodes: int = 3, secure: bool = True, users: tuple[str, ...] = (CLIENT_USER,),
                 heap_mb: int = HEAP_MB_DEFAULT, quick_start: bool = False) -> None:
        """`quick_start`: for a cluster that lives a few minutes (tests): the JVM's
        quick compiler only and a serial collector start three nodes on about half
        the CPU (10-13 CPU seconds against 21-23, measured here); a long-lived
        cluster, or one measured, keeps the optimising compiler."""
        if nodes < 1:
            raise ValueError("a cluster has at least one node")
        self.state_dir = Path(state_dir).resolve()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.heap_mb = heap_mb
        self.quick_start = quick_start
        layout_path = self.state_dir / "cluster.json"
        if layout_path.exists():
            self.layout = ClusterLayout.load(layout_path)
            if len(self.layout.nodes) != nodes or self.layout.secure != secure:
                raise StackError(f"{self.state_dir} holds a cluster of {len(self.layout.nodes)} nodes "
                                 f"(secure: {self.layout.secure}); remove it to start a different one")
        else:
            self.layout = ClusterLayout(
                cluster_id=new_cluster_id(),
                nodes=[NodePorts(index + 1, free_port(), free_port()) for index in range(nodes)],
                secure=secure,
                users={name: secrets.token_hex(16) for name in (BROKER_USER, *users)} if secure else {},
                keystore_password=secrets.token_hex(16) if secure else "",
                kafka_version=kafka_version(),
            )
            self.layout.save(layout_path)
        self.nodes = {ports.node_id: Node(ports, self.state_dir / f"node-{ports.node_id}") for ports in self.layout.nodes}
        self.tls_dir = self.state_dir / "tls"
        atexit.register(self.stop)

    # --- what clients need -------------------------------------------------------------

    @property
    def cluster_id(self) -> str:
        return self.layout.cluster_id

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(f"127.0.0.1:{node.ports.broker_port}" for node in self.nodes.values())

    @property
    def replication_factor(self) -> int:
        return min(3, len(self.nodes))

    @property
    def min_insync_replicas(self) -> int:
        return max(1, self.replication_factor - 1)

    @property
    def ca_file(self) -> Path:
        return self.tls_dir / "ca.pem"

    def security(self, user: str = CLIENT_USER, password: str | None = None) -> KafkaSecurity:
        """How a client connects as `user` (with its own password unless one is given)."""
        if not self.layout.secure:
            return KafkaSecurity()
        return KafkaSecurity(protocol="SASL_SSL", sasl_mechanism=SASL_MECHANISM, username=user,
                             password=password if password is not None else self.layout.users[user],
                             cafile=self.ca_file)

    def client_environment(self, user: str = CLIENT_USER) -> dict[str, str]:
        """The TOKENHUB_* settings of a client of this cluster: services, CLI, tools."""
        environment = {
            "TOKENHUB_BOOTSTRAP_SERVERS": self.bootstrap_servers,
            "TOKENHUB_TOPIC_REPLICATION_FACTOR": str(self.replication_factor),
            "TOKENHUB_TOPIC_MIN_INSYNC_REPLICAS": str(self.min_insync_replicas),
            "TOKENHUB_PRODUCER_ACKS": "all",
            "TOKENHUB_PRODUCER_IDEMPOTENCE": "true",
            "TOKENHUB_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT",
        }
        if self.layout.secure:
            environment |= {
                "TOKENHUB_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                "TOKENHUB_KAFKA_SASL_MECHANISM": SASL_MECHANISM,
                "TOKENHUB_KAFKA_SASL_USERNAME": user,
                "TOKENHUB_KAFKA_SASL_PASSWORD": self.layout.users[user],
                "TOKENHUB_KAFKA_SSL_CAFILE": str(self.ca_file),
            }
        return environment

    @property
    def pids(self) -> dict[int, int]:
        return {node_id: node.process.pid for node_id, node in self.nodes.items() if node.process and node.running()}

    @property
    def pid(self) -> int | None:
        """The first running node's process (for a single-broker view of the cluster)."""
        return next(iter(self.pids.values()), None)

    # --- life cycle --------------------------------------------------------------------

    def start(self) -> None:
        started = time.monotonic()
        path = classpath()
        self._prepare_tls()
        for node in self.nodes.values():
            self._write_properties(node)
        self._format([node for node in self.nodes.values() if not (node.folder / "data" / "meta.properties").exists()], path)
        try:
            for node in self.nodes.values():
                self._launch(node, path)
            self._wait_ready(set(self.nodes), started)
        except BaseException:
            self.stop()
            raise
        log.info("kafka_cluster_started", nodes=len(self.nodes), bootstrap_servers=self.bootstrap_servers,
                 version=self.layout.kafka_version, seconds=round(time.monotonic() - started, 1))

    def kill(self, node_id: int) -> None:
        """SIGKILL one node, as a crash would: no controlled shutdown, no flush."""
        node = self.nodes[node_id]
        if node.process is not None:
            _signal_group(node.process, signal.SIGKILL)
            node.process.wait()
        log.warning("kafka_node_killed", node=node_id)

    def restart(self, node_id: int) -> None:
        """Start a stopped or killed node on its storage and wait until it is a broker of the cluster again."""
        started = time.monotonic()
        node = self.nodes[node_id]
        if node.running():
            raise StackError(f"node {node_id} is running")
        self._launch(node, classpath())
        self._wait_ready({node_id}, started)
        log.info("kafka_node_restarted", node=node_id, seconds=round(time.monotonic() - started, 1))

    def stop(self) -> None:
        running = [node for node in self.nodes.values() if node.running()]
        for node in running:
            assert node.process is not None
            _signal_group(node.process, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for node in running:
            assert node.process is not None
            try:
                node.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("kafka_node_stop_timed_out", node=node.node_id, grace_s=STOP_GRACE_S)
                _signal_group(node.process, signal.SIGKILL)
                node.process.wait()
        for node in self.nodes.values():
            node.process = None

    # --- the pieces --------------------------------------------------------------------

    def _prepare_tls(self) -> None:
        if not self.layout.secure or self.ca_file.exists():
            return
        authority = Authority.create(self.tls_dir)
        for node in self.nodes.values():
            authority.issue(self.tls_dir, f"node-{node.node_id}", password=self.layout.keystore_password)

    def _write_properties(self, node: Node) -> None:
        node.folder.mkdir(parents=True, exist_ok=True)
        properties = self.properties(node.node_id)
        node.properties_path.write_text("".join(f"{name}={value}\n" for name, value in properties.items()))
        node.properties_path.chmod(0o600)
        (self.state_dir / "log4j2.properties").write_text(LOG4J2_PROPERTIES)

    def properties(self, node_id: int) -> dict[str, object]:
        """Node `node_id`'s server.properties (the compose deployment's nodes share
        every setting in DEPLOYMENT_PROPERTIES; tests/unit/test_compose.py checks)."""
        node = self.nodes[node_id]
        voters = ",".join(f"{other.node_id}@127.0.0.1:{other.ports.controller_port}" for other in self.nodes.values())
        replication = self.replication_factor
        protocol = "SASL_SSL" if self.layout.secure else "PLAINTEXT"
        properties = {
            "process.roles": "broker,controller",
            "node.id": node.node_id,
            "controller.quorum.voters": voters,
            "controller.listener.names": "CONTROLLER",
            "listeners": f"BROKER://127.0.0.1:{node.ports.broker_port},CONTROLLER://127.0.0.1:{node.ports.controller_port}",
            "advertised.listeners": f"BROKER://127.0.0.1:{node.ports.broker_port}",
            "listener.security.protocol.map": f"BROKER:{protocol},CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name": "BROKER",
            "log.dirs": node.folder / "data",
            "num.partitions": 4,
            "default.replication.factor": replication,
            "min.insync.replicas": self.min_insync_replicas,
            "offsets.topic.replication.factor": replication,
            # Fewer than the default 50: a local cluster's few consumer groups need no
            # more, and each partition is a replica set that every start elects leaders for.
            "offsets.topic.num.partitions": 8,
            "transaction.state.log.replication.factor": replication,
            "transaction.state.log.min.isr": self.min_insync_replicas,
            "transaction.state.log.num.partitions": 4,
            "share.coordinator.state.topic.replication.factor": replication,
            "share.coordinator.state.topic.min.isr": self.min_insync_replicas,
            "auto.create.topics.enable": "false",
            "unclean.leader.election.enable": "false",
            "group.initial.rebalance.delay.ms": 0,
            # A killed broker is fenced (its partitions led elsewhere, it leaves the
            # in-sync replicas) after this long without a heartbeat; Kafka's 9 s default
            # would stall acks=all writes that long.
            "broker.session.timeout.ms": 6000,
            "broker.heartbeat.interval.ms": 1000,
            # Two cores: threads beyond these only contend.
            "num.network.threads": 2,
            "num.io.threads": 4,
            "num.recovery.threads.per.data.dir": 1,
            "background.threads": 4,
        }
        if self.layout.secure:
            keystore = self.tls_dir / f"node-{node.node_id}.p12"
            password = self.layout.keystore_password
            properties |= {
                "sasl.enabled.mechanisms": SASL_MECHANISM,
                "sasl.mechanism.inter.broker.protocol": SASL_MECHANISM,
                f"listener.name.broker.{SASL_MECHANISM.lower()}.sasl.jaas.config":
                    'org.apache.kafka.common.security.scram.ScramLoginModule required '
                    f'username="{BROKER_USER}" password="{self.layout.users[BROKER_USER]}";',
                "ssl.keystore.type": "PKCS12",
                "ssl.keystore.location": keystore,
                "ssl.keystore.password": password,
                "ssl.key.password": password,
                "ssl.truststore.type": "PEM",
                "ssl.truststore.location": self.ca_file,
                "ssl.endpoint.identification.algorithm": "https",
            }
        return properties

    def _java(self, path: str, main: str, *arguments: str) -> list[str]:
        compiler = (["-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC"] if self.quick_start
                    else ["-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20"])
        return ["java", f"-Xms{self.heap_mb}m", f"-Xmx{self.heap_mb}m", *compiler,
                "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={self.state_dir / 'log4j2.properties'}",
                "-cp", path, main, *arguments]

    def _java_tool(self, path: str, main: str, *arguments: str) -> list[str]:
        """A short-lived tool: the quick compiler only and a small serial heap start it
        in about half the time, and it exits before the optimising compiler would pay off."""
        return ["java", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC", "-Xmx128m", "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={self.state_dir / 'log4j2.properties'}",
                "-cp", path, main, *arguments]

    def _format(self, nodes: list[Node], path: str) -> None:
        """Format each node's storage with the cluster id and the SCRAM users, all at once."""
        scram = [argument for name, password in self.layout.users.items()
                 for argument in ("--add-scram", f"{SASL_MECHANISM}=[name={name},password={password}]")]
        formats = {
            node.node_id: subprocess.Popen(
                self._java_tool(path, "kafka.tools.StorageTool", "format", "--cluster-id", self.cluster_id,
                           "--config", str(node.properties_path), "--ignore-formatted", *scram),
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            for node in nodes
        }
        for node_id, process in formats.items():
            output, _ = process.communicate(timeout=FORMAT_TIMEOUT_S)
            if process.returncode != 0:
                raise StackError(f"formatting node {node_id} failed:\n{output.decode(errors='replace')[-2000:]}")

    def _launch(self, node: Node, path: str) -> None:
        with node.log_path.open("ab") as output:
            node.process = subprocess.Popen(
                self._java(path, "kafka.Kafka", str(node.properties_path)),
                stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )

    def _wait_ready(self, node_ids: set[int], started: float) -> None:
        """Every node's broker listens and the cluster's metadata lists it as a
        broker (registered and unfenced: it leads and follows partitions)."""
        deadline = started + START_TIMEOUT_S
        for node_id in node_ids:
            node = self.nodes[node_id]
            remaining = deadline - time.monotonic()
            if node.process is not None and node.process.poll() is not None:
                raise StackError(f"kafka node {node_id} exited with {node.process.returncode}:\n{_tail(node.log_path)}")
            wait_for_port("127.0.0.1", node.ports.broker_port, max(1.0, remaining), node.log_path)
        wanted = {node_id for node_id, node in self.nodes.items() if node.running()}
        with concurrent.futures.ThreadPoolExecutor(1) as executor:  # a loop of its own, whoever calls
            executor.submit(asyncio.run, self._wait_registered(wanted, deadline)).result()

    async def _wait_registered(self, wanted: set[int], deadline: float) -> None:
        from aiokafka.admin import AIOKafkaAdminClient
        from aiokafka.errors import KafkaError

        registered: set[int] = set()
        while True:
            for node_id in wanted:
                node = self.nodes[node_id]
                if node.process is not None and node.process.poll() is not None:
                    raise StackError(f"kafka node {node_id} exited with {node.process.returncode}:\n{_tail(node.log_path)}")
            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap_servers, request_timeout_ms=ADMIN_TIMEOUT_MS,
                                        **self.security(BROKER_USER).aiokafka_options())
            try:
                await admin.start()
                description = await admin.describe_cluster()
                registered = {broker["node_id"] for broker in description["brokers"]}
                if wanted <= registered:
                    return
            except (KafkaError, OSError, asyncio.TimeoutError):
                pass  # not up yet
            finally:
                await admin.close()
            if time.monotonic() > deadline:
                raise StackError(f"kafka nodes {sorted(wanted - registered)} not registered after "
                                 f"{START_TIMEOUT_S:.0f} s; logs in {self.state_dir}")
            await asyncio.sleep(READY_POLL_S)


DEPLOYMENT_PROPERTIES: Final = (
    "process.roles", "controller.listener.names", "listener.security.protocol.map", "inter.broker.listener.name",
    "default.replication.factor", "min.insync.replicas", "offsets.topic.replication.factor",
    "transaction.state.log.replication.factor", "transaction.state.log.min.isr",
    "share.coordinator.state.topic.replication.factor", "share.coordinator.state.topic.min.isr",
    "auto.create.topics.enable", "unclean.leader.election.enable", "sasl.enabled.mechanisms",
    "sasl.mechanism.inter.broker.protocol", "ssl.keystore.type", "ssl.truststore.type",
    "ssl.endpoint.identification.algorithm",
)
"""What a three-node cluster here and in docker-compose.yml have in common: roles,
listeners' security, replication and durability. Ports, paths, passwords and
the local cluster's tuning for two cores differ."""

LOG4J2_PROPERTIES: Final = """\
# The broker's own log, one file per node (its stdout). INFO is what an operator
# reads after a failure; the request and state-change loggers repeat it per request.
status = error
appender.stdout.type = Console
appender.stdout.name = STDOUT
appender.stdout.layout.type = PatternLayout
appender.stdout.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
logger.authorizer.name = kafka.authorizer.logger
logger.authorizer.level = WARN
"""


def _signal_group(process: subprocess.Popen[bytes], signal_number: int) -> None:
    try:
        os.killpg(process.pid, signal_number)
    except ProcessLookupError:
        pass


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
