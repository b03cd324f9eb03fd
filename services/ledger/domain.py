"""The ledger's functional core: a Priced becomes a balanced double-entry
journal entry in the money and Tokens ledgers (docs/architecture.md decision 10), linked
into its payer's hash chain. Pure: the shell passes chain heads and posting time."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final, NamedTuple

from pydantic import TypeAdapter

from tokenhub.contracts.budgets import ConflictingDuplicate
from tokenhub.contracts.canonical import canonical_json
from tokenhub.contracts.events import LedgerPosted, Posting, Priced, decode, unchecked
from tokenhub.contracts.ids import derive_id, posted_id
from tokenhub.contracts.money import format_amount
from tokenhub.services.ledger.budgets import month_of

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
    """Two legs moving `quantity`; a negative quantity (a reversal) swaps the sides.
    Built without validation: the quantity is a validated amount or Token count
    and the accounts are made of validated slugs."""
    if quantity < 0:
        debit_account, credit_account, quantity = credit_account, debit_account, -quantity
    return (
        unchecked(Posting, {"ledger": ledger, "account": debit_account, "debit": quantity, "credit": _ZERO}),
        unchecked(Posting, {"ledger": ledger, "account": credit_account, "debit": _ZERO, "credit": quantity}),
    )


_ZERO: Final = Decimal(0)
_ZERO_TEXT: Final = format_amount(_ZERO)


def postings_for(priced: Priced) -> tuple[Posting, ...]:
    """money: debit payer spend, credit provider revenue; Tokens: debit consumer
    consumed, credit provider served."""
    legs = _leg("money", spend_account(priced.payer_bu), revenue_account(priced.provider_bu), priced.total_amount)
    legs += _leg("tokens", consumed_account(priced.consumer_bu), served_account(priced.provider_bu), Decimal(priced.total_tokens))
    check_balanced(legs)
    return legs


def check_balanced(postings: tuple[Posting, ...]) -> None:
    totals: dict[str, list[Decimal]] = {}
    for posting in postings:
        sides = totals.setdefault(posting.ledger, [_ZERO, _ZERO])
        sides[0] += posting.debit
        sides[1] += posting.credit
    for ledger in ("money", "tokens"):
        debit, credit = totals.get(ledger, (_ZERO, _ZERO))
        if debit != credit:
            raise UnbalancedEntry(f"{ledger} ledger: debits {debit} != credits {credit}")


@dataclass(frozen=True)
class ChainHead:
    chain: str
    sequence: int
    head_hash: str


def hash_entry(content: dict[str, object], previous_hash: str) -> str:
    """Each entry's hash covers its canonical content and its predecessor's hash."""
    return hashlib.sha256(previous_hash.encode() + b"\n" + canonical_json(content)).hexdigest()


def hashed_content(posted: LedgerPosted) -> dict[str, object]:
    """What an entry's hash covers: everything but the hash itself."""
    return posted.model_dump(mode="json", exclude_none=True, exclude={"entry_hash"})


def post(priced: Priced, head: ChainHead, posted_at: datetime, *, overage: bool = False) -> LedgerPosted:
    """The next entry of the chain whose head is `head`, for one Priced."""
    return _post_one(priced, priced_content(priced), head, *_posting_time(posted_at), overage)[0]


_FROM_PRICED: Final = ("event_time", "kind", "corrects_id", "payer_bu", "consumer_bu", "provider_bu", "app", "model",
                       "book_id", "book_version", "currency", "lines", "invoice_id")
"""Fields an entry carries as its Priced has them, so their JSON form is taken from the Priced's."""

_DATETIME_JSON: Final = TypeAdapter(datetime)


def _posting_time(posted_at: datetime) -> tuple[datetime, str]:
    """The posting time in UTC and as the entry's JSON writes it."""
    if posted_at.tzinfo is None:
        raise ValueError("posting time needs a time zone")
    posted_at = posted_at.astimezone(UTC)
    return posted_at, _DATETIME_JSON.dump_python(posted_at, mode="json")


def priced_content(priced: Priced) -> dict[str, Any]:
    """A Priced's JSON form: its canonical bytes are `canonical_json` of this."""
    return priced.model_dump(mode="json", exclude_none=True)


def _postings_content(legs: tuple[Posting, ...]) -> list[dict[str, str]]:
    """The legs' JSON form. Each quantity is formatted once: both legs of a pair
    hold the same Decimal, and every leg's other side is `_ZERO` (`_leg`). Texts
    are looked up by identity, so a value formats exactly as `format_amount`
    would format it (a negative zero keeps its sign)."""
    texts: dict[int, str] = {id(_ZERO): _ZERO_TEXT}
    content = []
    for leg in legs:
        debit = texts.get(id(leg.debit)) or texts.setdefault(id(leg.debit), format_amount(leg.debit))
        credit = texts.get(id(leg.credit)) or texts.setdefault(id(leg.credit), format_amount(leg.credit))
        content.append({"ledger": leg.ledger, "account": leg.account, "debit": debit, "credit": credit})
    return content


def _post_one(priced: Priced, content_of_priced: dict[str, Any], head: ChainHead, posted_at: datetime,
              posted_at_json: str, overage: bool = False) -> tuple[LedgerPosted, bytes]:
    """An entry and its canonical bytes. The content is built from the Priced's
    JSON form (dumped once for the archive) instead of validating the entry and
    dumping it again: the entry's fields are the Priced's, already validated,
    plus the postings and the chain. A unit test holds the bytes equal to
    `canonical_json(entry)` and the entry equal to its validated parse.
    `overage`: the payer's quota was exhausted (`budgets.overage_marks`); the
    mark is written only when true, so an entry without it hashes as before."""
    legs = postings_for(priced)
    priced_id = content_of_priced["id"]
    event_id = posted_id(priced_id)
    content = {name: content_of_priced[name] for name in _FROM_PRICED if name in content_of_priced}
    content.update(
        id=str(event_id), schema_version=1, cause_id=priced_id, type=LedgerPosted.TYPE, priced_id=priced_id,
        amount=content_of_priced["total_amount"], tokens=content_of_priced["total_tokens"],
        postings=_postings_content(legs), chain=head.chain, sequence=head.sequence + 1,
        previous_hash=head.head_hash, posted_at=posted_at_json,
    )
    if overage:
        content["overage"] = True
    entry_hash = hash_entry(content, head.head_hash)
    content["entry_hash"] = entry_hash
    entry = unchecked(LedgerPosted, {
        "id": event_id, "schema_version": 1, "event_time": priced.event_time, "cause_id": priced_id,
        "type": LedgerPosted.TYPE, "priced_id": priced.id, "kind": priced.kind, "corrects_id": priced.corrects_id,
        "payer_bu": priced.payer_bu, "consumer_bu": priced.consumer_bu, "provider_bu": priced.provider_bu,
        "app": priced.app, "model": priced.model, "book_id": priced.book_id, "book_version": priced.book_version,
        "currency": priced.currency, "lines": priced.lines, "amount": priced.total_amount,
        "tokens": priced.total_tokens, "postings": legs, "chain": head.chain, "sequence": head.sequence + 1,
        "entry_hash": entry_hash, "previous_hash": head.head_hash, "posted_at": posted_at,
        "invoice_id": priced.invoice_id, "overage": True if overage else None,
    })
    return entry, canonical_json(content)


class PostedBatch(NamedTuple):
    posted: list[LedgerPosted]
    payloads: list[bytes]
    """Each entry's canonical bytes, equal to `canonical_json(entry)`."""
    heads: dict[str, ChainHead]


def post_batch(priced: list[Priced], heads: dict[str, ChainHead], posted_at: datetime,
               contents: list[dict[str, Any]] | None = None, overage: list[bool] | None = None) -> PostedBatch:
    """Post in arrival order, advancing each payer's chain. `contents` are the
    events' `priced_content`, when the caller has them already; `overage` the
    events' marks (none: no mark)."""
    posted_at, posted_at_json = _posting_time(posted_at)
    if contents is None:
        contents = [priced_content(event) for event in priced]
    if overage is None:
        overage = [False] * len(priced)
    result = PostedBatch([], [], dict(heads))
    for event, content, over in zip(priced, contents, overage, strict=True):
        head = result.heads.get(event.payer_bu) or ChainHead(event.payer_bu, 0, GENESIS_HASH)
        entry, payload = _post_one(event, content, head, posted_at, posted_at_json, over)
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


# --- a batch: which Priced are new, which conflict, and what they post ------------------

class Received(NamedTuple):
    """A batch of Priced as received: each event, its JSON form, its canonical
    bytes (what the journal keeps and the hash covers) and their hash."""

    events: list[Priced]
    contents: list[dict[str, Any]]
    payloads: list[bytes]
    hashes: list[str]


def receive(values: Sequence[bytes]) -> Received:
    events = [decode(Priced, value) for value in values]
    contents = [priced_content(event) for event in events]  # dumped once: the stored bytes and the entry's content
    payloads = [canonical_json(content) for content in contents]
    return Received(events, contents, payloads, [hashlib.sha256(payload).hexdigest() for payload in payloads])


class Transfer(NamedTuple):
    """An entry's movements as the journal row holds them: per ledger one debit
    account, one credit account and one quantity, never negative (a reversal
    swaps the sides), so each ledger balances by construction."""

    money_debit: str
    money_credit: str
    amount: Decimal
    tokens_debit: str
    tokens_credit: str
    tokens: int


def transfer(posted: LedgerPosted) -> Transfer:
    """The transfer form of an entry's four legs (`postings_for`: the money
    ledger's debit and credit, then the Tokens ledger's)."""
    money_debit, money_credit, tokens_debit, tokens_credit = posted.postings
    if not (money_debit.ledger == money_credit.ledger == "money" and tokens_debit.ledger == tokens_credit.ledger == "tokens"
            and money_debit.debit == money_credit.credit and tokens_debit.debit == tokens_credit.credit
            and not (money_debit.credit or money_credit.debit or tokens_debit.credit or tokens_credit.debit)):
        raise UnbalancedEntry(f"entry for Priced {posted.priced_id} is not two transfers")
    return Transfer(money_debit.account, money_credit.account, money_debit.debit, tokens_debit.account,
                    tokens_credit.account, int(tokens_debit.debit))


@dataclass(frozen=True)
class PostedEntry:
    """An entry to store: the event, its canonical bytes (published, not
    stored: `rebuild_entry` makes them again from the row), the Priced it posts
    as received and its movements."""

    posted: LedgerPosted
    payload: bytes
    priced: bytes
    transfer: Transfer


def rebuild_entry(priced: bytes, chain: str, sequence: int, previous_hash: str, posted_at: datetime,
                  overage: bool = False) -> tuple[LedgerPosted, bytes]:
    """The entry a journal row holds, and its canonical bytes, equal to those
    published when it was posted: the same function of the same Priced, chain
    place, posting time and overage mark."""
    event = decode(Priced, priced)
    return _post_one(event, priced_content(event), ChainHead(chain, sequence - 1, previous_hash), *_posting_time(posted_at),
                     overage)


@dataclass(frozen=True)
class BatchDecision:
    received: int
    entries: list[PostedEntry]
    heads: dict[str, ChainHead]
    """The new heads of the chains the batch extended."""
    conflicts: list[ConflictingDuplicate]
    """One per copy whose id was posted with other content: it posts nothing."""

    @property
    def duplicates(self) -> int:
        return self.received - len(self.entries) - len(self.conflicts)


def decide_batch(batch: Received, stored: dict[uuid.UUID, bytes], heads: dict[str, ChainHead],
                 posted_at: datetime, marks: Callable[[list[Priced]], list[bool]] | None = None) -> BatchDecision:
    """Exactly once by Priced id: the first copy of an id not stored before is
    posted, in arrival order; a later copy with the same bytes is a duplicate,
    one with other bytes a conflict. `stored`: id -> the Priced bytes posted.
    `marks`: the overage marks of the Priced to post, in order (none: no mark)."""
    kept = {priced_id: hashlib.sha256(payload).hexdigest() for priced_id, payload in stored.items()}
    fresh: list[int] = []
    conflicts: list[ConflictingDuplicate] = []
    for index, event in enumerate(batch.events):
        known = kept.get(event.id)
        if known is None:
            kept[event.id] = batch.hashes[index]
            fresh.append(index)
        elif known != batch.hashes[index]:
            conflicts.append(ConflictingDuplicate(
                id=derive_id("alert", "conflicting_duplicate", str(event.id), batch.hashes[index]), event_time=posted_at,
                cause_id=str(event.id), priced_id=event.id, payer_bu=event.payer_bu, stored_sha256=known,
                received_sha256=batch.hashes[index], detected_at=posted_at))
    to_post = [batch.events[index] for index in fresh]
    result = post_batch(to_post, heads, posted_at, [batch.contents[index] for index in fresh],
                        marks(to_post) if marks is not None and to_post else None)
    entries = [PostedEntry(posted, payload, batch.payloads[index], transfer(posted))
               for posted, payload, index in zip(result.posted, result.payloads, fresh, strict=True)]
    changed = {entry.posted.chain: result.heads[entry.posted.chain] for entry in entries}
    return BatchDecision(len(batch.events), entries, changed, conflicts)


def month_spend(posted: Sequence[LedgerPosted], zone: str) -> tuple[dict[tuple[str, str, str], Decimal], dict[str, str]]:
    """(payer, month, consumer) -> amount a batch adds to month-to-date spend by
    event time, and per payer the last Priced that caused it (alerts name it)."""
    spend: dict[tuple[str, str, str], Decimal] = {}
    causes: dict[str, str] = {}
    for entry in posted:
        key = (entry.payer_bu, month_of(entry.event_time, zone), entry.consumer_bu)
        spend[key] = spend.get(key, _ZERO) + entry.amount
        causes[entry.payer_bu] = str(entry.priced_id)
    return spend, causes
