"""The benchmark (`tokenhub bench`): the whole pipeline on the embedded stack under realistic
load, beside a plain aiokafka passthrough baseline measured in the same run.

Phases: (1) baselines: the same payloads through four hops of plain aiokafka in
four processes (the pipeline's ratio is taken against it) and, side by side,
the same hops with confluent-kafka (librdkafka) and with FastStream on either
client (`bench.passthrough`), each with its CPU per event per hop; (2)
throughput: N usage events as fast as the producer goes,
emitted -> committed in the ledger; (3) latency: events offered at a fixed rate,
production -> ledger commit per sampled event; (4) replay from the archive and
from the topic; (5) month end: `invoice close` of the month the usage falls in
(its usage events per second, from invoicing's running totals); (6) `verify`
over the whole ledger, with its CPU and PostgreSQL's; (7) the bytes stored per
usage event over the four services' schemas after a VACUUM. CPU seconds and
peak RSS are sampled per process throughout.
"""

from __future__ import annotations

import asyncio
import csv
import os
import random
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, NamedTuple

import asyncpg
import msgspec
import orjson
import psutil
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tokenhub.audit.balances import rebuild
from tokenhub.audit.replay import balances_from_archive, priced_from_topic
from tokenhub.audit.verify import verify
from tokenhub.bench.load import generate_usage, seed_company
from tokenhub.bench.passthrough import CLIENTS
from tokenhub.contracts.canonical import canonical_json
from tokenhub.contracts.ids import priced_id
from tokenhub.contracts.periods import containing, parse_time
from tokenhub.contracts.stored import unpack
from tokenhub.contracts.topics import PARTITIONS_DEFAULT
from tokenhub.infra.embedded import free_port
from tokenhub.infra.kafka.stack import KafkaStack
from tokenhub.infra.pipeline import LocalPipeline, counters, settled
from tokenhub.infra.settings import Settings, settings_for
from tokenhub.services.common.db import create_pool
from tokenhub.services.common.kafka import client_options, create_producer, publish
from tokenhub.services.common.outbox import relay_now
from tokenhub.services.invoicing.handlers import SCHEMA as INVOICING_SCHEMA, close_period

EVENTS_DEFAULT: Final = 200_000
LATENCY_EVENTS_MAX: Final = 25_000
LATENCY_RATE_DEFAULT: Final = 5_000
DISTINCT_TEMPLATES: Final = 2_000  # realistic mix, cheap to stamp into N unique events
SAMPLE_EVERY: Final = 10  # latency is read for every tenth event: enough for a p99 over 25k
SETTLE_TIMEOUT_S: Final = 1_800.0
SAMPLE_INTERVAL_S: Final = 0.5
HOPS: Final = 4
SEED_TIME: Final = datetime(2026, 2, 27, tzinfo=UTC)
VIOLATIONS_SHOWN_MAX: Final = 20
STATEMENTS_SHOWN: Final = 8
TOP_STATEMENTS: Final = f"""
select calls, rows, round(total_exec_time)::bigint as total_ms,
       left(regexp_replace(query, '\\s+', ' ', 'g'), 100) as query
from pg_stat_statements order by total_exec_time desc limit {STATEMENTS_SHOWN}
"""
SERVICE_SCHEMAS: Final = ("metering", "pricing", "ledger", "invoicing")
RELATIONS_SHOWN: Final = 8
# Every table of the services' schemas with its heap, its TOAST (with the TOAST
# table's index) and its indexes: pg_total_relation_size is their sum.
STORED_RELATIONS: Final = """
select n.nspname || '.' || c.relname as relation, pg_total_relation_size(c.oid) as total_bytes,
       pg_relation_size(c.oid) as heap_bytes, pg_indexes_size(c.oid) as index_bytes,
       coalesce(pg_total_relation_size(nullif(c.reltoastrelid, 0)), 0) as toast_bytes, c.reltuples::bigint as rows
from pg_class c join pg_namespace n on n.oid = c.relnamespace
where n.nspname = any($1::text[]) and c.relkind in ('r', 'm')
order by total_bytes desc
"""
STORED_INDEXES: Final = """
select n.nspname || '.' || c.relname as index, pg_relation_size(c.oid) as bytes
from pg_class c join pg_namespace n on n.oid = c.relnamespace
where n.nspname = any($1::text[]) and c.relkind = 'i'
order by bytes desc limit $2
"""
REPLAY_CONNECTIONS: Final = 2
"""The archive is read in two parts at once (`audit.replay.ARCHIVE_PARTS`) where
it is read in this process; worker processes connect on their own."""
PROGRESS_INTERVAL_S: Final = 2.0
"""How often a long phase says how far it is."""


@dataclass
class ProcessStats:
    cpu_seconds: float = 0.0
    peak_rss_mb: float = 0.0


@dataclass
class BaselineStats:
    events_per_s: float = 0.0
    hop_cpu_us_per_event: float = 0.0
    """CPU of one hop process per event, averaged over the four hops."""
    broker_cpu_us_per_event: float = 0.0
    """The broker's CPU per event through all four hops: what the same payloads
    cost it as plain traffic, beside what the pipeline costs it per usage event."""


@dataclass
class Report:
    events: int
    instances: int
    broker: str = "tansu"
    baseline_events_per_s: float = 0.0
    """Plain aiokafka, the services' client: what the ratio is taken against."""
    baselines: dict[str, BaselineStats] = field(default_factory=dict)
    """Each client's passthrough, side by side (`bench.passthrough.CLIENTS`)."""
    pipeline_events_per_s: float = 0.0
    ratio_to_baseline: float = 0.0
    service_events_per_s: dict[str, float] = field(default_factory=dict)
    latency_rate_offered: int = 0
    latency_events: int = 0
    latency_ms_p50: float = 0.0
    latency_ms_p95: float = 0.0
    latency_ms_p99: float = 0.0
    replay_archive_events_per_s: float = 0.0
    replay_topic_events_per_s: float = 0.0
    replay_events: int = 0
    replay_archive_ratio_to_baseline: float = 0.0
    verify_seconds: float = 0.0
    verify_violations: int = -1
    """Invariant violations `verify` found after the run (-1: not run); must be 0."""
    verify_entries: int = 0
    verify_entries_per_s: float = 0.0
    verify_cpu_seconds: float = 0.0
    """CPU of the process that verifies (decoding, hashing, recomputing)."""
    verify_postgres_cpu_seconds: float = 0.0
    verify_ratio_to_baseline: float = 0.0
    verify_steps: dict[str, dict[str, float]] = field(default_factory=dict)
    """Where verify's time went, step by step: seconds and this process's CPU seconds."""
    close_period: str = ""
    """The month closed (`invoice close --early` of the month the run's usage falls in)."""
    close_seconds: float = 0.0
    close_usage_events: int = 0
    """Usage events the close invoiced (both phases' usage falls in the closed periods)."""
    close_usage_events_per_s: float = 0.0
    close_invoices: int = 0
    close_lines: int = 0
    close_cpu_seconds: float = 0.0
    close_postgres_cpu_seconds: float = 0.0
    close_ratio_to_baseline: float = 0.0
    stored_bytes: int = 0
    """Tables, indexes and TOAST over the four services' schemas, after a VACUUM."""
    bytes_per_usage_event: float = 0.0
    stored_relations: list[dict[str, Any]] = field(default_factory=list)
    """The largest tables: heap, TOAST and index bytes of each, and its rows."""
    stored_indexes: list[dict[str, Any]] = field(default_factory=list)
    processes: dict[str, ProcessStats] = field(default_factory=dict)
    cpu_ms_per_event: float = 0.0
    """CPU of every process (services, broker, database) per usage event of both phases."""
    counts: dict[str, int] = field(default_factory=dict)
    statements: list[dict[str, Any]] = field(default_factory=list)
    """PostgreSQL's busiest statements during the throughput phase (pg_stat_statements)."""


SERVICES_MEASURED: Final = ("metering", "pricing", "ledger", "invoicing")


class Target(NamedTuple):
    measure: str
    figure: float
    unit: str
    target: float | None
    """None: not judged by this run (the latency target at a lower offered rate, the ratio without a baseline)."""
    stretch: float | None
    at_most: bool
    """True: the figure must not exceed the target (CPU, bytes, latency); False: it must reach it (rates)."""

    def met(self, bound: float | None) -> bool | None:
        if bound is None:
            return None
        return self.figure <= bound if self.at_most else self.figure >= bound


LATENCY_TARGET_RATE: Final = 3_000
LATENCY_STRETCH_RATE: Final = 5_000
"""Issue 21's latency target: p99 production -> ledger commit within 1 s at 3,000/s offered (stretch: 5,000/s)."""


LATENCY_P99_MS_MAX: Final = 1_000.0


def _latency_bound(offered: int, rate: int, p99_ms: float) -> float | None:
    """The latency bound is judged at its own offered rate; a run at a higher rate
    that meets it meets it at the lower rate too, one that misses it says nothing of it."""
    if offered == rate or offered > rate and p99_ms <= LATENCY_P99_MS_MAX:
        return LATENCY_P99_MS_MAX / 1000
    return None


def targets(report: Report) -> list[Target]:
    """Issue 21's targets and stretch figures against one run's figures. The
    latency target and its stretch are judged only where their offered rates say
    something (`_latency_bound`)."""
    usage_events = max(1, report.events + report.latency_events)
    postgres = report.processes.get("postgres", ProcessStats())
    services = [report.processes[name].peak_rss_mb for name in report.processes
                if name.split("-")[0] in SERVICES_MEASURED]
    offered = report.latency_rate_offered
    return [
        Target("CPU per usage event, all processes", report.cpu_ms_per_event, "ms", 0.30, 0.20, True),
        Target("PostgreSQL CPU per usage event", round(postgres.cpu_seconds * 1000 / usage_events, 3), "ms", 0.08, 0.05, True),
        Target("end to end", report.pipeline_events_per_s, "events/s", 6_000, 10_000, False),
        Target("ratio to the plain aiokafka passthrough", report.ratio_to_baseline, "x",
               0.15 if report.baseline_events_per_s else None, 0.25 if report.baseline_events_per_s else None, False),
        Target(f"p99 production -> ledger commit at {offered:,}/s offered", report.latency_ms_p99 / 1000, "s",
               _latency_bound(offered, LATENCY_TARGET_RATE, report.latency_ms_p99),
               _latency_bound(offered, LATENCY_STRETCH_RATE, report.latency_ms_p99), True),
        Target("verify", report.verify_entries_per_s, "entries/s", 100_000, 300_000, False),
        Target("invoice close of a month", report.close_usage_events_per_s, "usage events/s", 50_000, None, False),
        Target("replay from the archive", report.replay_archive_events_per_s, "events/s", 300_000, None, False),
        Target("bytes stored per usage event", report.bytes_per_usage_event, "bytes", 3_000, 1_500, True),
        Target("peak RSS of a service", max(services, default=0.0), "MB", 150, None, True),
    ]


def _progress(label: str, done: int, total: int) -> None:
    print(f"  {label}: {done:,}/{total:,}", file=sys.stderr, flush=True)


class Throttled:
    """A `tokenhub.audit` progress callback that prints at most every PROGRESS_INTERVAL_S per label."""

    def __init__(self, phase: str) -> None:
        self.phase = phase
        self.last: dict[str, float] = {}

    def __call__(self, what: str, done: int, total: int | None) -> None:
        moment = time.monotonic()
        if moment - self.last.get(what, 0.0) < PROGRESS_INTERVAL_S:
            return
        self.last[what] = moment
        print(f"  {self.phase} ({what}): {done:,}" + (f"/{total:,}" if total else ""), file=sys.stderr, flush=True)


class BenchFailed(RuntimeError):
    """A run that cannot give figures: a trace that cannot be read, a baseline or the pipeline that stopped."""


def templates(count: int, seed: int, now: datetime) -> list[dict[str, Any]]:
    return [orjson.loads(canonical_json(event)) for event in generate_usage(count, seed=seed, day_end=now)]


TRACE_COLUMNS: Final = ("timestamp_ms", "model", "input_tokens", "output_tokens")


def trace_templates(path: Path, now: datetime) -> list[dict[str, Any]]:
    """Rows `timestamp_ms,model,input_tokens,output_tokens`; each row's time
    offset from the first is kept, so the trace keeps its own pace."""
    try:
        with path.open(newline="") as file:
            reader = csv.DictReader(file)
            missing = [column for column in TRACE_COLUMNS if column not in (reader.fieldnames or ())]
            if missing:
                raise BenchFailed(f"{path}: the header lacks {', '.join(missing)} (wanted {','.join(TRACE_COLUMNS)})")
            rows = [(int(row["timestamp_ms"]), row["model"], int(row["input_tokens"]), int(row["output_tokens"]))
                    for row in reader]
    except ValueError as error:
        raise BenchFailed(f"{path}: line {reader.line_num}: {error}") from None
    if not rows:
        raise BenchFailed(f"{path} has no rows")
    first = rows[0][0]
    consumers = ("taobao-tmall", "local-services", "cainiao", "qianwen-app")
    return [{"specversion": "1.0", "type": "com.tokenhub.usage.v1", "source": "trace",
             "time": (now - timedelta(hours=1) + timedelta(milliseconds=moment - first)).isoformat(),
             "offset_ms": moment - first,
             "data": {"consumer_bu": consumers[index % len(consumers)], "model": model,
                      "input_tokens": input_tokens, "output_tokens": output_tokens}}
            for index, (moment, model, input_tokens, output_tokens) in enumerate(rows)]


def stamp(template: dict[str, Any], run: str, index: int) -> tuple[bytes, bytes]:
    event = {key: value for key, value in template.items() if key != "offset_ms"}
    event["id"] = f"bench-{run}-{index}"
    return event["data"]["consumer_bu"].encode(), orjson.dumps(event, option=orjson.OPT_SORT_KEYS)


def trace_schedule(source: list[dict[str, Any]], count: int) -> list[float]:
    """When each of `count` events is due, in seconds from the start, at the
    trace's own pace: its rows' offsets, the trace repeated end to end for more
    events than it has rows (the next round one average gap after the last row)."""
    offsets = [template["offset_ms"] / 1000 for template in source]
    round_s = offsets[-1] + (offsets[-1] / (len(offsets) - 1) if len(offsets) > 1 else 0.001)
    return [(index // len(offsets)) * round_s + offsets[index % len(offsets)] for index in range(count)]


GENERATOR_CHUNK: Final = 10_000
"""Events the load generator publishes at once when it need not keep a pace."""


async def _produce(bootstrap_servers: str, topic: str, values: list[tuple[bytes, bytes]], *, rate: float | None = None,
                   schedule: list[float] | None = None,
                   sent_at: dict[int, float] | None = None, label: str = "sent") -> float:
    """Send `values` and return when the broker has every one. As fast as it can,
    in record batches (`publish`, about 3 µs of CPU per event, so the generator
    takes little of the two cores from what it measures); at a pace, one by one
    as each is due (about 15 µs each)."""
    producer: AIOKafkaProducer = create_producer(bootstrap_servers, client_id="tokenhub-bench")
    await producer.start()
    started = time.monotonic()
    step = max(1, len(values) // 10)
    try:
        if not (rate or schedule or sent_at is not None):
            for first in range(0, len(values), GENERATOR_CHUNK):
                chunk = values[first:first + GENERATOR_CHUNK]
                await publish(producer, ((topic, key, value) for key, value in chunk))
                if (first + len(chunk)) // step > first // step:
                    _progress(label, first + len(chunk), len(values))
            return started
        pending = []
        for index, (key, value) in enumerate(values):
            due = schedule[index] if schedule else index / rate if rate else 0.0
            delay = started + due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if sent_at is not None and index % SAMPLE_EVERY == 0:
                sent_at[index] = time.time()
            pending.append(await producer.send(topic, value, key=key))
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending = []
            if (index + 1) % step == 0:
                _progress(label, index + 1, len(values))
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return started


class Sampler:
    """CPU seconds and peak RSS of the services, the broker and the database."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.processes = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.start_cpu = {name: self._cpu(process) for name, process in self.processes.items()}
        self.stats = {name: ProcessStats() for name in self.processes}

    @staticmethod
    def _cpu(process: psutil.Process) -> float:
        """User and system CPU of a process and its children, those still running
        and those it has reaped: PostgreSQL's autovacuum workers live for
        seconds, and their CPU is counted once they exit too."""
        try:
            times = process.cpu_times()
            total = times.user + times.system + times.children_user + times.children_system
            for child in process.children(recursive=True):
                child_times = child.cpu_times()
                total += child_times.user + child_times.system
            return total
        except psutil.Error:
            return 0.0

    @staticmethod
    def _rss(process: psutil.Process) -> float:
        """A single process's RSS; for a process tree (PostgreSQL's backends) the
        sum of proportional set sizes, so shared buffers are not counted per backend."""
        try:
            children = process.children(recursive=True)
            if not children:
                return process.memory_info().rss / 2**20
            total = 0
            for member in [process, *children]:
                try:
                    total += member.memory_full_info().pss
                except psutil.Error:
                    continue  # a backend that exited between the listing and the read
            return total / 2**20
        except psutil.Error:
            return 0.0

    def sample(self) -> None:
        for name, process in self.processes.items():
            self.stats[name].peak_rss_mb = max(self.stats[name].peak_rss_mb, self._rss(process))

    def cpu_used(self) -> dict[str, float]:
        """CPU seconds of each process since the sampler was made."""
        return {name: self._cpu(process) - self.start_cpu[name] for name, process in self.processes.items()}

    def finish(self) -> dict[str, ProcessStats]:
        for name, used in self.cpu_used().items():
            self.stats[name].cpu_seconds = round(used, 2)
            self.stats[name].peak_rss_mb = round(self.stats[name].peak_rss_mb, 1)
        return self.stats


async def baseline(bootstrap_servers: str, values: list[tuple[bytes, bytes]], client: str,
                   broker_pid: int) -> BaselineStats:
    """Events/s through four hops of plain `client` in four processes, and what
    each hop and the broker spend per event."""
    topics = [f"bench.{client}.hop{index}" for index in range(HOPS + 1)]
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, **client_options())
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, PARTITIONS_DEFAULT, 1) for topic in topics])
    finally:
        await admin.close()
    hops = [subprocess.Popen([sys.executable, "-m", "tokenhub.bench.passthrough", client, bootstrap_servers,
                              topics[index], topics[index + 1]], start_new_session=True) for index in range(HOPS)]
    consumer = AIOKafkaConsumer(topics[-1], bootstrap_servers=bootstrap_servers, group_id=f"bench-sink-{client}",
                                auto_offset_reset="earliest", session_timeout_ms=6000, **client_options())
    await consumer.start()
    try:
        await asyncio.sleep(8)  # the hops join their groups first, as the services do before a run
        sampler = Sampler({"broker": broker_pid} | {f"hop{index}": process.pid for index, process in enumerate(hops)})
        started = await _produce(bootstrap_servers, topics[0], values, label=f"baseline ({client}) sent")
        received = 0
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while received < len(values):
            batches = await consumer.getmany(timeout_ms=500, max_records=10_000)
            received += sum(len(records) for records in batches.values())
            stopped = [process.returncode for process in hops if process.poll() is not None]
            if stopped or time.monotonic() > deadline:
                raise BenchFailed(f"the {client} baseline stopped at {received:,} of {len(values):,} events"
                               + (f": a hop exited with {stopped[0]}" if stopped else ""))
        events_per_s = len(values) / (time.monotonic() - started)
        used = sampler.cpu_used()
        broker_cpu = used.pop("broker")
        hop_cpu = sum(used.values()) / HOPS
        return BaselineStats(round(events_per_s, 1), round(hop_cpu * 1e6 / len(values), 1),
                             round(broker_cpu * 1e6 / len(values), 1))
    finally:
        await consumer.stop()
        for process in hops:
            process.terminate()
        for process in hops:
            process.wait(timeout=30)


async def _seed(pipeline: LocalPipeline) -> None:
    """The demo's company: its registry and price book, retroactive so that any day's usage is priced."""
    settings = Settings(bootstrap_servers=pipeline.env["TOKENHUB_BOOTSTRAP_SERVERS"],
                        database_url=pipeline.env["TOKENHUB_DATABASE_URL"])
    await seed_company(settings, actor="bench", registry_reason="benchmark registry", book_reason="benchmark prices",
                       at=SEED_TIME, published_at=datetime.now(UTC), retroactive=True)


async def _settle(connection: asyncpg.Connection, before: dict[str, int], sent: int, sampler: Sampler,
                  first_done: dict[str, float]) -> dict[str, int]:
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    reported = time.monotonic()
    while True:
        sampler.sample()
        now = await counters(connection)
        delta = {name: now.get(name, 0) - before.get(name, 0) for name in now}
        if time.monotonic() - reported >= PROGRESS_INTERVAL_S:
            reported = time.monotonic()
            print("  done so far: " + ", ".join(f"{stage} {delta.get(name, 0):,}" for stage, name in (
                ("metering", "metering.accepted"), ("pricing", "pricing.priced"), ("ledger", "ledger.posted"),
                ("invoicing", "invoicing.postings"))), file=sys.stderr, flush=True)
        for stage, name in (("metering", "metering.accepted"), ("pricing", "pricing.priced"), ("ledger", "ledger.posted"),
                            ("invoicing", "invoicing.postings")):
            if stage not in first_done and delta.get(name, 0) and (
                    stage != "metering" and delta.get(name, 0) >= delta.get("metering.consumed", 1 << 62)
                    or stage == "metering" and delta.get(name, 0) >= sent):
                first_done[stage] = time.monotonic()
        if settled(delta, sent):
            return delta
        if time.monotonic() > deadline:
            raise BenchFailed(f"the pipeline did not settle within {SETTLE_TIMEOUT_S:.0f} s: {delta}")
        await asyncio.sleep(SAMPLE_INTERVAL_S)


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-fraction * len(ordered) // 1))))
    return ordered[rank - 1]


# When each usage event was first posted: the charge of each of its TokenConsumed,
# whose id derives from the consumption's alone (contracts.ids.priced_id). The
# consumptions' ids are in metering's record, stored packed, so read here.
SELECT_LATENCY_CONSUMED: Final = "select usage_id, payload from metering.consumed where usage_id = any($1::text[])"
SELECT_LATENCY_POSTED: Final = "select priced_id, posted_at from ledger.journal where priced_id = any($1::uuid[])"


class _ConsumedId(msgspec.Struct, frozen=True):
    id: uuid.UUID


_CONSUMED_ID: Final = msgspec.json.Decoder(_ConsumedId)


async def first_posted(connection: asyncpg.Connection, usage_ids: list[str]) -> dict[str, datetime]:
    """The earliest posting time of each usage event's charges, by usage id (events not posted left out)."""
    charges = {priced_id(_CONSUMED_ID.decode(unpack(row["payload"])).id, "", None): row["usage_id"]
               for row in await connection.fetch(SELECT_LATENCY_CONSUMED, usage_ids)}
    posted: dict[str, datetime] = {}
    for row in await connection.fetch(SELECT_LATENCY_POSTED, list(charges)):
        usage_id = charges[row["priced_id"]]
        posted[usage_id] = min(posted.get(usage_id, row["posted_at"]), row["posted_at"])
    return posted


async def run_bench(*, events: int | None = None, rate: int = LATENCY_RATE_DEFAULT, trace: Path | None = None,
                    as_fast_as_possible: bool = False, instances: int = 1, skip_baseline: bool = False,
                    broker: str = "tansu") -> Report:
    """Baselines, throughput, latency, replay and verify on a stack of its own,
    stopped before it returns. `events` defaults to EVENTS_DEFAULT, or a
    trace's rows once; a trace keeps its own pace unless `as_fast_as_possible`.
    `broker`: `tansu`, the embedded broker, or `kafka`, one Apache Kafka node."""
    if events is not None and events <= 0:
        raise BenchFailed(f"events must be positive, not {events}")
    now = datetime.now(UTC)
    source = trace_templates(trace, now) if trace else templates(DISTINCT_TEMPLATES, 11, now)
    count = events or (len(source) if trace else EVENTS_DEFAULT)
    print(f"preparing {count:,} usage events ...", file=sys.stderr)
    run = f"{random.randrange(16**8):08x}"
    values = [stamp(source[index % len(source)], run, index) for index in range(count)]
    report = Report(events=count, instances=instances)
    extra = {"TOKENHUB_LOG_LEVEL": "WARNING", "TOKENHUB_INSTANCE_COUNT": str(instances)}
    stack = None
    if broker == "kafka":
        # One node without TLS, as the embedded broker is one plain node: the brokers are compared, not TLS.
        stack = KafkaStack(statement_stats=True, brokers=1, secure=False)
        os.environ.update(stack.client_environment())  # this process and the baselines' hops are its clients too
    report.broker = broker
    pipeline = LocalPipeline(env=extra, statement_stats=True, stack=stack)
    try:
        print(f"starting the local stack ({broker}) and the services ...", file=sys.stderr)
        endpoints = await pipeline.start()
        assert pipeline.services is not None
        for index in range(1, instances):
            for service in ("metering", "pricing", "ledger", "invoicing"):
                pipeline.services.start(service, name=f"{service}-{index + 1}", extra_env={
                    "TOKENHUB_INSTANCE_INDEX": str(index), "TOKENHUB_HTTP_PORT": str(free_port())})
        if not skip_baseline:
            for client in CLIENTS:
                print(f"baseline: plain {client} through four hops ...", file=sys.stderr)
                report.baselines[client] = await baseline(endpoints.bootstrap_servers, values, client,
                                                          pipeline.stack.broker.pid or 0)
            report.baseline_events_per_s = report.baselines["aiokafka"].events_per_s
        await _seed(pipeline)
        pids = {name: process.pid for name, process in pipeline.services.processes.items()}
        pids.update({"broker": pipeline.stack.broker.pid or 0, "postgres": pipeline.stack.postgres.pid or 0})
        sampler = Sampler(pids)
        connection = await asyncpg.connect(endpoints.database_url)
        try:
            print("throughput: emitted -> committed in the ledger ...", file=sys.stderr)
            await connection.execute("create extension if not exists pg_stat_statements")
            await connection.execute("select pg_stat_statements_reset()")
            before = await counters(connection)
            first_done: dict[str, float] = {}
            schedule = trace_schedule(source, count) if trace and not as_fast_as_possible else None
            started = await _produce(endpoints.bootstrap_servers, "usage.reported", values, schedule=schedule)
            report.counts = await _settle(connection, before, count, sampler, first_done)
            report.statements = [dict(row) for row in await connection.fetch(TOP_STATEMENTS)]
            # End to end is emitted -> committed in the ledger; invoicing is reported beside it.
            report.pipeline_events_per_s = round(count / (first_done.get("ledger", time.monotonic()) - started), 1)
            report.service_events_per_s = {stage: round(count / (moment - started), 1) for stage, moment in first_done.items()}
            if report.baseline_events_per_s:
                report.ratio_to_baseline = round(report.pipeline_events_per_s / report.baseline_events_per_s, 3)

            latency_count = min(count, LATENCY_EVENTS_MAX)
            report.latency_rate_offered = rate
            report.latency_events = latency_count
            print(f"latency: {latency_count:,} events offered at {rate:,}/s ...", file=sys.stderr)
            latency_values = [stamp(source[index % len(source)], run + "-latency", index) for index in range(latency_count)]
            sent_at: dict[int, float] = {}
            before = await counters(connection)
            await _produce(endpoints.bootstrap_servers, "usage.reported", latency_values, rate=rate,
                           sent_at=sent_at, label="latency sent")
            await _settle(connection, before, latency_count, sampler, {})
            ids = {f"bench-{run}-latency-{index}": moment for index, moment in sent_at.items()}
            posted = await first_posted(connection, list(ids))
            latencies = [max(0.0, (posted_at.timestamp() - ids[usage_id]) * 1000) for usage_id, posted_at in posted.items()]
            report.latency_ms_p50 = round(percentile(latencies, 0.50), 1)
            report.latency_ms_p95 = round(percentile(latencies, 0.95), 1)
            report.latency_ms_p99 = round(percentile(latencies, 0.99), 1)
        finally:
            await connection.close()
        report.processes = sampler.finish()
        report.cpu_ms_per_event = round(sum(stats.cpu_seconds for stats in report.processes.values()) * 1000
                                        / (count + report.latency_events), 3)
        postgres = Sampler({"postgres": pipeline.stack.postgres.pid or 0})
        await _replay(report, endpoints.bootstrap_servers, endpoints.database_url)
        usage_times = [parse_time(source[index % len(source)]["time"]) for index in range(count)] + [
            parse_time(source[index % len(source)]["time"]) for index in range(report.latency_events)]
        await _close(report, pipeline, usage_times, postgres)
        await _verify(report, endpoints.bootstrap_servers, endpoints.database_url, postgres)
        await _stored(report, endpoints.database_url)
    finally:
        pipeline.stop()
    return report


def _ratio(rate: float, baseline: float) -> float:
    return round(rate / baseline, 3) if baseline else 0.0


async def _replay(report: Report, bootstrap_servers: str, database_url: str) -> None:
    """Replay with the auditor's own code (`tokenhub.audit`), timed: from the archive, then from the topic."""
    print("replay: rebuilding every balance from the archive and from the topic ...", file=sys.stderr)
    pool = await create_pool(database_url, size_max=REPLAY_CONNECTIONS)
    try:
        async with pool.acquire(), pool.acquire():
            pass  # connected before the clock starts, as a replay's pool is once it runs
        started = time.monotonic()
        events, _ = await balances_from_archive(pool, database_url)
        report.replay_archive_events_per_s = round(events / (time.monotonic() - started), 1)
        report.replay_archive_ratio_to_baseline = _ratio(report.replay_archive_events_per_s, report.baseline_events_per_s)
        report.replay_events = events
        started = time.monotonic()
        topic_events, _ = await priced_from_topic(bootstrap_servers, events, 5.0, progress=Throttled("replay"))
        rebuild(topic_events)
        report.replay_topic_events_per_s = round(len(topic_events) / (time.monotonic() - started), 1)
    finally:
        await pool.close()


async def _close(report: Report, pipeline: LocalPipeline, usage_times: list[datetime], postgres: Sampler) -> None:
    """Month end as finance runs it (`tokenhub invoice close --period MONTH --early`):
    the month the run's last usage falls in, and every period before it that is
    still open, closed from invoicing's running totals and published; then the
    period tier adjustments it staged are posted, as in production, before verify."""
    settings = settings_for(pipeline.env)
    month = containing(max(usage_times), "month", settings.timezone)
    report.close_period = month.name
    report.close_usage_events = sum(1 for moment in usage_times if moment < month.end)
    print(f"invoice close: {month.name} ({report.close_usage_events:,} usage events) ...", file=sys.stderr)
    pool = await create_pool(pipeline.env["TOKENHUB_DATABASE_URL"], size_max=2)
    connection = await asyncpg.connect(pipeline.env["TOKENHUB_DATABASE_URL"])
    try:
        before = await counters(connection)
        postgres_before = postgres.cpu_used()["postgres"]
        cpu_started = time.process_time()
        started = time.monotonic()
        issued = await close_period(pool, settings, month.name, actor="bench", now=datetime.now(UTC), early=True)
        await relay_now(pool, pipeline.env["TOKENHUB_BOOTSTRAP_SERVERS"], INVOICING_SCHEMA, client_id="tokenhub-bench-close",
                        settings=settings)
        report.close_seconds = round(time.monotonic() - started, 3)
        report.close_cpu_seconds = round(time.process_time() - cpu_started, 3)
        report.close_postgres_cpu_seconds = round(postgres.cpu_used()["postgres"] - postgres_before, 3)
        report.close_invoices = len(issued)
        report.close_lines = sum(len(invoice.lines) for invoice in issued)
        report.close_usage_events_per_s = round(report.close_usage_events / max(report.close_seconds, 1e-6), 1)
        report.close_ratio_to_baseline = _ratio(report.close_usage_events_per_s, report.baseline_events_per_s)
        print(f"  invoice close: {report.close_invoices:,} invoices, {report.close_lines:,} lines; "
              "posting its period tier adjustments ...", file=sys.stderr)
        await _settle(connection, before, 0, Sampler({}), {})
    finally:
        await connection.close()
        await pool.close()


async def _verify(report: Report, bootstrap_servers: str, database_url: str, postgres: Sampler) -> None:
    """`tokenhub verify` with the auditor's own code over the whole ledger, timed, with its CPU and PostgreSQL's."""
    print("verify: every chain and invariant over the whole ledger ...", file=sys.stderr)
    pool = await create_pool(database_url, size_max=2)
    try:
        postgres_before = postgres.cpu_used()["postgres"]
        cpu_started = time.process_time()
        started = time.monotonic()
        verified = await verify(pool, bootstrap_servers, progress=Throttled("verify"))
        elapsed = time.monotonic() - started
        report.verify_cpu_seconds = round(time.process_time() - cpu_started, 2)
        report.verify_postgres_cpu_seconds = round(postgres.cpu_used()["postgres"] - postgres_before, 2)
        report.verify_seconds = round(elapsed, 2)
        report.verify_entries = verified.checks[0].examined
        report.verify_entries_per_s = round(report.verify_entries / elapsed, 1)
        report.verify_ratio_to_baseline = _ratio(report.verify_entries_per_s, report.baseline_events_per_s)
        report.verify_steps = {name: step._asdict() for name, step in verified.steps.items()}
        report.verify_violations = len(verified.violations)
        for violation in verified.violations[:VIOLATIONS_SHOWN_MAX]:
            print(f"  verify: {violation.check}: {violation.subject}: {violation.detail}", file=sys.stderr)
    finally:
        await pool.close()


async def _stored(report: Report, database_url: str) -> None:
    """What the run left on disk per usage event: every table, index and TOAST of
    the services' schemas after a VACUUM (which leaves the outboxes' relayed
    batches out, as the services' own vacuums do in a steady state)."""
    print("storage: VACUUM, then the size of every table, index and TOAST ...", file=sys.stderr)
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute("vacuum")
        relations = [dict(row) for row in await connection.fetch(STORED_RELATIONS, list(SERVICE_SCHEMAS))]
        report.stored_bytes = sum(relation["total_bytes"] for relation in relations)
        report.bytes_per_usage_event = round(report.stored_bytes / max(1, report.events + report.latency_events), 1)
        report.stored_relations = relations[:RELATIONS_SHOWN]
        report.stored_indexes = [dict(row) for row in await connection.fetch(STORED_INDEXES, list(SERVICE_SCHEMAS),
                                                                             RELATIONS_SHOWN)]
    finally:
        await connection.close()


RESULTS_DIR: Final = Path("bench-results")


def write_report(report: Report, output: Path | None = None) -> Path:
    """The report as JSON, to `output` or a new file under RESULTS_DIR named for the time."""
    path = output or RESULTS_DIR / f"bench-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(orjson.dumps(asdict(report), option=orjson.OPT_INDENT_2).decode() + "\n")
    return path
