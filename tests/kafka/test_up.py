"""`tokenhub up --broker kafka` as a person runs it: Apache Kafka (one node
here, to keep the tier short; the three-node shape is the tier's cluster) with
SASL/SCRAM over TLS, and the commands of another terminal finding its address,
credentials and certificate authority in `.tokenhub/stack.env`. Stopped with
Ctrl-C, nothing is left running. A second stack beside the tier's cluster costs
two minutes on a busy machine, so it is opt-in (`pytest -m soak tests/kafka`);
the tier's own cluster serves the same commands through a stack.env
(test_cli.py)."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Final

import pytest

from tests.e2e.test_up import (
    ENTRIES,
    EXPECTED,
    ROOT,
    _environment,
    _figures,
    _ledger_duplicates,
    _stop_up,
    _tokenhub,
    _usage_file,
    _wait_for,
)
from tests.e2e.conftest import tmp_path  # noqa: F401 - a fixture: a folder PostgreSQL's own user can traverse
from tokenhub.audit.log import read_topic
from tokenhub.contracts.topics import USAGE_REPORTED

START_TIMEOUT_S: Final = 240
"""A Kafka node, PostgreSQL and four services on two busy cores."""
SETTLE_TIMEOUT_S: Final = 150


def _start_up(cwd: Path) -> subprocess.Popen[bytes]:
    output = (cwd / "up.log").open("ab")
    process = subprocess.Popen([sys.executable, "-m", "tokenhub.cli.main", "up", "--broker", "kafka", "--brokers", "1"],
                               cwd=cwd, env=_environment(), stdout=output, stderr=subprocess.STDOUT,
                               start_new_session=True)
    output.close()
    stack_env = cwd / ".tokenhub" / "stack.env"
    try:
        _wait_for("tokenhub up --broker kafka to write .tokenhub/stack.env",
                  lambda: stack_env.exists() or process.poll() is not None, bool, START_TIMEOUT_S)
    except AssertionError:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
        raise
    if process.poll() is not None:
        raise AssertionError(f"tokenhub up exited with {process.returncode}: {(cwd / 'up.log').read_text()[-4000:]}")
    return process


@pytest.mark.soak
def test_up_on_apache_kafka_serves_secured_commands(tmp_path: Path) -> None:  # noqa: F811
    started = time.monotonic()
    up = _start_up(tmp_path)
    try:
        settings = dict(line.split("=", 1) for line in (tmp_path / ".tokenhub" / "stack.env").read_text().split() if "=" in line)
        assert settings["TOKENHUB_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
        assert settings["TOKENHUB_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
        assert Path(settings["TOKENHUB_KAFKA_SSL_CAFILE"]).is_file()
        assert (tmp_path / ".tokenhub" / "stack.env").stat().st_mode & 0o077 == 0, "stack.env holds a password"
        _tokenhub(tmp_path, "registry", str(ROOT / "infra/demo/registry.yaml"), "--reason", "the demo registry")
        _wait_for("the registry's nine business units", lambda: len(json.loads(_tokenhub(tmp_path, "bu", "list", "--json").stdout)),
                  lambda count: count == 9, START_TIMEOUT_S)
        _tokenhub(tmp_path, "pricebook", "publish", str(ROOT / "infra/demo/pricebook.yaml"), "--retroactive",
                  "--reason", "the demo prices")
        sent = _tokenhub(tmp_path, "emit", str(_usage_file(tmp_path / "usage.jsonl")))
        assert f"sent {ENTRIES} usage events" in sent.stdout
        _wait_for("the exact balances of the usage sent", lambda: _figures(tmp_path), lambda seen: seen == EXPECTED,
                  SETTLE_TIMEOUT_S)
        # Every client of the other terminal went through SASL/SCRAM over TLS; the log holds what it sent.
        with pytest.MonkeyPatch.context() as patch:
            for name, value in settings.items():
                patch.setenv(name, value)
            usage = asyncio.run(read_topic(settings["TOKENHUB_BOOTSTRAP_SERVERS"], USAGE_REPORTED.name,
                                           expected=ENTRIES, idle_timeout_s=5.0))
        assert len(usage) == ENTRIES
        assert _ledger_duplicates(tmp_path) == 0
    finally:
        leftovers = _stop_up(up)
    assert leftovers == [], f"processes left behind: {leftovers}"
    assert not (tmp_path / ".tokenhub" / "stack.env").exists()

    print(f"\ntokenhub up --broker kafka: start, 70 events and stop in {time.monotonic() - started:.0f} s")
