"""The CLI in another terminal of a stack on Apache Kafka: it finds the
cluster's addresses, SCRAM credentials and certificate authority in the state
folder's stack.env (as `tokenhub up --broker kafka` writes it), publishes the
registry and a price book, emits usage and reads exact balances back."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from tests.e2e.test_up import ENTRIES, EXPECTED, ROOT, _figures, _tokenhub, _usage_file, _wait_for
from tokenhub.infra.settings import STACK_ENV_FILE

SETTLE_TIMEOUT_S = 120


@pytest.fixture
def terminal(kafka) -> Path:  # noqa: ANN001
    """A working folder whose `.tokenhub/stack.env` names the tier's stack, and nothing else."""
    folder = Path(tempfile.mkdtemp(prefix="tokenhub-cli-"))
    (folder / ".tokenhub").mkdir()
    kafka.stack.write_env_file(folder / ".tokenhub" / STACK_ENV_FILE)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_the_cli_reaches_the_secured_cluster_through_stack_env(terminal: Path) -> None:
    stack_env = (terminal / ".tokenhub" / STACK_ENV_FILE)
    assert "TOKENHUB_KAFKA_SECURITY_PROTOCOL=SASL_SSL" in stack_env.read_text()
    assert stack_env.stat().st_mode & 0o077 == 0, "stack.env holds a password"
    _tokenhub(terminal, "registry", str(ROOT / "infra/demo/registry.yaml"), "--reason", "the demo registry")
    _tokenhub(terminal, "pricebook", "publish", str(ROOT / "infra/demo/pricebook.yaml"), "--retroactive",
              "--reason", "the demo prices")
    sent = _tokenhub(terminal, "emit", str(_usage_file(terminal / "usage.jsonl")))
    assert f"sent {ENTRIES} usage events" in sent.stdout
    # The tier's other tests post to their own business units in the same database.
    _wait_for("the exact balances of the usage sent", lambda: _figures(terminal),
              lambda seen: {bu: seen.get(bu) for bu in EXPECTED} == EXPECTED, SETTLE_TIMEOUT_S)
