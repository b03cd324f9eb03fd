"""The ledger's functional core: a Priced becomes a balanced double-entry
journal entry in the money and Tokens ledgers (docs/architecture.md decision 10), linked
into its payer's hash chain. Pure: the shell passes chain heads and posting time."""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Final, NamedTuple

import msgspec

from tokenhub.contracts.budgets import ConflictingDuplicate
from tokenhub.contracts.canonical import canonical_json
from tokenhub.contracts.codecs import PostedWire, PostingWire, PricedWire, priced_wire
from tokenhub.contracts.events import LedgerPosted, Posting, Priced, decode, unchecked
from tokenhub.contracts.ids import check_slug, derive_id, posted_id
from tokenhub.contracts.money import PRECISION, SCALE, format_amount
from tokenhub.contracts.tokens import check_class_name
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
    """The next entry of the chain whose head is `head`, for one Priced, as the
    contract's model (examples and tests; the hot path keeps the wire form)."""
    return decode(LedgerPosted, _post_one(priced_wire(priced), head, _utc(posted_at), overage)[1])


_ENTRY_ENCODER: Final = msgspec.json.Encoder(order="sorted")
"""The canonical form (`contracts.canonical`): sorted keys, no whitespace, None
left out (the structs omit their None defaults)."""
_SCALE_SUFFIX: Final = _ZERO_TEXT[1:]
"""A whole Token count written as a quantity at the fixed scale: `.000000000000`."""
_CANONICAL_AMOUNT: Final = re.compile(rf"-?[0-9]{{1,{PRECISION - SCALE}}}\.[0-9]{{{SCALE}}}")
"""An amount as the contract writes it (`money.format_amount`)."""


def _utc(posted_at: datetime) -> datetime:
    if posted_at.tzinfo is None:
        raise ValueError("posting time needs a time zone")
    return posted_at.astimezone(UTC)


def _units(amount: str) -> int:
    """An amount at the fixed scale in units of 10^-12, exactly."""
    return int(amount.replace(".", "", 1))


def _as_the_contract_writes(event: PricedWire, value: bytes) -> bool:
    """Whether the contract's model would read `value` into this same event and
    write these same bytes: the bytes are the canonical form of what the
    compiled decoder read (key order, spacing, time and id forms, no unknown
    fields), the event time is in UTC, every amount is at the fixed scale, the
    totals are the sums of the lines, the business units are slugs and the
    classes class names. What the compiled decoder checks itself (types,
    bounds, lengths, literals) it has checked."""
    if event.event_time.tzinfo is not UTC or _CANONICAL_AMOUNT.fullmatch(event.total_amount) is None:
        return False
    total = 0
    tokens = 0
    for line in event.lines:
        if (_CANONICAL_AMOUNT.fullmatch(line.amount) is None
                or _CANONICAL_AMOUNT.fullmatch(line.unit_price_per_million) is None):
            return False
        total += _units(line.amount)
        tokens += line.tokens
        check_class_name(line.token_class)
    if total != _units(event.total_amount) or tokens != event.total_tokens:
        return False
    if event.price_factor is not None and f"{Decimal(event.price_factor):f}" != event.price_factor:
        return False
    check_slug(event.payer_bu)
    check_slug(event.consumer_bu)
    check_slug(event.provider_bu)
    return _ENTRY_ENCODER.encode(event) == value


def read_priced(value: bytes) -> tuple[PricedWire, bytes]:
    """A Priced from tokens.priced, and its canonical bytes (what the journal
    keeps and the entry's hash covers). The compiled decoder reads it; one the
    contract's model would read differently (not written by the contract, or
    not valid) goes through the model, which normalises it or refuses it
    exactly as before."""
    try:
        event = _PRICED_DECODER.decode(value)
        if _as_the_contract_writes(event, value):
            return event, value
    except (msgspec.DecodeError, ValueError, ArithmeticError):
        pass  # the contract's model says what is wrong with it, or reads it its own way
    event = priced_wire(decode(Priced, value))
    return event, _ENTRY_ENCODER.encode(event)


_PRICED_DECODER: Final = msgspec.json.Decoder(PricedWire)


def _post_one(priced: PricedWire, head: ChainHead, posted_at: datetime,
              overage: bool = False) -> tuple[PostedWire, bytes, Transfer]:
    """An entry, its canonical bytes and its transfers, built in the wire form
    (`contracts.codecs.PostedWire`) from the Priced's: the entry's fields are
    the Priced's, already read, plus the movements and the chain. Each ledger
    moves one quantity from one account to another (a negative one, a
    reversal, the other way round), so the four legs balance by construction;
    a unit test holds the bytes equal to `canonical_json` of the validated
    model. `overage`: the payer's quota was exhausted (`budgets.overage_marks`);
    the mark is written only when true, so an entry without it hashes as before."""
    amount_text = priced.total_amount
    amount = Decimal(amount_text)
    money_debit, money_credit = spend_account(priced.payer_bu), revenue_account(priced.provider_bu)
    if amount < 0:  # a negative zero moves nothing and keeps its sign, as the model writes it
        money_debit, money_credit, amount, amount_text = money_credit, money_debit, -amount, amount_text[1:]
    tokens = priced.total_tokens
    tokens_debit, tokens_credit = consumed_account(priced.consumer_bu), served_account(priced.provider_bu)
    if tokens < 0:
        tokens_debit, tokens_credit, tokens = tokens_credit, tokens_debit, -tokens
    tokens_text = f"{tokens}{_SCALE_SUFFIX}"
    movements = Transfer(money_debit, money_credit, amount, tokens_debit, tokens_credit, tokens)
    priced_id = str(priced.id)
    entry = PostedWire(
        id=posted_id(priced_id), schema_version=1, event_time=priced.event_time, cause_id=priced_id,
        type="ledger.posted", priced_id=priced.id, kind=priced.kind, corrects_id=priced.corrects_id,
        payer_bu=priced.payer_bu, consumer_bu=priced.consumer_bu, provider_bu=priced.provider_bu, app=priced.app,
        model=priced.model, book_id=priced.book_id, book_version=priced.book_version, currency=priced.currency,
        lines=priced.lines, amount=priced.total_amount, tokens=priced.total_tokens,
        postings=(PostingWire(ledger="money", account=money_debit, debit=amount_text, credit=_ZERO_TEXT),
                  PostingWire(ledger="money", account=money_credit, debit=_ZERO_TEXT, credit=amount_text),
                  PostingWire(ledger="tokens", account=tokens_debit, debit=tokens_text, credit=_ZERO_TEXT),
                  PostingWire(ledger="tokens", account=tokens_credit, debit=_ZERO_TEXT, credit=tokens_text)),
        chain=head.chain, sequence=head.sequence + 1, previous_hash=head.head_hash, posted_at=posted_at,
        invoice_id=priced.invoice_id, overage=True if overage else None,
    )
    content = _ENTRY_ENCODER.encode(entry)
    entry_hash = _chain_hash(content, head.head_hash)
    return msgspec.structs.replace(entry, entry_hash=entry_hash), _with_hash(content, entry_hash), movements


_HASH_BEFORE: Final = b',"event_time":'
"""The key the entry's hash is written before in sorted order ("currency" <
"entry_hash" < "event_time", every entry has both). Outside strings only: a
quotation mark inside a JSON string is always escaped."""


def _with_hash(content: bytes, entry_hash: str) -> bytes:
    """The entry's canonical bytes: its hashed content with the hash written in
    its sorted place, as encoding the entry again would write it."""
    at = content.index(_HASH_BEFORE)
    return b"".join((content[:at], b',"entry_hash":"', entry_hash.encode(), b'"', content[at:]))


def _chain_hash(content: bytes, previous_hash: str) -> str:
    """`hash_entry` of the canonical content's bytes."""
    return hashlib.sha256(previous_hash.encode() + b"\n" + content).hexdigest()


class PostedBatch(NamedTuple):
    posted: list[PostedWire]
    payloads: list[bytes]
    """Each entry's canonical bytes, equal to `canonical_json` of its model."""
    heads: dict[str, ChainHead]
    transfers: list[Transfer]


def post_batch(priced: Sequence[PricedWire | Priced], heads: dict[str, ChainHead], posted_at: datetime,
               overage: list[bool] | None = None) -> PostedBatch:
    """Post in arrival order, advancing each payer's chain. `overage`: the
    events' marks (none: no mark)."""
    posted_at = _utc(posted_at)
    if overage is None:
        overage = [False] * len(priced)
    result = PostedBatch([], [], dict(heads), [])
    for event, over in zip(priced, overage, strict=True):
        if isinstance(event, Priced):
            event = priced_wire(event)
        head = result.heads.get(event.payer_bu) or ChainHead(event.payer_bu, 0, GENESIS_HASH)
        entry, payload, movements = _post_one(event, head, posted_at, over)
        result.heads[event.payer_bu] = ChainHead(event.payer_bu, entry.sequence, entry.entry_hash)
        result.posted.append(entry)
        result.payloads.append(payload)
        result.transfers.append(movements)
    return result


def balance_deltas(transfers: Sequence[Transfer]) -> dict[tuple[str, str], tuple[Decimal, Decimal]]:
    """(ledger, account) -> (debit, credit) added by a batch, for the projection."""
    deltas: dict[tuple[str, str], tuple[Decimal, Decimal]] = {}
    for movements in transfers:
        tokens = Decimal(movements.tokens)
        for key, debit, credit in ((("money", movements.money_debit), movements.amount, _ZERO),
                                   (("money", movements.money_credit), _ZERO, movements.amount),
                                   (("tokens", movements.tokens_debit), tokens, _ZERO),
                                   (("tokens", movements.tokens_credit), _ZERO, tokens)):
            before = deltas.get(key)
            deltas[key] = (debit, credit) if before is None else (before[0] + debit, before[1] + credit)
    return deltas


# --- a batch: which Priced are new, which conflict, and what they post ------------------

class Received(NamedTuple):
    """A batch of Priced as received: each event in the wire form, its
    canonical bytes (what the journal keeps and the hash covers) and their hash."""

    events: list[PricedWire]
    payloads: list[bytes]
    hashes: list[str]


def receive(values: Sequence[bytes]) -> Received:
    events = []
    payloads = []
    for value in values:
        event, payload = read_priced(value)
        events.append(event)
        payloads.append(payload)
    return Received(events, payloads, [hashlib.sha256(payload).hexdigest() for payload in payloads])


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


def transfer(posted: LedgerPosted | PostedWire) -> Transfer:
    """The transfer form of an entry's four legs (the money ledger's debit and
    credit, then the Tokens ledger's), refused unless they are two transfers."""
    money_debit, money_credit, tokens_debit, tokens_credit = posted.postings
    quantities = [(Decimal(leg.debit), Decimal(leg.credit)) for leg in posted.postings]
    (md_debit, md_credit), (mc_debit, mc_credit), (td_debit, td_credit), (tc_debit, tc_credit) = quantities
    if not (money_debit.ledger == money_credit.ledger == "money" and tokens_debit.ledger == tokens_credit.ledger == "tokens"
            and md_debit == mc_credit and td_debit == tc_credit
            and not (md_credit or mc_debit or td_credit or tc_debit)):
        raise UnbalancedEntry(f"entry for Priced {posted.priced_id} is not two transfers")
    return Transfer(money_debit.account, money_credit.account, md_debit, tokens_debit.account,
                    tokens_credit.account, int(td_debit))


@dataclass(frozen=True)
class PostedEntry:
    """An entry to store: the event in its wire form, its canonical bytes
    (published, not stored: `rebuild_entry` makes them again from the row), the
    Priced it posts (its canonical bytes) and its movements."""

    posted: PostedWire
    payload: bytes
    priced: bytes
    transfer: Transfer


def rebuild_entry(priced: bytes, chain: str, sequence: int, previous_hash: str, posted_at: datetime,
                  overage: bool = False) -> tuple[PostedWire, bytes]:
    """The entry a journal row holds, and its canonical bytes, equal to those
    published when it was posted: the same function of the same Priced, chain
    place, posting time and overage mark."""
    event, _ = read_priced(priced)
    entry, payload, _ = _post_one(event, ChainHead(chain, sequence - 1, previous_hash), _utc(posted_at), overage)
    return entry, payload


class Charge(NamedTuple):
    """What the overage mark reads of a Priced (`budgets.Charge`), its amount exact."""

    kind: str
    payer_bu: str
    consumer_bu: str
    event_time: datetime
    total_amount: Decimal


def charges(events: Sequence[PricedWire]) -> list[Charge]:
    return [Charge(event.kind, event.payer_bu, event.consumer_bu, event.event_time, Decimal(event.total_amount))
            for event in events]


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
                 posted_at: datetime, marks: Callable[[list[PricedWire]], list[bool]] | None = None) -> BatchDecision:
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
    result = post_batch(to_post, heads, posted_at, marks(to_post) if marks is not None and to_post else None)
    entries = [PostedEntry(posted, payload, batch.payloads[index], movements)
               for posted, payload, movements, index in zip(result.posted, result.payloads, result.transfers, fresh,
                                                            strict=True)]
    changed = {entry.posted.chain: result.heads[entry.posted.chain] for entry in entries}
    return BatchDecision(len(batch.events), entries, changed, conflicts)


def month_spend(posted: Sequence[PostedWire], zone: str) -> tuple[dict[tuple[str, str, str], Decimal], dict[str, str]]:
    """(payer, month, consumer) -> amount a batch adds to month-to-date spend by
    event time, and per payer the last Priced that caused it (alerts name it)."""
    spend: dict[tuple[str, str, str], Decimal] = {}
    causes: dict[str, str] = {}
    for entry in posted:
        key = (entry.payer_bu, month_of(entry.event_time, zone), entry.consumer_bu)
        spend[key] = spend.get(key, _ZERO) + Decimal(entry.amount)
        causes[entry.payer_bu] = entry.cause_id
    return spend, causes
