"""API keys as people read them: a new key, shown once, and the list (never the keys)."""

from __future__ import annotations

from typing import Any

from tokenhub.views.text import local, table


def created(key_id: str, key: str, role: str, bu: str | None, owner: str) -> str:
    return (f"key {key_id} ({role}{' for ' + bu if bu else ''}, owner {owner}):\n"
            f"{key}\nIt is shown once; only its SHA-256 is stored.")


def listing(rows: list[dict[str, Any]], zone: str) -> str:
    return table(["key", "role", "bu", "owner", "created", "expires", "revoked", "reason"],
                 [[row["key_id"], row["role"], row["bu"] or "-", row["owner"], local(row["created_at"], zone),
                   local(row["expires_at"], zone) if row["expires_at"] else "-",
                   local(row["revoked_at"], zone) if row["revoked_at"] else "-", row["reason"]]
                  for row in rows], right=set()) if rows else "(no keys)"
