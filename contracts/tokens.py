"""Token classes: disjoint, so nothing is counted twice (docs/architecture.md decision 2)."""

from __future__ import annotations

import re
from typing import Annotated, Final

from pydantic import AfterValidator

TEXT_CLASSES: Final = ("input", "cache_read", "cache_write", "output", "reasoning")
"""Text Token classes; `input` is uncached input, `output` visible output only."""

NON_TEXT_CLASSES: Final = ("image", "video", "audio", "agent_step", "tool_call", "api_call")
"""Classes the conversion table may define for non-text units."""

KNOWN_CLASSES: Final = TEXT_CLASSES + NON_TEXT_CLASSES

CONTEXT_CLASSES: Final = ("input", "cache_read", "cache_write")
"""The whole input of a request, which selects its context-length tier."""

_CLASS_NAME: Final = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


_KNOWN: Final = frozenset(KNOWN_CLASSES)
_POSITION: Final = {name: index for index, name in enumerate(KNOWN_CLASSES)}


def check_class_name(name: str) -> str:
    if name in _KNOWN:
        return name
    if not _CLASS_NAME.fullmatch(name):
        raise ValueError(f"token class {name!r} is not a lower-case identifier")
    return name


TokenClass = Annotated[str, AfterValidator(check_class_name)]


def class_order(name: str) -> tuple[int, str]:
    """Sort key: text classes first in their canonical order, then the rest by name."""
    return (_POSITION.get(name, len(KNOWN_CLASSES)), name)


def context_input_tokens(tokens: dict[str, int]) -> int:
    """The request's whole input: uncached input plus cache reads and writes."""
    return sum(tokens.get(name, 0) for name in CONTEXT_CLASSES)
