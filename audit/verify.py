"""`tokenhub verify`: the hash chains against the heads published elsewhere,
and docs/architecture.md's invariants 1-6, recomputed with this module's own code from
the stored rows of every service (read-only tools may read every schema).

Each check yields violations that name what is wrong precisely enough to find
it: a journal row by chain, sequence and the Priced it posts; an event by its id."""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_DOWN, ROUND_HALF_EVEN, ROUND_HALF_UP, ROUND_UP, Decimal, localcontext
from typing import Any, Final, NamedTuple
from zoneinfo import ZoneInfo

import asyncpg
import msgspec
import orjson

from tokenhub.audit.balances import ACCOUNT_TOTALS, PRICED_DECODER, PricedFacts, diff, figures_of, rebuild
from tokenhub.audit.log import Progress, TopicRecord, loads, loads_many, read_topic, silent
from tokenhub.audit.replay import SELECT_PROJECTION
from tokenhub.audit.reprice import ConsumedFacts, load_pricing_inputs, reprice
from tokenhub.contracts.accounts import account_name, parse_account
from tokenhub.contracts.ids import NAMESPACE
from tokenhub.contracts.periods import parse_time
from tokenhub.contracts.stored import StoredPayloadError, unpack
from tokenhub.contracts.topics import LEDGER_POSTED

GENESIS: Final = "0" * 64
_GENESIS_PLACE: Final = (0, GENESIS)
ROUNDING: Final = {"half_even": ROUND_HALF_EVEN, "half_up": ROUND_HALF_UP, "down": ROUND_DOWN, "up": ROUND_UP}
COMPANY_ZONE_DEFAULT: Final = "Asia/Shanghai"
"""The settings' default company time zone: months, which invoicing's totals are
checked by, begin and end in it. Callers with settings pass theirs."""
VIOLATIONS_SHOWN_MAX: Final = 50
"""Violations listed per check; the count is always complete."""


@dataclass(frozen=True)
class Violation:
    check: str
    subject: str
    detail: str


@dataclass
class Check:
    name: str
    title: str
    examined: int = 0
    violations: list[Violation] = field(default_factory=list)
    skipped: str | None = None

    def fail(self, subject: str, detail: str) -> None:
        self.violations.append(Violation(self.name, subject, detail))

    @property
    def ok(self) -> bool:
        return not self.violations


class StepTime(NamedTuple):
    seconds: float
    cpu_seconds: float
    """CPU of this process; the database's is not in it."""


@dataclass
class VerifyReport:
    checks: list[Check]
    scope: str | None
    steps: dict[str, StepTime] = field(default_factory=dict)
    """Where the time went, step by step (for the benchmark; not part of the JSON document)."""

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    @property
    def violations(self) -> list[Violation]:
        return [violation for check in self.checks for violation in check.violations]

    def document(self) -> dict[str, Any]:
        """The report as JSON of a stable shape (`tokenhub verify --json`), every violation listed."""
        return {
            "ok": self.ok,
            "scope": self.scope,
            "checks": [{"name": check.name, "title": check.title, "ok": check.ok, "examined": check.examined,
                        "skipped": check.skipped,
                        "violations": [{"subject": violation.subject, "detail": violation.detail}
                                       for violation in check.violations]}
                       for check in self.checks],
        }


def canonical(value: Any) -> bytes:
    """The canonical JSON form: sorted keys, no whitespace, UTF-8 (a Decimal
    is refused: amounts travel as strings)."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def entry_hash(content: dict[str, Any], previous_hash: str) -> str:
    """sha256 over the predecessor's hash, a newline and the canonical content without its own hash."""
    body = {key: value for key, value in content.items() if key != "entry_hash"}
    return hashlib.sha256(previous_hash.encode() + b"\n" + canonical(body)).hexdigest()


def row_name(chain: str, sequence: int, priced_id: object) -> str:
    return f"chain {chain} sequence {sequence} (Priced {priced_id})"


# --- chains ------------------------------------------------------------------------------

# Each chain in sequence order, through the journal's (chain, sequence) index,
# its columns in the order check_chains unpacks them,
# from a server-side cursor in batches. The amount comes as its text at the
# fixed scale: it is compared with the Priced's text, not computed with.
SELECT_JOURNAL: Final = """
select priced_id::text as priced_id, chain, sequence, event_time, posted_at, money_debit, money_credit,
       amount::text as amount, tokens_debit, tokens_credit, tokens, entry_hash, priced, overage, app
from ledger.journal
where $1::text is null or chain = $1
order by chain, sequence
"""
SELECT_ENTRIES_AT: Final = """
select chain, sequence, posted_at, priced, overage from ledger.journal where (chain, sequence) in (select * from unnest($1::text[], $2::bigint[]))
"""
SELECT_HEADS: Final = "select chain, sequence, head_hash from ledger.chains where $1::text is null or chain = $1"
FETCH_ROWS: Final = 5_000
"""Journal rows per fetch from the cursor: a few MB."""

ZERO_TEXT: Final = "0.000000000000"
SCALE_SUFFIX: Final = ".000000000000"
"""A whole Token count written as a quantity at the fixed scale."""


class _Leg(msgspec.Struct, frozen=True):
    """A posting, its fields in sorted order: encoded, it is its canonical JSON."""

    account: str
    credit: str
    debit: str
    ledger: str


class _Entry(msgspec.Struct, frozen=True, omit_defaults=True, kw_only=True):
    """A LedgerPosted without its hash, its fields declared (so encoded) in
    sorted order and the absent ones omitted: encoded, it is the canonical JSON
    the hash covers."""

    amount: str
    app: str | None = None
    book_id: str | None = None
    book_version: int | None = None
    cause_id: str
    chain: str
    consumer_bu: str
    corrects_id: str | None = None
    currency: str
    event_time: str
    id: str
    invoice_id: str | None = None
    kind: str
    lines: msgspec.Raw
    model: str
    overage: bool | None = None
    payer_bu: str
    posted_at: str
    postings: msgspec.Raw
    previous_hash: str
    priced_id: str
    provider_bu: str
    schema_version: int
    sequence: int
    tokens: int
    type: str


if list(_Entry.__struct_fields__) != sorted(_Entry.__struct_fields__) or list(_Leg.__struct_fields__) != sorted(_Leg.__struct_fields__):
    raise RuntimeError("an entry's fields must be declared in sorted order: they are encoded in that order")
_ENCODER: Final = msgspec.json.Encoder()


def _transfer(debit_account: str, credit_account: str, quantity: str) -> tuple[str, str, str]:
    """(debit account, credit account, quantity) for a quantity written at the
    fixed scale; a negative one moves the other way round. A negative zero
    moves nothing and keeps its sign, as the ledger wrote it."""
    if quantity[0] == "-" and quantity.strip("-0.") != "":
        return credit_account, debit_account, quantity[1:]
    return debit_account, credit_account, quantity


Transfers = tuple[tuple[str, str, str], tuple[str, str, str]]
"""Money and Tokens: (debit account, credit account, quantity at the fixed scale) each."""


def expected_transfers(priced: PricedFacts) -> Transfers:
    """The chart of accounts applied to a Priced, written out here: money from
    the payer's spend to the provider's revenue, Tokens from the consumer's
    consumed to the provider's served."""
    money = _transfer(f"bu:{priced.payer_bu}:spend", f"bu:{priced.provider_bu}:revenue", priced.total_amount)
    goods = _transfer(f"bu:{priced.consumer_bu}:consumed", f"bu:{priced.provider_bu}:served",
                      f"{priced.total_tokens}{SCALE_SUFFIX}")
    return money, goods


_NAMESPACE: Final = NAMESPACE.bytes


def posted_id_text(priced_id: str) -> str:
    """The id of the LedgerPosted that posts a Priced, written out here: uuid5
    over the Token Hub namespace and "posted", the unit separator, the Priced id."""
    digest = bytearray(hashlib.sha1(_NAMESPACE + b"posted\x1f" + priced_id.encode(), usedforsecurity=False).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # the RFC 4122 variant
    text = digest.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def posted_at_text(posted_at: datetime) -> str:
    """A posting time as an entry writes it: UTC, `Z`, microseconds when there are any."""
    return posted_at.astimezone(UTC).isoformat().replace("+00:00", "Z")


_NEEDS_ESCAPING: Final = re.compile(r'["\\\x00-\x1f]')


def _postings(transfers: Transfers) -> msgspec.Raw:
    """The four legs' canonical JSON. Written directly when no name or quantity
    needs escaping in JSON (accounts are made of slugs, quantities of digits),
    else encoded field by field."""
    (money_debit, money_credit, amount), (tokens_debit, tokens_credit, tokens) = transfers
    if _NEEDS_ESCAPING.search(f"{money_debit}{money_credit}{amount}{tokens_debit}{tokens_credit}{tokens}") is None:
        return msgspec.Raw(
            f'[{{"account":"{money_debit}","credit":"{ZERO_TEXT}","debit":"{amount}","ledger":"money"}},'
            f'{{"account":"{money_credit}","credit":"{amount}","debit":"{ZERO_TEXT}","ledger":"money"}},'
            f'{{"account":"{tokens_debit}","credit":"{ZERO_TEXT}","debit":"{tokens}","ledger":"tokens"}},'
            f'{{"account":"{tokens_credit}","credit":"{tokens}","debit":"{ZERO_TEXT}","ledger":"tokens"}}]'.encode())
    return msgspec.Raw(_ENCODER.encode((
        _Leg(money_debit, ZERO_TEXT, amount, "money"), _Leg(money_credit, amount, ZERO_TEXT, "money"),
        _Leg(tokens_debit, ZERO_TEXT, tokens, "tokens"), _Leg(tokens_credit, tokens, ZERO_TEXT, "tokens"))))


def entry_bytes(priced: PricedFacts, chain: str, sequence: int, previous_hash: str, posted_at: str,
                transfers: Transfers | None = None, overage: bool = False) -> bytes:
    """The canonical JSON of the entry a journal row stands for, as the ledger
    published it without its hash: the Priced's fields, its movements in the
    chart of accounts, its chain place and posting time, and the overage mark
    when the row has it (written only when true)."""
    return _ENCODER.encode(_Entry(
        amount=priced.total_amount, cause_id=priced.id, chain=chain, consumer_bu=priced.consumer_bu,
        currency=priced.currency, event_time=priced.event_time, id=posted_id_text(priced.id), kind=priced.kind,
        lines=priced.lines, model=priced.model, payer_bu=priced.payer_bu, posted_at=posted_at,
        postings=_postings(transfers or expected_transfers(priced)), previous_hash=previous_hash, priced_id=priced.id,
        provider_bu=priced.provider_bu, schema_version=1, sequence=sequence, tokens=priced.total_tokens,
        type="ledger.posted", app=priced.app, book_id=priced.book_id, book_version=priced.book_version,
        corrects_id=priced.corrects_id, invoice_id=priced.invoice_id, overage=True if overage else None))


def entry_content(priced: bytes, chain: str, sequence: int, previous_hash: str, posted_at: datetime,
                  overage: bool = False) -> dict[str, Any]:
    """The same entry as a JSON object, to name the fields where it differs from a published one."""
    return loads_many(entry_bytes(PRICED_DECODER.decode(unpack(priced)), chain, sequence, previous_hash,
                                  posted_at_text(posted_at), overage=overage))


def entry_hash_of(entry: bytes, previous_hash: str) -> str:
    return hashlib.sha256(previous_hash.encode() + b"\n" + entry).hexdigest()


class StoredEntry(NamedTuple):
    chain: str
    sequence: int
    priced_id: str
    entry_hash: str


def _transfer_differs(row: asyncpg.Record, priced: PricedFacts, transfers: Transfers) -> list[str]:
    """What of a journal row's own columns disagrees with its Priced."""
    (money_debit, money_credit, amount), (tokens_debit, tokens_credit, tokens) = transfers
    differing = []
    if row["money_debit"] != money_debit or row["money_credit"] != money_credit or row["amount"] != amount.lstrip("-"):
        differing.append("money")
    if (row["tokens_debit"] != tokens_debit or row["tokens_credit"] != tokens_credit
            or f"{row['tokens']}{SCALE_SUFFIX}" != tokens.lstrip("-")):
        differing.append("tokens")
    if row["chain"] != priced.payer_bu:
        differing.append("chain")
    if not _same_time(priced.event_time, row["event_time"]):
        differing.append("event_time")
    if row["priced_id"] != priced.id:
        differing.append("priced_id")
    if not _same_app(row["app"], priced.app, row["priced"]):
        differing.append("app")
    return differing


def _same_app(stored: str | None, priced_app: str | None, priced_bytes: bytes) -> bool:
    """Whether a row's app column is its Priced's app. Rows written before the
    column (migration 0037) have none, and hold their Priced as raw JSON."""
    return stored == priced_app or (stored is None and priced_bytes[:1] == b"{")


def _same_time(text: str, stored: datetime) -> bool:
    """Whether an ISO time names the stored moment. Read by the standard
    library's compiled parser: a time without its zone reads as naive, which
    equals no stored (aware) time, so it is refused as `parse_time` refuses it."""
    try:
        return datetime.fromisoformat(text) == stored
    except (TypeError, ValueError):
        return False  # not a time: it cannot be the stored time


class EntryFact(NamedTuple):
    chain: str
    sequence: int
    priced_id: str
    """As the row has it (a rewritten row may name another Priced than the one it holds)."""
    priced: PricedFacts
    overage: bool = False
    """The row's mark: posted while its payer's quota was exhausted."""

    @property
    def name(self) -> str:
        return row_name(self.chain, self.sequence, self.priced_id)


async def check_chains(connection: asyncpg.Connection, scope: str | None, chains: Check, posts: Check,
                       progress: Progress = silent, counted: asyncio.Future[int] | None = None,
                       ) -> tuple[dict[str, list[StoredEntry]], list[EntryFact]]:
    """Recompute every entry from the Priced its row holds and its place in the
    chain, hash it and check the stored hash, the links, the sequences and the
    stored heads; check the row's movements against its Priced (`posts`).
    Streams each chain in order from a server-side cursor, a batch of rows at
    a time; keeps per entry its place, hash and the Priced's facts. `counted`
    is given the number of entries in the snapshot read, as soon as it is known."""
    stored: dict[str, list[StoredEntry]] = defaultdict(list)
    facts: list[EntryFact] = []
    previous: dict[str, tuple[int, str]] = {}
    posted_at: tuple[datetime | None, str] = (None, "")
    decode = PRICED_DECODER.decode
    async with connection.transaction(isolation="repeatable_read", readonly=True):
        total = await connection.fetchval(COUNT_ENTRIES, scope)
        if counted is not None:
            counted.set_result(total)
        cursor = await connection.cursor(SELECT_JOURNAL, scope)
        while rows := await cursor.fetch(FETCH_ROWS):
            for row in rows:
                (priced_id, chain, sequence, event_time, row_posted_at, money_debit, money_credit, amount,
                 tokens_debit, tokens_credit, tokens, entry_hash, priced_bytes, overage, app) = row
                last_sequence, last_hash = previous.get(chain, _GENESIS_PLACE)
                stored_hash = entry_hash.hex()
                previous[chain] = (sequence, stored_hash)
                if sequence != last_sequence + 1:
                    chains.fail(row_name(chain, sequence, priced_id), f"sequence follows {last_sequence}: entries missing or repeated")
                if row_posted_at != posted_at[0]:  # a batch of entries shares its posting time
                    posted_at = (row_posted_at, posted_at_text(row_posted_at))
                try:
                    priced = decode(unpack(priced_bytes))
                    transfers = expected_transfers(priced)
                    recomputed = entry_hash_of(entry_bytes(priced, chain, sequence, last_hash, posted_at[1], transfers,
                                                                      overage), last_hash)
                except (msgspec.DecodeError, msgspec.ValidationError, StoredPayloadError) as error:
                    chains.fail(row_name(chain, sequence, priced_id), f"its Priced cannot be read: {error}")
                    continue
                if recomputed != stored_hash:
                    chains.fail(row_name(chain, sequence, priced_id), "stored hash is not the hash of the entry its Priced "
                                "and place make (the row was rewritten, or the entry before it)")
                (expected_money_debit, expected_money_credit, expected_amount), (
                    expected_tokens_debit, expected_tokens_credit, expected_tokens) = transfers
                # The usual case in one comparison; what differs is named only when something does.
                if not (money_debit == expected_money_debit and money_credit == expected_money_credit
                        and tokens_debit == expected_tokens_debit and tokens_credit == expected_tokens_credit
                        and chain == priced.payer_bu and priced_id == priced.id
                        and amount == expected_amount.lstrip("-") and f"{tokens}{SCALE_SUFFIX}" == expected_tokens.lstrip("-")
                        and _same_time(priced.event_time, event_time) and _same_app(app, priced.app, priced_bytes)):
                    differing = _transfer_differs(row, priced, transfers)
                    if differing:
                        posts.fail(row_name(chain, sequence, priced_id),
                                   f"does not post what its Priced says: {', '.join(differing)} differ")
                stored[chain].append(StoredEntry(chain, sequence, priced_id, stored_hash))
                facts.append(EntryFact(chain, sequence, priced_id, priced, overage))
            chains.examined += len(rows)
            if chains.examined < total:
                progress("chains", chains.examined, total)
        for head in await connection.fetch(SELECT_HEADS, scope):
            last = previous.get(head["chain"])
            if last is None or (head["sequence"], head["head_hash"]) != last:
                chains.fail(f"chain {head['chain']}", f"stored head #{head['sequence']} is not the last entry "
                                                      f"#{last[0] if last else 0}")
    return stored, facts


# --- the heads held elsewhere: ledger.posted and invoices ----------------------------------

class PublishedHead(msgspec.Struct, frozen=True):
    """What a published LedgerPosted says about its place, decoded alone."""

    chain: str | None = None
    sequence: int | None = None
    entry_hash: str | None = None
    priced_id: str | None = None


PUBLISHED_DECODER: Final = msgspec.json.Decoder(PublishedHead)


def published_head(value: bytes) -> PublishedHead | None:
    try:
        return PUBLISHED_DECODER.decode(value)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def _without_hashes(content: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in content.items() if key not in ("entry_hash", "previous_hash")}


async def check_published(connection: asyncpg.Connection | None, stored: dict[str, list[StoredEntry]],
                          published: list[TopicRecord], check: Check,
                          head_of: Callable[[bytes], PublishedHead | None] | None = None) -> None:
    """Against the public log: every sequence published once with the stored
    hash. Where they differ, the first entry whose content differs is the one
    rewritten; later ones were only re-hashed to hide it (the journal rows
    behind a difference are read again to tell which). `head_of` gives a
    record's head decoded while it was read, if it was."""
    heads: dict[str, dict[int, tuple[PublishedHead, bytes]]] = defaultdict(dict)
    for record in published:
        head = (head_of or published_head)(record.value)
        if head is None:
            check.fail(f"ledger.posted partition {record.partition} offset {record.offset}", "not a JSON object")
            continue
        if head.chain is None or head.sequence is None:
            check.fail(f"ledger.posted partition {record.partition} offset {record.offset}", "names no chain and sequence")
            continue
        earlier = heads[head.chain].get(head.sequence)
        if earlier is not None and earlier[0].entry_hash != head.entry_hash:
            check.fail(f"chain {head.chain} sequence {head.sequence}", "published twice with different hashes")
        heads[head.chain].setdefault(head.sequence, (head, record.value))
    differing = [entry for chain, entries in stored.items() for entry in entries
                 if (seen := heads.get(chain, {}).get(entry.sequence)) is not None and seen[0].entry_hash != entry.entry_hash]
    contents: dict[tuple[str, int], dict[str, Any]] = {}
    if differing and connection is not None:
        rows = await connection.fetch(SELECT_ENTRIES_AT, [entry.chain for entry in differing],
                                      [entry.sequence for entry in differing])
        contents = {(row["chain"], row["sequence"]): entry_content(row["priced"], row["chain"], row["sequence"], "",
                                                                     row["posted_at"], row["overage"]) for row in rows}
    for chain, entries in sorted(stored.items()):
        seen = heads.get(chain, {})
        rewritten_found = False
        for entry in entries:
            check.examined += 1
            event = seen.get(entry.sequence)
            if event is None:
                check.fail(row_name(chain, entry.sequence, entry.priced_id),
                           "never published on ledger.posted: its sequence has a gap there")
                continue
            if event[0].entry_hash == entry.entry_hash:
                continue
            name = row_name(chain, entry.sequence, entry.priced_id)
            published_content = loads_many(event[1])
            content = contents.get((chain, entry.sequence), {})
            if _without_hashes(published_content) != _without_hashes(content):
                changed = sorted(key for key in set(published_content) | set(content)
                                 if key not in ("entry_hash", "previous_hash") and published_content.get(key) != content.get(key))
                check.fail(name, f"REWRITTEN: differs from the entry published on ledger.posted in {', '.join(changed)}")
                rewritten_found = True
            else:
                check.fail(name, "hash differs from the published head " + (
                    "(re-hashed after an earlier rewritten entry)" if rewritten_found else "with the same content"))
        for sequence in sorted(set(seen) - {entry.sequence for entry in entries}):
            check.fail(f"chain {chain} sequence {sequence} (Priced {seen[sequence][0].priced_id})",
                       "published on ledger.posted but missing from the journal (deleted?)")
    for chain in sorted(set(heads) - set(stored)):
        check.fail(f"chain {chain}", f"{len(heads[chain])} entries published on ledger.posted, none in the journal")


SELECT_INVOICE_HEADS: Final = "select payer_bu, period, payload from invoicing.invoices"


async def check_invoice_heads(connection: asyncpg.Connection, stored: dict[str, list[StoredEntry]], scope: str | None,
                              check: Check) -> None:
    # By sequence, not by position: a deleted entry must not shift the blame onto its successor.
    by_sequence = {(entry.chain, entry.sequence): entry for entries in stored.values() for entry in entries}
    for row in await connection.fetch(SELECT_INVOICE_HEADS):
        for head in loads_many(row["payload"]).get("chain_heads") or ():
            if scope is not None and head["chain"] != scope:
                continue
            check.examined += 1
            entry = by_sequence.get((head["chain"], head["sequence"]))
            if entry is None:
                check.fail(f"invoice {row['payer_bu']} {row['period']}",
                           f"names head {head['chain']}#{head['sequence']}, not in the journal")
            elif entry.entry_hash != head["entry_hash"]:
                check.fail(row_name(entry.chain, entry.sequence, entry.priced_id),
                           f"hash differs from the head printed on invoice {row['payer_bu']} {row['period']}")


# --- invariant 1: debits = credits ---------------------------------------------------------

# Balanced by construction: one quantity moves from a debit to a credit account
# per ledger. What can still be wrong is a row outside that form (the database
# refuses one, unless its checks were bypassed) and a projection out of balance.
ENTRIES_NOT_TRANSFERS: Final = """
select chain, sequence, priced_id from ledger.journal
where ($1::text is null or chain = $1)
  and not (amount >= 0 and tokens >= 0 and money_debit <> money_credit and tokens_debit <> tokens_credit
           and money_debit like 'bu:%' and money_credit like 'bu:%' and tokens_debit like 'bu:%' and tokens_credit like 'bu:%')
"""
BALANCE_TOTALS: Final = "select ledger, sum(debit_total) as debit, sum(credit_total) as credit from ledger.balances group by ledger"
COUNT_ENTRIES: Final = "select count(*) from ledger.journal where $1::text is null or chain = $1"


async def check_double_entry(connection: asyncpg.Connection, scope: str | None, check: Check) -> None:
    check.examined = await connection.fetchval(COUNT_ENTRIES, scope)
    for row in await connection.fetch(ENTRIES_NOT_TRANSFERS, scope):
        check.fail(row_name(row["chain"], row["sequence"], row["priced_id"]),
                   "is not a transfer from one account to another of each ledger with a quantity of zero or more")
    for row in await connection.fetch(BALANCE_TOTALS):
        if row["debit"] != row["credit"]:
            check.fail(f"{row['ledger']} ledger", f"ledger.balances: total debits {row['debit']} != total credits {row['credit']}")


# --- invariant 2: each accepted usage event has its effect exactly once ------------------

SELECT_PARKED_IDS: Final = "select consumed_id::text as id from pricing.parked"
# What pricing published that the journal has not posted: an anti-join on both
# primary keys, where the database is the faster place (it sends no payload
# unless a payer's scope asks whose consumption each one was: the payload is
# stored packed, so that is read here).
SELECT_PRICED_NOT_POSTED: Final = """
select priced.priced_id::text as id, case when $1::text is not null then priced.payload end as payload
from pricing.priced priced
where not exists (select from ledger.journal journal where journal.priced_id = priced.priced_id)
"""


class _Consumed(msgspec.Struct, frozen=True):
    consumed_id: str


_CONSUMED_OF: Final = msgspec.json.Decoder(_Consumed)
SELECT_COUNTERS: Final = """
select 'metering.' || name, value from metering.counters union all select 'pricing.' || name, value from pricing.counters
union all select 'ledger.' || name, value from ledger.counters union all select 'invoicing.' || name, value from invoicing.counters
"""
# What pricing received once each: a charge per consumption priced, or a parked row.
COUNT_CONSUMED: Final = """
select (select count(*) from pricing.priced where kind = 'charge') + (select count(*) from pricing.parked)
"""
COUNT_PARKED: Final = "select count(*) from pricing.parked"


async def check_exactly_once(connection: asyncpg.Connection, scope: str | None, consumed: dict[str, ConsumedFacts],
                             facts: list[EntryFact], check: Check) -> None:
    """Each TokenConsumed posted once (net of reversals and corrections) or
    parked; every Priced pricing published posted. The journal's rows were
    checked against their Priced while the chains were read."""
    by_consumed: dict[str, list[PricedFacts]] = defaultdict(list)
    for fact in facts:
        if fact.priced.kind != "adjustment":
            by_consumed[fact.priced.consumed_id].append(fact.priced)
    parked = {row["id"] for row in await connection.fetch(SELECT_PARKED_IDS)}
    for row in await connection.fetch(SELECT_PRICED_NOT_POSTED, scope):
        source = None if row["payload"] is None else consumed.get(_CONSUMED_OF.decode(unpack(row["payload"])).consumed_id)
        if scope is not None and (source is None or source.payer_bu != scope):
            continue
        check.fail(f"Priced {row['id']}", "published by pricing but not posted (lost, or in flight: verify a settled pipeline)")
    for consumed_id, source in consumed.items():
        if scope is not None and source.payer_bu != scope:
            continue
        check.examined += 1
        effects = by_consumed.get(consumed_id, ())
        if consumed_id in parked:
            if effects:
                check.fail(_usage_name(source), f"parked and yet posted {len(effects)} times")
            continue
        if len(effects) == 1 and effects[0].kind == "charge":  # by far the most: charged once, never repriced
            if effects[0].total_tokens != sum(source.tokens.values()):
                check.fail(_usage_name(source), f"net Tokens posted {effects[0].total_tokens} != "
                                                f"Tokens consumed {sum(source.tokens.values())}")
            continue
        if not effects:
            check.fail(_usage_name(source), "neither posted nor parked")
            continue
        kinds: dict[str, int] = defaultdict(int)
        for priced in effects:
            kinds[priced.kind] += 1
        if kinds["charge"] != 1 or kinds["reversal"] != kinds["correction"]:
            check.fail(_usage_name(source), f"posted {kinds['charge']} charges, {kinds['reversal']} reversals, "
                                            f"{kinds['correction']} corrections")
        net_tokens = sum(priced.total_tokens for priced in effects)
        expected = sum(source.tokens.values())
        if net_tokens != expected:
            check.fail(_usage_name(source), f"net Tokens posted {net_tokens} != Tokens consumed {expected}")
    for consumed_id in sorted(set(by_consumed) - set(consumed)):
        check.fail(f"TokenConsumed {consumed_id}", "posted, but pricing has no such consumption")
    if scope is None:
        await _check_counters(connection, check)


def _usage_name(source: ConsumedFacts) -> str:
    return f"usage {source.usage_source} {source.usage_id} payer {source.payer_bu} (TokenConsumed {source.id})"


async def _check_counters(connection: asyncpg.Connection, check: Check) -> None:
    counters = {row[0]: row[1] for row in await connection.fetch(SELECT_COUNTERS)}
    get = counters.get
    consumed = await connection.fetchval(COUNT_CONSUMED)
    parked = await connection.fetchval(COUNT_PARKED)
    entries = await connection.fetchval(COUNT_ENTRIES, None)
    comparisons = (
        ("metering.consumed (TokenConsumed emitted)", get("metering.consumed", 0), "pricing.received", get("pricing.received", 0)),
        ("pricing.received", get("pricing.received", 0), "charges in pricing.priced + rows in pricing.parked", consumed),
        ("pricing.parked - pricing.unparked", get("pricing.parked", 0) - get("pricing.unparked", 0), "rows in pricing.parked", parked),
        ("ledger.posted", get("ledger.posted", 0), "rows in ledger.journal", entries),
    )
    for left_name, left, right_name, right in comparisons:
        if left != right:
            check.fail("counters", f"{left_name} = {left} but {right_name} = {right}")


# --- invariant 3: the projection equals a rebuild ---------------------------------------------

SELECT_JOURNAL_TOTALS: Final = ACCOUNT_TOTALS.format(where="")


async def check_projection(connection: asyncpg.Connection, facts: list[EntryFact], scope: str | None, check: Check) -> None:
    projected = {(row["ledger"], row["account"]): (row["debit_total"], row["credit_total"])
                 for row in await connection.fetch(SELECT_PROJECTION)}
    journal = {(row["ledger"], row["account"]): (row["debit_total"], row["credit_total"])
               for row in await connection.fetch(SELECT_JOURNAL_TOTALS)}
    for key in sorted(set(projected) | set(journal)):
        if scope is not None and parse_account(key[1])[0] != scope:
            continue
        check.examined += 1
        zero = (Decimal(0), Decimal(0))
        if projected.get(key, zero) != journal.get(key, zero):
            check.fail(f"ledger.balances ({key[0]}, {key[1]})",
                       f"debit/credit {_pair(projected.get(key, zero))} but the journal sums to {_pair(journal.get(key, zero))}")
    if scope is None:
        rebuilt = rebuild(fact.priced for fact in facts)
        for difference in diff(rebuilt, figures_of(
                {"account": account, "debit_total": debit, "credit_total": credit}
                for (_, account), (debit, credit) in projected.items())):
            check.fail(difference.row(None), f"{difference.figure}: rebuilt from the journal's Priced {difference.rebuilt} "
                                             f"!= projected {difference.projected}")


def _pair(pair: tuple[Decimal, Decimal]) -> str:
    return f"{pair[0]}/{pair[1]}"


# --- invariant 4: every Priced recomputable ------------------------------------------------

SELECT_INVOICE_PAYLOADS: Final = "select invoice_id::text as invoice_id, payload from invoicing.invoices"


async def check_prices(connection: asyncpg.Connection, facts: list[EntryFact], consumed: dict[str, ConsumedFacts],
                       books: dict[tuple[str, int], dict], check: Check) -> None:
    events = [fact.priced for fact in facts]
    by_id = {fact.priced.id: fact for fact in facts}
    repricing = reprice(events, consumed, books)
    check.examined = len(events)
    for priced_id, kind, recorded, recomputed in repricing.mismatches:
        check.fail(by_id[priced_id].name, f"{kind}: amount {recorded} but its TokenConsumed and book version give {recomputed}")
    for priced_id, why in repricing.unrecomputable:
        check.fail(by_id[priced_id].name, f"cannot be recomputed: {why}")
    # An invoice's period tier lines of a model (its own period's, and re-evaluations of
    # earlier periods' late usage) and the adjustments the ledger posted for them agree in sum.
    lines: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    for row in await connection.fetch(SELECT_INVOICE_PAYLOADS):
        for line in loads_many(row["payload"])["lines"]:
            if line["kind"] == "period_tier":
                lines[(row["invoice_id"], line["model"])] += Decimal(line["amount"])
    posted: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    named: dict[tuple[str, str], list[str]] = defaultdict(list)
    for event in events:
        if event.kind == "adjustment":
            key = (event.invoice_id or "", event.model)
            posted[key] += Decimal(event.total_amount)
            named[key].append(by_id[event.id].name)
    for key in sorted(posted):
        if lines.get(key) != posted[key]:
            check.fail(f"{', '.join(named[key])} (adjustments of invoice {key[0]}, {key[1]})",
                       f"amount {posted[key]} but the invoice has period tier lines of {lines.get(key)}")


# --- invariant 5: invoices and settlements ------------------------------------------------------
# Invoicing keeps running totals per invoice-line key (not each posting): an invoice is
# checked against the totals assigned to it, and the totals against the journal, per
# payer and month (periods nest in months), so a posting lost or counted twice shows.

SELECT_INVOICES: Final = "select invoice_id::text as invoice_id, payer_bu, period, payload from invoicing.invoices"
SELECT_ASSIGNED_TOTALS: Final = """
select invoice_id::text as invoice_id, period, kind, consumer_bu, provider_bu, model, token_class,
       unit_price_per_million, tokens, amount
from invoicing.line_totals where invoice_id is not null
"""
SELECT_ASSIGNED_POSTINGS: Final = """
select invoice_id::text as invoice_id, sum(postings) as postings from invoicing.chain_totals
where invoice_id is not null group by invoice_id
"""
SELECT_TOTALS_BY_MONTH: Final = """
select payer_bu, to_char((period_end - interval '1 microsecond') at time zone $1, 'YYYY-MM') as month, kind,
       consumer_bu, provider_bu, model, sum(tokens) as tokens, sum(amount) as amount
from invoicing.line_totals group by 1, 2, 3, 4, 5, 6
"""
SELECT_WAITING_COUNT: Final = "select count(*) from invoicing.waiting"
SELECT_SETTLEMENTS: Final = "select period, revision, payload from invoicing.settlements order by period, revision"
SELECT_INVOICES_BY_MONTH: Final = """
select to_char((period_end - interval '1 microsecond') at time zone $1, 'YYYY-MM') as month, invoice_id::text as invoice_id,
       payer_bu, number, period, payload
from invoicing.invoices
"""


def round_once(amount: Decimal, minor_units: int, mode: str) -> Decimal:
    with localcontext() as context:
        context.prec = 60
        return amount.quantize(Decimal(1).scaleb(-minor_units), rounding=ROUNDING[mode])


def _totals_kind(kind: str | None) -> str:
    return {"adjustment": "period_tier", "reversal": "reversal"}.get(kind or "charge", "charge")


_MONTHS_BY_MINUTE: Final[dict[tuple[str, ZoneInfo], str]] = {}
MONTHS_CACHED_MAX: Final = 100_000
"""Minutes whose month is remembered: a day of usage is 1,440 of them."""


def _month_of(event_time: str, zone: ZoneInfo) -> str:
    """The month of an event time in the company zone. A UTC time (`Z`, as
    events are written) is looked up by its minute: since 1970 zones are whole
    minutes off UTC, so every time of one UTC minute falls in one month."""
    if len(event_time) >= 17 and event_time[-1] == "Z" and event_time[16] == ":" and event_time >= "1970":
        key = (event_time[:16], zone)
        month = _MONTHS_BY_MINUTE.get(key)
        if month is None:
            month = parse_time(event_time).astimezone(zone).strftime("%Y-%m")
            if len(_MONTHS_BY_MINUTE) >= MONTHS_CACHED_MAX:
                _MONTHS_BY_MINUTE.clear()
            _MONTHS_BY_MINUTE[key] = month
        return month
    return parse_time(event_time).astimezone(zone).strftime("%Y-%m")


async def check_invoices(connection: asyncpg.Connection, scope: str | None, minor_units: int, facts: list[EntryFact],
                         zone: str, check: Check) -> None:
    assigned: dict[str, list[asyncpg.Record]] = defaultdict(list)
    for row in await connection.fetch(SELECT_ASSIGNED_TOTALS):
        assigned[row["invoice_id"]].append(row)
    counted = {row["invoice_id"]: row["postings"] for row in await connection.fetch(SELECT_ASSIGNED_POSTINGS)}
    for row in await connection.fetch(SELECT_INVOICES):
        if scope is not None and row["payer_bu"] != scope:
            continue
        check.examined += 1
        invoice = loads(row["payload"])
        subject = f"invoice {row['payer_bu']}-{invoice['number']:04d} ({row['period']})"
        lines_sum = sum((Decimal(line["amount"]) for line in invoice["lines"]), Decimal(0))
        totals = assigned.get(row["invoice_id"], [])
        totals_sum = sum((total["amount"] for total in totals), Decimal(0))
        total = Decimal(invoice["total"])
        if lines_sum != Decimal(invoice["subtotal"]):
            check.fail(subject, f"lines sum to {lines_sum}, subtotal says {invoice['subtotal']}")
        if totals_sum != lines_sum:
            check.fail(subject, f"the totals assigned to it sum to {totals_sum}, its lines to {lines_sum} "
                                "(a period tier adjustment not yet posted, or a posting lost)")
        if round_once(lines_sum, minor_units, invoice["rounding_mode"]) != total:
            check.fail(subject, f"total {total} is not its lines {lines_sum} rounded once "
                                f"({invoice['rounding_mode']}): {round_once(lines_sum, minor_units, invoice['rounding_mode'])}")
        # Its lines, regrouped from its totals with this module's own grouping.
        regrouped: dict[tuple, list] = defaultdict(lambda: [0, Decimal(0)])
        for total_row in totals:
            if total_row["kind"] == "period_tier":
                continue
            kind = "credit" if total_row["kind"] == "reversal" else (
                "usage" if total_row["period"] == row["period"] else "adjustment")
            key = (kind, total_row["period"], total_row["provider_bu"], total_row["consumer_bu"], total_row["model"],
                   total_row["token_class"], total_row["unit_price_per_million"], total_row["kind"] == "overage")
            regrouped[key][0] += total_row["tokens"]
            regrouped[key][1] += total_row["amount"]
        printed = {(line["kind"], line["period"], line["provider_bu"], line["consumer_bu"], line["model"],
                    line.get("token_class"), Decimal(line["unit_price_per_million"]), line.get("overage") is True):
                   [line["tokens"], Decimal(line["amount"])]
                   for line in invoice["lines"] if line["kind"] != "period_tier"}
        if printed != dict(regrouped):
            differing = sorted(str(key[:2] + key[4:6]) for key in set(printed) | set(regrouped)
                               if printed.get(key) != regrouped.get(key))
            check.fail(subject, f"lines differ from the totals assigned to it: {', '.join(differing[:5])}")
        if counted.get(row["invoice_id"], 0) != invoice["postings_count"]:
            check.fail(subject, f"counts {invoice['postings_count']} postings, {counted.get(row['invoice_id'], 0)} "
                                "are assigned to it")
    await _check_totals_against_journal(connection, scope, facts, zone, check)
    if scope is not None:
        return
    latest: dict[str, dict[str, Any]] = {}
    for row in await connection.fetch(SELECT_SETTLEMENTS):
        check.examined += 1
        settlement = loads(row["payload"])
        latest[row["period"]] = settlement
        subject = f"settlement {row['period']}" + (f" revision {row['revision']}" if row["revision"] > 1 else "")
        positions = {bu: Decimal(amount) for bu, amount in settlement["positions"].items()}
        rounded = {bu: Decimal(amount) for bu, amount in settlement["rounded_positions"].items()}
        from_matrix: dict[str, Decimal] = defaultdict(Decimal)
        for flow in settlement["matrix"]:
            from_matrix[flow["provider_bu"]] += Decimal(flow["amount"])
            from_matrix[flow["payer_bu"]] -= Decimal(flow["amount"])
        if {bu: amount for bu, amount in from_matrix.items() if amount} != {bu: amount for bu, amount in positions.items() if amount}:
            check.fail(subject, "net positions are not revenue - spend of its matrix")
        if sum(rounded.values(), Decimal(0)) != 0:
            check.fail(subject, f"rounded positions sum to {sum(rounded.values(), Decimal(0))}, not zero")
        moved: dict[str, Decimal] = defaultdict(Decimal)
        for transfer in settlement["transfers"]:
            moved[transfer["to_bu"]] += Decimal(transfer["amount"])
            moved[transfer["from_bu"]] -= Decimal(transfer["amount"])
        for bu in sorted(set(rounded) | set(moved)):
            if moved.get(bu, Decimal(0)) != rounded.get(bu, Decimal(0)):
                check.fail(subject, f"transfers move {moved.get(bu, Decimal(0))} for {bu}, its net position is {rounded.get(bu)}")
    await check_settlements_cover_their_invoices(connection, latest, zone, check)


async def check_settlements_cover_their_invoices(connection: asyncpg.Connection, latest: dict[str, dict[str, Any]],
                                                zone: str, check: Check) -> None:
    """Each month's latest settlement revision covers every invoice issued for the
    month (its days, weeks and itself): it names each one, and its matrix is what
    those invoices' lines add up to, payer by provider (a BU's own use left out)."""
    invoices: dict[str, list[asyncpg.Record]] = defaultdict(list)
    for row in await connection.fetch(SELECT_INVOICES_BY_MONTH, zone):
        invoices[row["month"]].append(row)
    for month, settlement in sorted(latest.items()):
        subject = f"settlement {month} revision {settlement.get('revision', 1)} (the latest)"
        named = set(settlement.get("invoices") or ())
        cells: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
        for row in invoices.get(month, []):
            if named and row["invoice_id"] not in named:
                check.fail(subject, f"does not cover invoice {row['payer_bu']}-{row['number']:04d} ({row['period']})")
            for line in loads(row["payload"])["lines"]:
                if line["provider_bu"] != row["payer_bu"]:
                    cells[(row["payer_bu"], line["provider_bu"])] += Decimal(line["amount"])
        expected = {cell: amount for cell, amount in cells.items() if amount}
        matrix = {(flow["payer_bu"], flow["provider_bu"]): Decimal(flow["amount"]) for flow in settlement["matrix"]}
        if matrix != expected:
            differing = sorted(f"{payer}->{provider}" for payer, provider in set(matrix) | set(expected)
                               if matrix.get((payer, provider)) != expected.get((payer, provider)))
            check.fail(subject, f"its matrix is not what the month's invoices add up to ({', '.join(differing[:5])}): "
                                "invoices issued for the month after it were not settled")


async def _check_totals_against_journal(connection: asyncpg.Connection, scope: str | None, facts: list[EntryFact],
                                       zone: str, check: Check) -> None:
    """Invoicing's totals, on invoices or open, equal the journal's postings, per
    payer, month, kind, consumer, provider and model. Charges the journal marks
    as posted over quota are their own kind (overage) on both sides, so a mark
    lost or invented on the way to invoicing shows here."""
    company_zone = ZoneInfo(zone)
    journal: dict[tuple, list] = defaultdict(lambda: [0, Decimal(0)])
    for fact in facts:
        priced = fact.priced
        if scope is not None and priced.payer_bu != scope:
            continue
        key = (priced.payer_bu, _month_of(priced.event_time, company_zone),
               "overage" if fact.overage else _totals_kind(priced.kind), priced.consumer_bu, priced.provider_bu, priced.model)
        journal[key][0] += priced.total_tokens
        journal[key][1] += Decimal(priced.total_amount)
    kept: dict[tuple, list] = {}
    for row in await connection.fetch(SELECT_TOTALS_BY_MONTH, zone):
        if scope is None or row["payer_bu"] == scope:
            kept[(row["payer_bu"], row["month"], row["kind"], row["consumer_bu"], row["provider_bu"], row["model"])] = [
                int(row["tokens"]), row["amount"]]
    waiting = await connection.fetchval(SELECT_WAITING_COUNT)
    hint = f" ({waiting} postings wait in invoicing for a missing sequence)" if waiting else (
        " (in flight: verify a settled pipeline)")
    for key in sorted(set(journal) | set(kept)):
        expected, held = journal.get(key, [0, Decimal(0)]), kept.get(key, [0, Decimal(0)])
        if expected != held:
            payer, month, kind, consumer, provider, model = key
            check.fail(f"invoicing totals {payer} {month} {kind} {consumer} -> {provider} {model}",
                       f"{held[0]} Tokens, {held[1]} but the journal has {expected[0]} Tokens, {expected[1]}{hint}")


# --- invariant 6: payer shares sum to the whole ---------------------------------------------

def largest_remainder(total: int, weights: list[Decimal]) -> list[int]:
    with localcontext() as context:
        context.prec = 60
        whole = sum(weights, Decimal(0))
        exact = [Decimal(total) * weight / whole for weight in weights]
    floors = [int(share) for share in exact]
    order = sorted(range(len(weights)), key=lambda index: (-(exact[index] - floors[index]), index))
    for index in order[:total - sum(floors)]:
        floors[index] += 1
    return floors


def check_shares(consumed: dict[str, ConsumedFacts], scope: str | None, check: Check) -> None:
    usage: dict[tuple[str, str], list[ConsumedFacts]] = defaultdict(list)
    for event in consumed.values():
        usage[(event.usage_source, event.usage_id)].append(event)
    # One payer with the whole of it, shares and inputs as they must be: by far the
    # most, passed over in any order; the rest is checked in order, so that what is
    # named comes out in one order however the events were read.
    rest: list[tuple[tuple[str, str], list[ConsumedFacts]]] = []
    for key, parts in usage.items():
        if scope is not None and all(part.payer_bu != scope and part.consumer_bu != scope for part in parts):
            continue
        check.examined += 1
        if len(parts) == 1:
            part = parts[0]
            tokens = part.tokens
            if (part.payer_count == 1 and part.payer_index == 0 and part.share_percent == "100"
                    and tokens.get("input", 0) + tokens.get("cache_read", 0) + tokens.get("cache_write", 0)
                    == part.request_input_tokens):
                continue
        rest.append((key, parts))
    for (source, usage_id), parts in sorted(rest, key=lambda item: item[0]):
        if len(parts) == 1 and parts[0].payer_count == 1 and parts[0].payer_index == 0:
            part = parts[0]  # one payer, the whole of it: by far the most
            if part.share_percent != "100" and Decimal(part.share_percent) != 100:
                check.fail(f"usage {source} {usage_id}", f"payer shares sum to {part.share_percent} %")
            whole_input = sum(part.tokens.get(cls, 0) for cls in ("input", "cache_read", "cache_write"))
            if whole_input != part.request_input_tokens:
                check.fail(f"usage {source} {usage_id}", f"the payers' input Tokens sum to {whole_input}, the "
                                                         f"request's input was {[part.request_input_tokens]}")
            continue
        subject = f"usage {source} {usage_id}"
        count = parts[0].payer_count
        indexes = sorted(part.payer_index for part in parts)
        if len(set(indexes)) != len(indexes) or any(not 0 <= index < count for index in indexes):
            check.fail(subject, f"payer positions {indexes} of {count} payers")
            continue
        percents = sum((Decimal(part.share_percent) for part in parts), Decimal(0))
        if percents > 100 or (len(parts) == count and percents != 100):
            check.fail(subject, f"payer shares sum to {percents} %")
        inputs = {part.request_input_tokens for part in parts}
        whole_input = sum(part.tokens.get(cls, 0) for part in parts for cls in ("input", "cache_read", "cache_write"))
        if len(inputs) != 1 or whole_input != inputs.pop():
            check.fail(subject, f"the payers' input Tokens sum to {whole_input}, the request's input was "
                                f"{sorted({part.request_input_tokens for part in parts})}")
        if len(parts) == count and count > 1:
            ordered = sorted(parts, key=lambda part: part.payer_index)
            weights = [Decimal(part.share_percent) for part in ordered]
            for token_class in sorted({cls for part in parts for cls in part.tokens}):
                quantities = [part.tokens.get(token_class, 0) for part in ordered]
                if quantities != largest_remainder(sum(quantities), weights):
                    check.fail(subject, f"{token_class} Tokens {quantities} are not the whole {sum(quantities)} "
                                        f"split by shares {[f'{weight:f}' for weight in weights]}")


# --- all of it ---------------------------------------------------------------------------------

async def verify(pool: asyncpg.Pool, bootstrap_servers: str | None, *, scope: str | None = None, minor_units: int = 2,
                 zone: str = COMPANY_ZONE_DEFAULT,
                 idle_timeout_s: float = 3.0, progress: Progress = silent) -> VerifyReport:
    chains = Check("chains", "hash chains recomputed from the stored rows (links, sequences, heads)")
    published = Check("published", "chain heads against those published on ledger.posted and printed on invoices")
    double_entry = Check("invariant-1", "debits = credits in every entry and in each whole ledger")
    exactly_once = Check("invariant-2", "every accepted usage event posted once (net) or parked, as its Priced says")
    projection = Check("invariant-3", "the balances projection equals a rebuild from the journal and its Priced")
    prices = Check("invariant-4", "every Priced recomputed from its TokenConsumed and book version")
    invoices = Check("invariant-5", "invoice totals are their postings rounded once; settlements clear the net positions")
    shares = Check("invariant-6", "payer shares of each usage event sum to the whole")
    steps: dict[str, StepTime] = {}
    clock = _StepClock(steps)
    async with pool.acquire() as connection:
        # ledger.posted is read while the chains are: each waits on its own server
        # (the broker, the database) while the other computes. It is read until it
        # holds as many entries as the snapshot the chains are read from.
        counted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        # Each record's head is decoded once, as it is read, and kept by the
        # identity of its bytes (which the records hold) for the checks after.
        decoded: dict[int, PublishedHead | None] = {}

        def distinct(value: bytes) -> tuple[object, object] | None:
            head = decoded[id(value)] = published_head(value)
            return _counted(head, scope)

        def head_of(value: bytes) -> PublishedHead | None:
            return decoded[id(value)] if id(value) in decoded else published_head(value)

        async def read_published() -> list[TopicRecord]:
            expected = await counted
            return await read_topic(bootstrap_servers or "", LEDGER_POSTED.name, expected=expected,
                                    idle_timeout_s=idle_timeout_s, distinct=distinct, progress=progress)

        reading = asyncio.ensure_future(read_published()) if bootstrap_servers else None
        try:
            stored, facts = await check_chains(connection, scope, chains, exactly_once, progress, counted)
            progress("chains", chains.examined, chains.examined)
            records = await reading if reading is not None else []
        finally:
            if reading is not None and not reading.done():
                reading.cancel()
        clock.lap("chains: read the journal, recompute and hash every entry, check its movements; "
                  "meanwhile read ledger.posted")
        if bootstrap_servers:
            if scope is not None:
                records = [record for record in records if _counted(head_of(record.value), scope) is not None]
            await check_published(connection, stored, records, published, head_of)
            clock.lap("published: heads against the journal")
        else:
            published.skipped = "no broker configured"
        await check_invoice_heads(connection, stored, scope, published)
        await check_double_entry(connection, scope, double_entry)
        clock.lap("invoice heads, invariant 1")
        consumed, books = await load_pricing_inputs(connection)
        clock.lap("read metering's TokenConsumed and the price books")
        await check_exactly_once(connection, scope, consumed, facts, exactly_once)
        clock.lap("invariant 2")
        await check_projection(connection, facts, scope, projection)
        clock.lap("invariant 3")
        await check_prices(connection, facts, consumed, books, prices)
        clock.lap("invariant 4")
        await check_invoices(connection, scope, minor_units, facts, zone, invoices)
        clock.lap("invariant 5")
        check_shares(consumed, scope, shares)
        clock.lap("invariant 6")
    return VerifyReport([chains, published, double_entry, exactly_once, projection, prices, invoices, shares], scope,
                        steps)


class _StepClock:
    def __init__(self, steps: dict[str, StepTime]) -> None:
        self.steps = steps
        self.started = (time.monotonic(), time.process_time())

    def lap(self, name: str) -> None:
        now = (time.monotonic(), time.process_time())
        self.steps[name] = StepTime(round(now[0] - self.started[0], 3), round(now[1] - self.started[1], 3))
        self.started = now


def _counted(head: PublishedHead | None, scope: str | None) -> tuple[object, object] | None:
    """What makes a ledger.posted record distinct, by its head; None: not counted (another chain, or unreadable)."""
    if head is None or (scope is not None and head.chain != scope):
        return None
    return (head.chain, head.sequence)
