"""Long work shows that it moves, on stderr, so that what a command prints on
stdout (text or --json) stays clean. What it prints is `tokenhub.views`."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from typing import Final, TypeVar

T = TypeVar("T")
PROGRESS_STEPS: Final = 10
"""A tenth at a time: enough to see it move, few enough lines in a log."""
BAR_WIDTH: Final = 30


def progress(items: Sequence[T], label: str) -> Iterator[T]:
    """Yield items, reporting every tenth on stderr so long work shows it moves."""
    total = len(items)
    step = max(1, total // PROGRESS_STEPS)
    for index, item in enumerate(items, start=1):
        yield item
        if index % step == 0 or index == total:
            ending = "" if sys.stderr.isatty() and index < total else "\n"
            prefix = "\r" if sys.stderr.isatty() else ""
            print(f"{prefix}{label}: {index}/{total} ({100 * index // max(total, 1)}%)", end=ending,
                  file=sys.stderr, flush=True)


def progress_bar(what: str, done: int, total: int | None) -> None:
    """Long runs show that they move, on stderr so that --json output stays clean."""
    if total:
        filled = BAR_WIDTH * min(done, total) // total
        print(f"\r{what}: [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {done}/{total}", end="" if done < total else "\n",
              file=sys.stderr, flush=True)
    else:
        print(f"{what}: {done}", file=sys.stderr, flush=True)
