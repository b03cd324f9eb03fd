"""A batch over HTTP is split into its elements' own bytes, so a rejected
element is stored exactly as the producer sent it."""

from __future__ import annotations

import orjson
from hypothesis import given
from hypothesis import strategies as st

from tokenhub.services.metering.http import BATCH, _split, array_elements


def test_elements_keep_their_bytes_whitespace_order_and_escapes() -> None:
    first = b'{ "id" : "a,b]", "data": {"n": [1, 2, {"x": "}"}]} }'
    second = b'{"id":"q\\"uote\\\\","source":"s"}'
    body = b"[\n  " + first + b" ,\n" + second + b"\n]"
    assert array_elements(body) == [first, second]
    assert _split(body, BATCH) == [first, second]


def test_empty_and_scalar_elements() -> None:
    assert array_elements(b"[]") == []
    assert array_elements(b'[1, "x", null, [2, 3]]') == [b"1", b'"x"', b"null", b"[2, 3]"]


def test_a_body_that_is_not_an_array_is_one_event() -> None:
    assert _split(b'{"id": 1}', BATCH) == [b'{"id": 1}']
    assert _split(b"[1, 2", BATCH) == [b"[1, 2"]


json_values = st.recursive(st.none() | st.booleans() | st.integers(-10**9, 10**9) | st.text(max_size=12),
                           lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
                           max_leaves=12)


@given(st.lists(json_values, max_size=6), st.sampled_from([b"", b" ", b"\n  "]))
def test_every_element_parses_back_to_what_was_sent(items: list, spacing: bytes) -> None:  # noqa: ANN001
    parts = [orjson.dumps(item) for item in items]
    body = b"[" + spacing + (b"," + spacing).join(parts) + spacing + b"]"
    assert array_elements(body) == parts
