"""Who may read and change what: API keys carry a role, never a self-declared name.

- bu-reader: sees only what its business unit pays, consumes or provides;
- finance: reads everything;
- auditor: reads everything and may run verify and replay;
- admin: all of that, and may change the registry, budgets and price books
  (published as events) and plans and billing cycles (made with invoicing's
  own functions), every change with the key's owner as the actor.

A key is `thapi_<key id>_<secret>`; only its SHA-256 is stored and it is shown
once. The key ring is the whole table in memory, refreshed in the background,
so checking a key never waits for the database (the quota check depends on it).
Pure: the clock is passed in; it is the wall clock, never the injected one that
demos and tests set for figures, so a key expires when it says it does."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Final

KEY_PREFIX: Final = "thapi"
SECRET_BYTES: Final = 32  # 256 bits: guessing is not an attack worth modelling
KEY_ID_BYTES: Final = 6
KEY_LENGTH_MAX: Final = 200  # longer than any key we issue: refused before hashing


class Role(StrEnum):
    BU_READER = "bu-reader"
    FINANCE = "finance"
    AUDITOR = "auditor"
    ADMIN = "admin"


ROLES: Final = tuple(role.value for role in Role)


@dataclass(frozen=True)
class Principal:
    """The holder of a verified key."""

    key_id: str
    role: Role
    bu: str | None
    owner: str

    @property
    def reads_all(self) -> bool:
        return self.role is not Role.BU_READER

    @property
    def may_audit(self) -> bool:
        return self.role in (Role.AUDITOR, Role.ADMIN)

    @property
    def may_change(self) -> bool:
        return self.role is Role.ADMIN

    def sees(self, *business_units: str | None) -> bool:
        """True when any of the named BUs is this key's (or the key reads all):
        a record is visible to the BU that pays, consumes or provides it."""
        return self.reads_all or (self.bu is not None and self.bu in business_units)


@dataclass(frozen=True)
class KeyRecord:
    key_id: str
    key_sha256: str
    role: Role
    bu: str | None
    owner: str
    expires_at: datetime | None
    revoked_at: datetime | None

    def principal(self) -> Principal:
        return Principal(self.key_id, self.role, self.bu, self.owner)


class KeyRefused(Exception):
    """Why a key is not accepted; the message is safe to return."""


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> tuple[str, str]:
    """(key id, the key). The key is shown once and never stored."""
    key_id = secrets.token_hex(KEY_ID_BYTES)
    return key_id, f"{KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(SECRET_BYTES)}"


class KeyRing:
    """Every API key by its digest, as last read from the database."""

    def __init__(self) -> None:
        self._by_digest: dict[str, KeyRecord] = {}

    def __len__(self) -> int:
        return len(self._by_digest)

    def update(self, records: list[KeyRecord]) -> None:
        for record in records:
            self._by_digest[record.key_sha256] = record

    def verify(self, key: str | None, now: datetime) -> Principal:
        if not key:
            raise KeyRefused("missing API key: send Authorization: Bearer <key>")
        if len(key) > KEY_LENGTH_MAX or not key.startswith(f"{KEY_PREFIX}_"):
            raise KeyRefused("unknown API key")
        wanted = digest(key)
        record = self._by_digest.get(wanted)
        # The digest is the dict key, so the lookup already matched it; compared
        # again in constant time so a near-miss costs what a miss does.
        if record is None or not hmac.compare_digest(record.key_sha256, wanted):
            raise KeyRefused("unknown API key")
        if record.revoked_at is not None:
            raise KeyRefused(f"API key {record.key_id} was revoked")
        if record.expires_at is not None and record.expires_at <= now:
            raise KeyRefused(f"API key {record.key_id} expired at {record.expires_at.isoformat()}")
        return record.principal()
