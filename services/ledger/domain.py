"""The ledger's functional core: a Priced becomes a balanced double-entry
journal entry in the money and Tokens ledgers (DESIGN.md decision 10), linked
into its payer's hash chain. Pure: the shell passes chain heads and posting time."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Final, NamedTuple

from tokenhub.contracts.canonical import canonical_json
from tokenhub.contracts.events import LedgerPosted, Posting, Priced
from tokenhub.contracts.ids import derive_id

GENESIS_HASH: Final = "0" * 64


class UnbalancedEntry(Exception):
    """Debits and credits of an entry differ in one of the ledgers."""


def spend_account(bu: str) -> str:
    return f"bu:{bu}:spend"


def revenue_account(bu: str) -> str:
    return f"bu:{bu}:revenue"


def consumed_account(bu: str) -> str:
    return f"bu:{bu}:consumed"


def served_account(bu: str) -> str:
    return f"bu:{bu}:served"


def _leg(ledger: str, debit_account: str, credit_account: str, quantity: Decimal) -> tuple[Posting, Posting]:
    """Two legs moving `quantity`; a negative quantity (a reversal) swaps the sides."""
    if quantity < 0:
        debit_account, credit_account, quantity = credit_account, debit_account, -quantity
    return (
        Posting(ledger=ledger, account=debit_account, debit=quantity),  # type: ignore[arg-type]
        Posting(ledger=ledger, account=credit_account, credit=quantity),  # type: ignore[arg-type]
    )


def postings_for(priced: Priced) -> tuple[Posting, ...]:
    """money: debit payer spend, credit provider revenue; Tokens: debit consumer
    consumed, credit provider served."""
    legs = _leg("money", spend_account(priced.payer_bu), revenue_account(priced.provider_bu), priced.total_amount)
    legs += _leg("tokens", consumed_account(priced.consumer_bu), served_account(priced.provider_bu), Decimal(priced.total_tokens))
    check_balanced(legs)
    return legs


def check_balanced(postings: tuple[Posting, ...]) -> None:
    for ledger in ("money", "tokens"):
        debit = sum((posting.debit for posting in postings if posting.ledger == ledger), Decimal(0))
        credit = sum((posting.credit for posting in postings if posting.ledger == ledger), Decimal(0))
        if debit != credit:
            raise UnbalancedEntry(f"{ledger} ledger: debits {debit} != credits {credit}")


@dataclass(frozen=True)
class ChainHead:
    chain: str
    sequence: int
    head_hash: str


def entry_id_for(priced_id: uuid.UUID) -> uuid.UUID:
    return derive_id("entry", str(priced_id))


def hash_entry(content: dict[str, object], previous_hash: str) -> str:
    """Each entry's hash covers its canonical content and its predecessor's hash."""
    return hashlib.sha256(previous_hash.encode() + b"\n" + canonical_json(content)).hexdigest()


def hashed_content(posted: LedgerPosted) -> dict[str, object]:
    """What an entry's hash covers: everything but the hash itself."""
    return posted.model_dump(mode="json", exclude_none=True, exclude={"entry_hash"})


def post(priced: Priced, head: ChainHead, posted_at: datetime) -> LedgerPosted:
    """The next entry of the payer's chain for one Priced."""
    return _post_one(priced, head, posted_at)[0]


def _post_one(priced: Priced, head: ChainHead, posted_at: datetime) -> tuple[LedgerPosted, bytes]:
    """An entry and its canonical bytes: the content is dumped once, hashed,
    and written out with its hash, instead of dumping the finished entry again."""
    unhashed = LedgerPosted(
        id=derive_id("posted", str(priced.id)),
        event_time=priced.event_time,
        cause_id=str(priced.id),
        priced_id=priced.id,
        kind=priced.kind,
        corrects_id=priced.corrects_id,
        payer_bu=priced.payer_bu,
        consumer_bu=priced.consumer_bu,
        provider_bu=priced.provider_bu,
        app=priced.app,
        model=priced.model,
        book_id=priced.book_id,
        book_version=priced.book_version,
        currency=priced.currency,
        lines=priced.lines,
        amount=priced.total_amount,
        tokens=priced.total_tokens,
        postings=postings_for(priced),
        chain=head.chain,
        sequence=head.sequence + 1,
        entry_hash="",
        previous_hash=head.head_hash,
        posted_at=posted_at,
        invoice_id=priced.invoice_id,
    )
    content = hashed_content(unhashed)
    entry_hash = hash_entry(content, head.head_hash)
    content["entry_hash"] = entry_hash
    return unhashed.model_copy(update={"entry_hash": entry_hash}), canonical_json(content)


class PostedBatch(NamedTuple):
    posted: list[LedgerPosted]
    payloads: list[bytes]
    """Each entry's canonical bytes, equal to `canonical_json(entry)`."""
    heads: dict[str, ChainHead]


def post_batch(priced: list[Priced], heads: dict[str, ChainHead], posted_at: datetime) -> PostedBatch:
    """Post in arrival order, advancing each payer's chain."""
    result = PostedBatch([], [], dict(heads))
    for event in priced:
        head = result.heads.get(event.payer_bu) or ChainHead(event.payer_bu, 0, GENESIS_HASH)
        entry, payload = _post_one(event, head, posted_at)
        result.heads[event.payer_bu] = ChainHead(event.payer_bu, entry.sequence, entry.entry_hash)
        result.posted.append(entry)
        result.payloads.append(payload)
    return result


def balance_deltas(posted: list[LedgerPosted]) -> dict[tuple[str, str], tuple[Decimal, Decimal]]:
    """(ledger, account) -> (debit, credit) added by a batch, for the projection."""
    deltas: dict[tuple[str, str], tuple[Decimal, Decimal]] = {}
    for entry in posted:
        for posting in entry.postings:
            debit, credit = deltas.get((posting.ledger, posting.account), (Decimal(0), Decimal(0)))
            deltas[(posting.ledger, posting.account)] = (debit + posting.debit, credit + posting.credit)
    return deltas
