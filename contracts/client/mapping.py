"""Provider usage objects into disjoint Token classes (docs/architecture.md decision 2).

OpenAI and DashScope count cached tokens inside prompt tokens and reasoning
inside completion tokens; Anthropic reports cache reads and writes beside
uncached input. The result has each token in exactly one class.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class UsageMappingError(ValueError):
    pass


def _get(usage: Mapping[str, Any] | Any, name: str) -> Any:
    if isinstance(usage, Mapping):
        return usage.get(name)
    return getattr(usage, name, None)


def _count(usage: Mapping[str, Any] | Any, *path: str) -> int:
    value: Any = usage
    for name in path:
        if value is None:
            return 0
        value = _get(value, name)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UsageMappingError(f"{'.'.join(path)} must be a non-negative integer, got {value!r}")
    return value


def _disjoint(total_input: int, cached: int, total_output: int, reasoning: int) -> dict[str, int]:
    if cached > total_input:
        raise UsageMappingError(f"cached tokens {cached} exceed prompt tokens {total_input}")
    if reasoning > total_output:
        raise UsageMappingError(f"reasoning tokens {reasoning} exceed completion tokens {total_output}")
    return {
        "input_tokens": total_input - cached,
        "cache_read_tokens": cached,
        "output_tokens": total_output - reasoning,
        "reasoning_tokens": reasoning,
    }


def from_openai_usage(usage: Mapping[str, Any] | Any) -> dict[str, int]:
    """Chat Completions (`prompt_tokens`…) or Responses (`input_tokens`…) usage."""
    if _get(usage, "prompt_tokens") is not None:
        return _disjoint(
            _count(usage, "prompt_tokens"),
            _count(usage, "prompt_tokens_details", "cached_tokens"),
            _count(usage, "completion_tokens"),
            _count(usage, "completion_tokens_details", "reasoning_tokens"),
        )
    return _disjoint(
        _count(usage, "input_tokens"),
        _count(usage, "input_tokens_details", "cached_tokens"),
        _count(usage, "output_tokens"),
        _count(usage, "output_tokens_details", "reasoning_tokens"),
    )


def from_anthropic_usage(usage: Mapping[str, Any] | Any) -> dict[str, int]:
    """Anthropic's `input_tokens` already exclude cache reads and writes."""
    return {
        "input_tokens": _count(usage, "input_tokens"),
        "cache_read_tokens": _count(usage, "cache_read_input_tokens"),
        "cache_write_tokens": _count(usage, "cache_creation_input_tokens"),
        "output_tokens": _count(usage, "output_tokens"),
        "reasoning_tokens": 0,
    }


def from_dashscope_usage(usage: Mapping[str, Any] | Any) -> dict[str, int]:
    """DashScope, in its OpenAI-compatible form or its native one (`input_tokens`,
    `output_tokens`, cached inside input, reasoning inside output)."""
    if _get(usage, "prompt_tokens") is not None:
        return from_openai_usage(usage)
    return _disjoint(
        _count(usage, "input_tokens"),
        _count(usage, "prompt_tokens_details", "cached_tokens") or _count(usage, "input_tokens_details", "cached_tokens"),
        _count(usage, "output_tokens"),
        _count(usage, "output_tokens_details", "reasoning_tokens"),
    )
