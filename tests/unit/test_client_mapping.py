"""Provider usage objects become disjoint Token classes: nothing counted twice."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tokenhub.client import from_anthropic_usage, from_dashscope_usage, from_openai_usage
from tokenhub.client.mapping import UsageMappingError


def test_openai_chat_completions_cached_and_reasoning_are_taken_out() -> None:
    usage = {"prompt_tokens": 2006, "completion_tokens": 300, "total_tokens": 2306,
             "prompt_tokens_details": {"cached_tokens": 1920}, "completion_tokens_details": {"reasoning_tokens": 192}}
    assert from_openai_usage(usage) == {"input_tokens": 86, "cache_read_tokens": 1920, "output_tokens": 108,
                                        "reasoning_tokens": 192}


def test_openai_responses_api_shape() -> None:
    usage = {"input_tokens": 5000, "output_tokens": 1200, "input_tokens_details": {"cached_tokens": 4096},
             "output_tokens_details": {"reasoning_tokens": 1024}}
    assert from_openai_usage(usage) == {"input_tokens": 904, "cache_read_tokens": 4096, "output_tokens": 176,
                                        "reasoning_tokens": 1024}


def test_openai_objects_with_attributes_and_missing_details() -> None:
    usage = SimpleNamespace(prompt_tokens=10, completion_tokens=5, prompt_tokens_details=None, completion_tokens_details=None)
    assert from_openai_usage(usage) == {"input_tokens": 10, "cache_read_tokens": 0, "output_tokens": 5, "reasoning_tokens": 0}


def test_anthropic_input_already_excludes_the_cache() -> None:
    usage = {"input_tokens": 21, "cache_creation_input_tokens": 188086, "cache_read_input_tokens": 0, "output_tokens": 393}
    assert from_anthropic_usage(usage) == {"input_tokens": 21, "cache_read_tokens": 0, "cache_write_tokens": 188086,
                                           "output_tokens": 393, "reasoning_tokens": 0}


def test_dashscope_native_and_compatible_shapes() -> None:
    native = {"input_tokens": 3019, "output_tokens": 104, "total_tokens": 3123,
              "prompt_tokens_details": {"cached_tokens": 2048}, "output_tokens_details": {"reasoning_tokens": 40}}
    assert from_dashscope_usage(native) == {"input_tokens": 971, "cache_read_tokens": 2048, "output_tokens": 64,
                                            "reasoning_tokens": 40}
    compatible = {"prompt_tokens": 3019, "completion_tokens": 104, "prompt_tokens_details": {"cached_tokens": 2048}}
    assert from_dashscope_usage(compatible)["input_tokens"] == 971


@pytest.mark.parametrize("mapper", [from_openai_usage, from_dashscope_usage])
def test_every_token_lands_in_exactly_one_class(mapper) -> None:  # noqa: ANN001
    usage = {"prompt_tokens": 1000, "completion_tokens": 500, "prompt_tokens_details": {"cached_tokens": 400},
             "completion_tokens_details": {"reasoning_tokens": 100}}
    classes = mapper(usage)
    assert sum(classes.values()) == 1500
    assert all(value >= 0 for value in classes.values())


@pytest.mark.parametrize("usage", [
    {"prompt_tokens": 10, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 11}},
    {"prompt_tokens": 10, "completion_tokens": 5, "completion_tokens_details": {"reasoning_tokens": 6}},
    {"prompt_tokens": -1, "completion_tokens": 5},
    {"prompt_tokens": 1.5, "completion_tokens": 5},
])
def test_inconsistent_usage_is_refused(usage: dict) -> None:
    with pytest.raises(UsageMappingError):
        from_openai_usage(usage)
