"""The chart of accounts (decision 10, docs/architecture.md): one account per business unit
and kind, named `bu:<slug>:<kind>`. Money moves between `spend` and `revenue`,
Tokens between `consumed` and `served`. Built and read here only."""

from __future__ import annotations

from typing import Final, Literal, get_args

AccountKind = Literal["spend", "revenue", "consumed", "served"]

ACCOUNT_KINDS: Final = frozenset(get_args(AccountKind))
DEBIT_NORMAL: Final = frozenset({"spend", "consumed"})
"""Kinds whose balance is debits - credits; revenue and served are credits - debits."""
PREFIX: Final = "bu"


class NotAnAccount(ValueError):
    """A name that is not `bu:<slug>:<kind>` with a known kind."""


def account_name(bu: str, kind: AccountKind) -> str:
    return f"{PREFIX}:{bu}:{kind}"


def parse_account(name: str) -> tuple[str, AccountKind]:
    """(business unit, kind) of an account name."""
    prefix, separator, rest = name.partition(":")
    bu, separator_2, kind = rest.rpartition(":")
    if prefix != PREFIX or not separator or not separator_2 or not bu or kind not in ACCOUNT_KINDS:
        raise NotAnAccount(f"{name!r} is not an account name (bu:<business unit>:spend|revenue|consumed|served)")
    return bu, kind  # type: ignore[return-value]


def bu_accounts_pattern(bu: str) -> str:
    """A SQL LIKE pattern for every account of `bu`."""
    return f"{PREFIX}:{bu}:%"
