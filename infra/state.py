"""The state folder (`.tokenhub/` by default) and the demo's data in it.

`tokenhub demo` keeps its stack's data in the state folder, so that a later
`tokenhub up` there starts on it: PostgreSQL's data directory holds every
service's record, and the empty broker that `tokenhub up` starts is given back
the topics from it (`infra.boot` republishes what each service produced). A
folder whose data is a demo's carries `demo.env`: the mark that a new demo may
replace that data, and the settings the demo ran with (its clock), which
`tokenhub up` there runs with too and hands, in `stack.env`, to every command
in the folder while it runs, so all of them see the demo's day. Nothing else
reads it: tests and benchmarks started in the same folder keep their own clock.

Someone's own data is never touched: where the state folder holds a stack
without that mark, the demo keeps its data in a folder of its own inside it
(`demo/`) and says so. A folder where a stack runs is refused."""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from tokenhub.infra.settings import ENV_PREFIX, STACK_ENV_FILE
from tokenhub.infra.supervisor import STATUS_FILE, AlreadyRunning, UpLock, lock_holder

DEMO_ENV_FILE: Final = "demo.env"
PGDATA: Final = "pgdata"
"""PostgreSQL's data, as `infra.embedded.EmbeddedStack` lays it out."""
KAFKA: Final = "kafka"
"""An Apache Kafka cluster's storage (`tokenhub up --broker kafka`)."""
DEMO_BESIDE: Final = "demo"
"""The demo's own folder inside a state folder that holds someone's own stack."""
DEMO_REPLACED: Final = (PGDATA, KAFKA, STACK_ENV_FILE, STATUS_FILE, DEMO_ENV_FILE)
"""What a new demo removes of a previous demo's: its data and what described its
stack. The logs stay (they are appended to)."""


class NoPlaceForDemo(RuntimeError):
    """Both the state folder and the demo's folder inside it hold someone's own stack."""


def holds_stack(state_dir: Path) -> bool:
    """Whether a stack's data is in `state_dir` (a CLI command's log alone is not)."""
    return (state_dir / PGDATA).exists() or (state_dir / KAFKA).exists()


def holds_demo(state_dir: Path) -> bool:
    return (state_dir / DEMO_ENV_FILE).exists()


@dataclass(frozen=True)
class DemoPlace:
    state_dir: Path
    """Where the demo keeps its data."""
    replaces_demo: bool
    """A previous demo's data is there and will be replaced."""
    beside: Path | None
    """The state folder the demo left alone because it holds someone's own stack."""


def demo_place(state_dir: Path) -> DemoPlace:
    """Where `tokenhub demo` keeps its data: the state folder when it is empty or
    holds a previous demo's data, else the demo's folder inside it. Raises
    AlreadyRunning where a stack (or another demo) runs in the chosen folder."""
    beside = None
    if holds_stack(state_dir) and not holds_demo(state_dir):
        beside, state_dir = state_dir, state_dir / DEMO_BESIDE
        if holds_stack(state_dir) and not holds_demo(state_dir):
            raise NoPlaceForDemo(f"{beside} and {state_dir} both hold a stack that is not a demo's; "
                                 "set TOKENHUB_STATE_DIR to another folder for the demo")
    holder = lock_holder(state_dir)
    if holder is not None:
        raise AlreadyRunning(state_dir, holder.get("pid"), holder.get("since"))
    return DemoPlace(state_dir, holds_stack(state_dir), beside)


def demo_env_text(settings: Mapping[str, str], description: str) -> str:
    return (f"# tokenhub demo: the data in this folder is the demo's ({description});\n"
            "# the next tokenhub demo here replaces it. tokenhub up here runs with these settings\n"
            "# (the environment's go first).\n"
            + "".join(f"{name}={value}\n" for name, value in settings.items()))


def kept_settings(state_dir: Path) -> dict[str, str]:
    """The settings a demo's data was made with (`TOKENHUB_*` lines of its
    demo.env), for `tokenhub up` there; {} in a folder without a demo's data."""
    try:
        text = (state_dir / DEMO_ENV_FILE).read_text()
    except FileNotFoundError:
        return {}
    pairs = (line.strip().partition("=") for line in text.splitlines() if not line.lstrip().startswith("#"))
    return {name: value for name, separator, value in pairs if separator and name.startswith(ENV_PREFIX)}


@contextmanager
def demo_folder(place: DemoPlace, settings: Mapping[str, str], description: str) -> Iterator[Path]:
    """Hold the folder as `tokenhub up` does (a `tokenhub up` or another demo
    there is refused meanwhile), replace a previous demo's data, and mark the
    folder as the demo's before any data is written: a demo stopped half-way is
    still one the next replaces."""
    lock = UpLock(place.state_dir)
    lock.acquire()
    try:
        if holds_stack(place.state_dir) and not holds_demo(place.state_dir):
            # Someone's stack appeared since the place was chosen.
            raise NoPlaceForDemo(f"{place.state_dir} now holds a stack that is not a demo's; run the demo again")
        for name in DEMO_REPLACED:
            path = place.state_dir / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        (place.state_dir / DEMO_ENV_FILE).write_text(demo_env_text(settings, description))
        yield place.state_dir
    finally:
        lock.release()

