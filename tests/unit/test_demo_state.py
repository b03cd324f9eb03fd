"""Where `tokenhub demo` keeps its data (`infra.state`): an empty state folder or
a previous demo's is used (the previous demo's data replaced), someone's own
stack is left alone, and a folder where a stack runs is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from tokenhub.infra.state import (
    DEMO_ENV_FILE,
    NoPlaceForDemo,
    demo_folder,
    demo_place,
    holds_demo,
    holds_stack,
    kept_settings,
)
from tokenhub.infra.supervisor import AlreadyRunning, UpLock

CLOCK = {"TOKENHUB_NOW": "2026-03-15T00:05:00+08:00"}


def _own_stack(state_dir: Path) -> None:
    (state_dir / "pgdata" / "data").mkdir(parents=True)
    (state_dir / "pgdata" / "data" / "PG_VERSION").write_text("18\n")


def _previous_demo(state_dir: Path) -> None:
    _own_stack(state_dir)
    (state_dir / DEMO_ENV_FILE).write_text("TOKENHUB_NOW=2026-03-15T00:05:00+08:00\n")


def test_an_empty_state_folder_or_one_with_only_logs_takes_the_demo(tmp_path: Path) -> None:
    state_dir = tmp_path / ".tokenhub"
    place = demo_place(state_dir)
    assert (place.state_dir, place.replaces_demo, place.beside) == (state_dir, False, None)
    (state_dir / "logs").mkdir(parents=True)
    (state_dir / "logs" / "tokenhub.log").write_text("{}\n")
    assert not holds_stack(state_dir)
    assert demo_place(state_dir).state_dir == state_dir


def test_a_previous_demos_data_is_replaced_and_the_folder_marked_with_the_demos_clock(tmp_path: Path) -> None:
    state_dir = tmp_path / ".tokenhub"
    _previous_demo(state_dir)
    (state_dir / "stack.env").write_text("TOKENHUB_BOOTSTRAP_SERVERS=127.0.0.1:1\n")  # left by a killed tokenhub up
    (state_dir / "logs").mkdir()
    place = demo_place(state_dir)
    assert (place.state_dir, place.replaces_demo, place.beside) == (state_dir, True, None)
    with demo_folder(place, CLOCK, "seed 7, 10 usage events") as folder:
        assert folder == state_dir
        assert not holds_stack(state_dir) and not (state_dir / "stack.env").exists()
        assert (state_dir / "logs").is_dir()
        assert holds_demo(state_dir)
        assert "seed 7, 10 usage events" in (state_dir / DEMO_ENV_FILE).read_text()
    assert kept_settings(state_dir) == CLOCK


def test_someones_own_stack_is_left_alone_and_the_demo_goes_beside_it(tmp_path: Path) -> None:
    state_dir = tmp_path / ".tokenhub"
    _own_stack(state_dir)
    place = demo_place(state_dir)
    assert (place.state_dir, place.replaces_demo, place.beside) == (state_dir / "demo", False, state_dir)
    with demo_folder(place, CLOCK, "the demo"):
        pass
    assert (state_dir / "pgdata" / "data" / "PG_VERSION").read_text() == "18\n"
    assert not holds_demo(state_dir) and kept_settings(state_dir) == {}
    assert kept_settings(state_dir / "demo") == CLOCK
    _own_stack(state_dir / "demo")
    (state_dir / "demo" / DEMO_ENV_FILE).unlink()
    with pytest.raises(NoPlaceForDemo, match="both hold a stack that is not a demo's"):
        demo_place(state_dir)


def test_a_folder_where_a_stack_runs_is_refused_with_its_pid(tmp_path: Path) -> None:
    state_dir = tmp_path / ".tokenhub"
    _previous_demo(state_dir)
    running = UpLock(state_dir)
    running.acquire()
    try:
        with pytest.raises(AlreadyRunning, match=r"already running in .*\.tokenhub \(pid \d+, since "):
            demo_place(state_dir)
    finally:
        running.release()
    assert demo_place(state_dir).replaces_demo


def test_a_demo_holds_its_folder_as_tokenhub_up_does(tmp_path: Path) -> None:
    state_dir = tmp_path / ".tokenhub"
    with demo_folder(demo_place(state_dir), CLOCK, "the demo"):
        with pytest.raises(AlreadyRunning):
            demo_place(state_dir)
        with pytest.raises(AlreadyRunning):
            UpLock(state_dir).acquire()
    assert demo_place(state_dir).state_dir == state_dir


def test_kept_settings_read_only_tokenhub_lines(tmp_path: Path) -> None:
    (tmp_path / DEMO_ENV_FILE).write_text("# a comment=1\nTOKENHUB_NOW=2026-03-15T00:05:00+08:00\nPATH=/x\nnonsense\n")
    assert kept_settings(tmp_path) == CLOCK
    assert kept_settings(tmp_path / "nowhere") == {}
