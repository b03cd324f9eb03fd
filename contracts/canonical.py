"""The one canonical JSON form: sorted keys, no insignificant whitespace, UTF-8.
Events hashed or compared byte for byte use it (docs/architecture.md decision 5)."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
from pydantic import BaseModel

_OPTIONS = orjson.OPT_SORT_KEYS


def canonical_json(value: BaseModel | dict[str, Any] | list[Any]) -> bytes:
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json", exclude_none=True)
    return orjson.dumps(value, option=_OPTIONS)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
