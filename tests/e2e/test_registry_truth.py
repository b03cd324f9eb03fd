"""Registry commands that tell the truth, run as a person runs them against the
session's stack: what metering would refuse is refused before it is published,
with the field and the fix; what is published is waited for until metering has
applied or refused it; a change that slips past the CLI is refused by metering
with the same reason, stored with its bytes and dead-lettered, once; queries
about a business unit nobody registered say so."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from tests.integration.support import World, emit, publish_events, read_counters, wait_settled
from tokenhub.contracts.canonical import canonical_json
from tokenhub.contracts.money import format_amount
from tokenhub.contracts.registry import ModelEntry, registry_change
from tokenhub.contracts.tokens import KNOWN_CLASSES
from tokenhub.contracts.topics import DEAD_LETTER, REGISTRY_CHANGED
from tokenhub.infra.pipeline import wait_until
from tokenhub.services.metering import tools
from tokenhub.services.metering.registry import CHOICES_LISTED_MAX
from tokenhub.views.metering import registry_answer

STATE_DIR = Path(tempfile.mkdtemp(prefix="tokenhub-e2e-"))
pytestmark = pytest.mark.asyncio(loop_scope="session")
WAIT_S = 60
NOTHING_PUBLISHED = "; nothing was published"
IDLE_POLLS = 4
"""Empty half-second polls that end reading the dead-letter topic: a refused
change is dead-lettered before its refusal is stored, so it is there by then."""


def _run(backend, *arguments: str) -> subprocess.CompletedProcess[str]:  # noqa: ANN001
    environment = {key: value for key, value in os.environ.items() if not key.startswith("TOKENHUB_")}
    environment.update({"TOKENHUB_BOOTSTRAP_SERVERS": backend.endpoints.bootstrap_servers,
                        "TOKENHUB_DATABASE_URL": backend.endpoints.database_url, "TOKENHUB_STATE_DIR": str(STATE_DIR)})
    return subprocess.run([sys.executable, "-m", "tokenhub.cli.main", *arguments], env=environment,
                          capture_output=True, text=True, timeout=120)


def _refused(result: subprocess.CompletedProcess[str], line: str) -> None:
    """Exit 1 and exactly this one line on stderr."""
    assert (result.returncode, result.stderr.strip()) == (1, line), result.stderr


async def _units(backend) -> list[str]:  # noqa: ANN001
    connection = await asyncpg.connect(backend.endpoints.database_url)
    try:
        return [row["bu_id"] for row in await connection.fetch("select bu_id from metering.business_units order by bu_id")]
    finally:
        await connection.close()


def _listing(units: list[str]) -> str:
    return (f"one of: {', '.join(units)}" if len(units) <= CHOICES_LISTED_MAX
            else f"`tokenhub bu list` shows the {len(units)} registered")


async def _outcome(backend, entity_id: str) -> tuple[int, list[tuple[str, bytes]]]:  # noqa: ANN001
    """(changes applied, [(reason, original bytes) refused]) for an entity id."""
    connection = await asyncpg.connect(backend.endpoints.database_url)
    try:
        applied = await connection.fetchval("select count(*) from metering.registry_changes where entity_id = $1", entity_id)
        refused = await connection.fetch(
            "select reason, original_bytes from metering.registry_refused where entity_id = $1 order by refused_at", entity_id)
        return applied, [(row["reason"], bytes(row["original_bytes"])) for row in refused]
    finally:
        await connection.close()


async def _dead_letters(bootstrap_servers: str, key: bytes) -> list[tuple[bytes, dict[str, str]]]:
    """The dead letters keyed `key`, read from the start until the topic has been idle for two seconds."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    found: list[tuple[bytes, dict[str, str]]] = []
    try:
        partitions = [TopicPartition(DEAD_LETTER.name, p) for p in sorted(consumer.partitions_for_topic(DEAD_LETTER.name) or ())]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        idle_polls = 0
        while idle_polls < IDLE_POLLS:
            batches = await consumer.getmany(timeout_ms=500)
            records = [record for batch in batches.values() for record in batch]
            idle_polls = 0 if records else idle_polls + 1
            found += [(record.value, {name: value.decode() for name, value in record.headers})
                      for record in records if record.key == key]
    finally:
        await consumer.stop()
    return found

async def test_a_model_of_an_unknown_provider_or_class_is_refused_before_it_is_published(backend) -> None:  # noqa: ANN001
    world = World(backend.settings)
    await world.publish(["shop"])
    ghost = f"{world.prefix}-ghost-model"
    nobody = f"{world.prefix}-no-such-bu"
    units = await _units(backend)
    result = _run(backend, "model", "add", ghost, "--provider", nobody, "--modality", "text", "--classes", "input,output",
                  "--reason", "new model")
    _refused(result, f"tokenhub model add: --provider {nobody} is not a registered business unit ({_listing(units)}); "
                     f"register it first with `tokenhub bu add {nobody}`{NOTHING_PUBLISHED}")
    assert result.stdout == ""

    unknown_class = _run(backend, "model", "add", ghost, "--provider", world.provider, "--modality", "text",
                         "--classes", "input,outputs", "--reason", "new model")
    classes = ["input", "cache_read", "cache_write", "output", "reasoning", "image", "video", "audio", "agent_step",
               "tool_call", "api_call", *await _defined_classes(backend)]
    known = (f"one of: {', '.join(classes)}" if len(classes) <= CHOICES_LISTED_MAX
             else "`tokenhub conversion show` and `tokenhub model list` show the classes in use")
    _refused(unknown_class, f"tokenhub model add: --classes outputs is not a known Token class ({known}); give known "
                            f"classes; a conversion table defines new ones (`tokenhub conversion publish`){NOTHING_PUBLISHED}")
    # Nothing reached metering: no change applied and none refused for that model.
    assert await _outcome(backend, ghost) == (0, [])


async def _defined_classes(backend) -> list[str]:  # noqa: ANN001
    """Classes beyond the contract's that conversion tables or models of other tests in the session define."""
    connection = await asyncpg.connect(backend.endpoints.database_url)
    try:
        rows = await connection.fetch("""
            select distinct name from (
                select rule->>'token_class' as name from metering.conversion_tables, jsonb_array_elements(rules) as rule
                union select unnest(token_classes) from metering.models) as classes""")
    finally:
        await connection.close()
    return sorted(row["name"] for row in rows if row["name"] not in KNOWN_CLASSES)


async def test_changes_are_waited_for_until_metering_applied_them(backend, tmp_path: Path) -> None:  # noqa: ANN001
    world = World(backend.settings)
    await world.publish(["shop"])
    team = world.bu("team")
    added = _run(backend, "bu", "add", team, "--name", "Team", "--actor", "alice", "--reason", "new team")
    assert (added.returncode, added.stdout.splitlines()) == (0, [
        f"published business unit {team} (actor alice: new team)",
        "metering applied it: usage sent from now on is metered against it"]), added.stderr
    document = tmp_path / "registry.json"
    document.write_text(json.dumps({
        "business_units": [{"bu_id": world.bu("lab"), "display_name": "Lab"}],
        "models": [{"model_id": f"{world.prefix}-lab-model", "provider_bu": world.bu("lab"), "modality": "text",
                    "token_classes": ["input", "output"]}]}))
    imported = _run(backend, "registry", str(document), "--actor", "alice", "--reason", "the lab")
    assert (imported.returncode, imported.stdout.splitlines()) == (0, [
        "published 2 registry changes", "metering applied them: usage sent from now on is metered against them"])

    # A document naming a unit it does not define is refused whole, before anything is published.
    document.write_text(json.dumps({"models": [{"model_id": f"{world.prefix}-stray", "provider_bu": world.bu("gone"),
                                                "modality": "text", "token_classes": ["input"]}]}))
    stray = _run(backend, "registry", str(document), "--reason", "stray")
    assert stray.returncode == 1 and stray.stderr.startswith(
        f"tokenhub registry: {document}: model {world.prefix}-stray: provider_bu {world.bu('gone')} is not a registered "
        "business unit (")
    assert stray.stderr.strip().endswith(f"register it first with `tokenhub bu add {world.bu('gone')}`{NOTHING_PUBLISHED}")

    unwaited = _run(backend, "bu", "add", world.bu("later"), "--name", "Later", "--reason", "r", "--wait", "0")
    assert (unwaited.returncode, unwaited.stdout.splitlines()[1]) == (0, (
        "not waiting for metering's answer (--wait 0): `tokenhub bu list`, `model list`, `funding list` and "
        "`conversion show` show what it applied"))


async def test_a_change_metering_has_not_answered_is_said_so_and_applied_once_metering_runs(backend) -> None:  # noqa: ANN001
    world = World(backend.settings)
    late = world.bu("late")
    backend.services.stop_one("metering")
    try:
        unanswered = _run(backend, "bu", "add", late, "--name", "Late", "--reason", "r", "--wait", "2")
    finally:
        backend.services.start("metering")
    _refused(unanswered, "tokenhub bu add: metering has not answered within 2 s (is metering running? `tokenhub status`); "
                         "the change waits on registry.changed and metering applies or refuses it when it reads it")

    async def applied() -> bool:
        return (await _outcome(backend, late))[0] == 1
    await wait_until(applied, WAIT_S, "metering, running again, to apply the change")


async def test_funding_with_shares_not_summing_to_100_or_unknown_parties_is_refused(backend) -> None:  # noqa: ANN001
    world = World(backend.settings)
    await world.publish(["shop", "maps"])
    shop, maps, nobody = world.bu("shop"), world.bu("maps"), world.bu("nobody")
    ninety = _run(backend, "funding", "set", world.bu("split"), "--consumer", shop, "--payer", f"{shop}=60",
                  "--payer", f"{maps}=30", "--reason", "x")
    _refused(ninety, f"tokenhub funding set: --payer shares sum to 90 %; give shares that sum to 100 %{NOTHING_PUBLISHED}")
    units = await _units(backend)
    unknown_payer = _run(backend, "funding", "set", world.bu("split"), "--consumer", shop, "--payer", f"{shop}=50",
                         "--payer", f"{nobody}=50", "--reason", "x")
    _refused(unknown_payer, f"tokenhub funding set: --payer {nobody} is not a registered business unit ({_listing(units)}); "
                            f"register it first with `tokenhub bu add {nobody}`{NOTHING_PUBLISHED}")
    unknown_end = _run(backend, "funding", "end", world.bu("never-made"), "--reason", "x")
    assert unknown_end.returncode == 1 and unknown_end.stderr.startswith(
        f"tokenhub funding end: AGREEMENT_ID {world.bu('never-made')} is not a funding agreement (")
    assert await _outcome(backend, world.bu("split")) == (0, [])


async def test_budgets_and_billing_cycles_for_unknown_units_are_refused(backend) -> None:  # noqa: ANN001
    world = World(backend.settings)
    await world.publish(["shop"])
    nobody = world.bu("nobody")
    units = await _units(backend)
    budget = _run(backend, "budget", "set", "--bu", nobody, "--amount", "100", "--reason", "x")
    _refused(budget, f"tokenhub budget set: --bu {nobody} is not a registered business unit ({_listing(units)}); "
                     f"register it first with `tokenhub bu add {nobody}`{NOTHING_PUBLISHED}")
    consumer = _run(backend, "budget", "set", "--bu", world.bu("shop"), "--consumer", nobody, "--amount", "100", "--reason", "x")
    assert consumer.returncode == 1 and consumer.stderr.startswith(
        f"tokenhub budget set: --consumer {nobody} is not a registered business unit (")
    cycle = _run(backend, "billing-cycle", "--bu", nobody, "--every", "week", "--reason", "x")
    _refused(cycle, f"tokenhub billing-cycle: --bu {nobody} is not a registered business unit ({_listing(units)}); "
                    f"register it first with `tokenhub bu add {nobody}`; the billing cycle is not changed")


async def test_queries_about_an_unknown_unit_say_so_and_one_unit_balance_says_what_its_net_means(backend) -> None:  # noqa: ANN001
    world = World(backend.settings)
    await world.publish(["shop"])
    nobody = world.bu("nobody")
    # balance, invoice and replay already did (tests/e2e/test_cli.py, test_queries_fail_in_one_line).
    for command in (("spend", "--bu", nobody), ("budget", "show", "--bu", nobody), ("plan", "list", "--bu", nobody),
                    ("statement", "--bu", nobody, "--from", "2026-03-01T00:00:00+08:00", "--to", "2026-04-01T00:00:00+08:00")):
        result = _run(backend, *command)
        assert result.returncode == 1 and result.stderr.startswith(
            f"tokenhub {' '.join(word for word in command[:2] if not word.startswith('-'))}: --bu {nobody} is not one of: "), (
            command, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1

    before = await read_counters(world.settings)
    await emit(world.settings, [world.usage("shop", 1, 1000, 100)])
    await wait_settled(world.settings, before, 1)
    spend = world.expected_amount(1000, 100)
    shop = _run(backend, "balance", "--bu", world.bu("shop")).stdout.splitlines()
    assert shop[-1] == f"net: {world.bu('shop')} owes {format_amount(spend)} CNY across its accounts (its spend exceeds its revenue)"
    provider = _run(backend, "balance", "--bu", world.provider).stdout.splitlines()
    assert provider[-1] == f"net: {world.provider} is owed {format_amount(spend)} CNY across its accounts (its revenue exceeds its spend)"
    every = _run(backend, "balance").stdout.splitlines()[-1].split()
    assert (every[:4], Decimal(every[4]), every[5:]) == (["net", "positions", "sum", "to"], 0,
                                                         ["(zero", "in", "a", "balanced", "ledger)"])


async def test_a_change_that_slips_past_the_cli_is_refused_by_metering_stored_and_dead_lettered_once(backend) -> None:  # noqa: ANN001
    world = World(backend.settings)
    await world.publish(["shop"])
    ghost, nobody = f"{world.prefix}-ghost-model", world.bu("no-such-bu")
    change = registry_change("model", ModelEntry(model_id=ghost, provider_bu=nobody, modality="text", token_classes=("input",)),
                             ghost, "mallory", "straight onto the topic", datetime.now(UTC))
    value = canonical_json(change)
    await publish_events(world.settings, REGISTRY_CHANGED.name, [(ghost.encode(), value)])

    async def refused() -> bool:
        return bool((await _outcome(backend, ghost))[1])
    await wait_until(refused, WAIT_S, "metering to refuse the change")
    units = await _units(backend)
    reason = (f"model {ghost}: provider_bu {nobody} is not a registered business unit ({_listing(units)}); "
              f"register it first with `tokenhub bu add {nobody}`")
    assert await _outcome(backend, ghost) == (0, [(reason, value)])
    letters = await _dead_letters(backend.endpoints.bootstrap_servers, ghost.encode())
    assert [(letter, headers["tokenhub_reason"], headers["tokenhub_topic"], headers["tokenhub_service"])
            for letter, headers in letters] == [(value, reason, REGISTRY_CHANGED.name, "metering")]

    # Redelivered after the unit exists, the same change keeps its outcome: refused once, dead-lettered once.
    _run(backend, "bu", "add", nobody, "--name", "Now Registered", "--reason", "r")
    await publish_events(world.settings, REGISTRY_CHANGED.name, [(ghost.encode(), value)])
    marker = registry_change("model", ModelEntry(model_id=f"{ghost}-after", provider_bu=nobody, modality="text",
                                                 token_classes=("input",)), f"{ghost}-after", "mallory", "after", datetime.now(UTC))
    await publish_events(world.settings, REGISTRY_CHANGED.name, [(marker.entity_id.encode(), canonical_json(marker))])

    async def marker_applied() -> bool:
        return (await _outcome(backend, marker.entity_id))[0] == 1
    await wait_until(marker_applied, WAIT_S, "metering to apply the change after the redelivery")
    assert await _outcome(backend, ghost) == (0, [(reason, value)])
    # The redelivery was read before the marker (one partition, in order): had it been dead-lettered again, it would be there.
    assert len(await _dead_letters(backend.endpoints.bootstrap_servers, ghost.encode())) == 1


async def test_a_change_metering_refuses_is_answered_with_its_reason(backend) -> None:  # noqa: ANN001
    """A race: the change passed a tool's check, and metering refuses it (here a
    model whose provider is not registered, as when the unit was never applied);
    the answer a command reports (`tokenhub model add` fails with it) names the reason."""
    world = World(backend.settings)
    await world.publish(["shop"])
    ghost, nobody = f"{world.prefix}-raced", world.bu("raced-away")
    change = registry_change("model", ModelEntry(model_id=ghost, provider_bu=nobody, modality="text", token_classes=("input",)),
                             ghost, "alice", "raced", datetime.now(UTC))
    await tools.publish_changes(world.settings, [change])
    applied, reasons, failure = registry_answer(await tools.registry_outcomes(world.settings, [change], WAIT_S), WAIT_S)
    assert (applied, reasons) == (None, [])
    assert failure is not None and failure.startswith(
        f"metering refused it: model {ghost}: provider_bu {nobody} is not a registered business unit (")
    applied, refused = await _outcome(backend, ghost)
    assert (applied, [original for _, original in refused]) == (0, [canonical_json(change)])
