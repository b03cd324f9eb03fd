"""End-to-end tests run `tokenhub` as people do, with PostgreSQL among its children."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def tmp_path() -> Iterator[Path]:
    """A folder of its own under the system's temporary folder, not under
    pytest's: pytest closes its own base folder (mode 0700) at the start of every
    session, and PostgreSQL, run as its own user, must traverse the parents of
    its data folder while it runs, whoever else starts a test session meanwhile."""
    folder = Path(tempfile.mkdtemp(prefix="tokenhub-up-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
