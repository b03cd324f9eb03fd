"""Payloads as stored: an event's canonical bytes, zstd-compressed with a
dictionary trained on events of its type.

PostgreSQL compresses only values in rows over about 2 KB, and an event is
300-800 bytes of JSON whose keys and most values repeat from one event to the
next, so a dictionary of that shape stores it in about a quarter of its bytes
(docs/architecture.md, "Storage and durability"). Only what is stored changes:
the canonical bytes are what is hashed, chained and published, and every reader
gets them back from `unpack`.

A stored value is one of two things, told apart by its first bytes:
- a zstd frame (magic 28 B5 2F FD) that names its dictionary by id;
- the canonical JSON itself (it starts with `{`): rows written before payloads
  were compressed. They are read as they are, so no database is rewritten.

Dictionaries live in `contracts/dictionaries/`, one file per dictionary, named
`<kind>.<id>.zdict`, the id also written inside the file. They are trained
once (`python -m tokenhub.bench.dictionaries`) and never changed or deleted:
every frame ever written names one, and a reader must find it. A better
dictionary is a new file with a new id, and `WRITE_WITH` names it; frames
written with the old one stay readable. Compressors and decompressors are
prepared once per thread (a zstd context is not safe to share between threads
at once) and reused for every value."""

from __future__ import annotations

import threading
from functools import cache
from pathlib import Path
from typing import Final

import zstandard

ZSTD_MAGIC: Final = b"\x28\xb5\x2f\xfd"
DICTIONARY_DIR: Final = Path(__file__).resolve().parent / "dictionaries"
DICTIONARY_SUFFIX: Final = ".zdict"

WRITE_WITH: Final[dict[str, int]] = {
    "tokens.consumed": 41001,
    "tokens.priced": 42001,
    "usage.reported": 43001,
}
"""The dictionary each kind of payload is written with now. Ids are in the
range zstd leaves to applications (32,768 and up), under 65,536 so a frame
spends two bytes naming its dictionary: 4KNNN, K the kind, NNN its generation."""

COMPRESSION_LEVEL: Final = 3
"""With a trained dictionary, level 9 stores a Priced in about 10 bytes fewer
(8 %) at five times the microseconds, level 19 in 15 fewer at sixty times
(`python -m tokenhub.bench.dictionaries --measure`): 3 is the writers' level."""
PAYLOAD_BYTES_MAX: Final = 16 * 1024 * 1024
"""A frame that says it holds more than this is not one of our payloads (events
are under a few KB; a video task's TokenConsumed is still one line of JSON):
refused before anything is allocated for it."""


class StoredPayloadError(ValueError):
    """A stored value that is neither a frame we can read nor canonical JSON."""


class UnknownDictionary(StoredPayloadError):
    """A frame names a dictionary this installation does not have."""


@cache
def dictionaries() -> dict[int, tuple[str, zstandard.ZstdCompressionDict]]:
    """Every committed dictionary by id, with its kind. A file whose name and
    contents disagree on the id, or two files with one id, stop every reader:
    a frame must name exactly one dictionary."""
    found: dict[int, tuple[str, zstandard.ZstdCompressionDict]] = {}
    for path in sorted(DICTIONARY_DIR.glob(f"*{DICTIONARY_SUFFIX}")):
        kind, _, named = path.name.removesuffix(DICTIONARY_SUFFIX).rpartition(".")
        dictionary = zstandard.ZstdCompressionDict(path.read_bytes(), dict_type=zstandard.DICT_TYPE_FULLDICT)
        if not named.isdigit() or dictionary.dict_id() != int(named):
            raise StoredPayloadError(f"dictionary {path.name} holds id {dictionary.dict_id()}, not the id its name gives")
        if dictionary.dict_id() in found:
            raise StoredPayloadError(f"two dictionaries have id {dictionary.dict_id()}: {found[dictionary.dict_id()][0]} and {kind}")
        found[dictionary.dict_id()] = (kind, dictionary)
    for kind, dictionary_id in WRITE_WITH.items():
        if found.get(dictionary_id, ("",))[0] != kind:
            raise StoredPayloadError(f"{kind} is to be written with dictionary {dictionary_id}, which is not a {kind} "
                                     f"dictionary in {DICTIONARY_DIR.name}/")
    return found


class _Contexts(threading.local):
    """This thread's prepared compressors (by kind) and decompressors (by
    dictionary id, and by the first bytes of the frames that name it)."""

    def __init__(self) -> None:
        self.compressors: dict[str, zstandard.ZstdCompressor] = {}
        self.decompressors: dict[int, zstandard.ZstdDecompressor] = {}
        self.by_header: dict[bytes, zstandard.ZstdDecompressor] = {}


_contexts: Final = _Contexts()

HEADER_KEY_BYTES: Final = 7
"""Magic, frame header descriptor and a two-byte dictionary id: the first bytes
of a single-segment frame under 65,792 bytes that names its dictionary in two
bytes, as `pack` writes them. These bytes name the dictionary and bound the
content's size (a one- or two-byte size field), so a frame starting with bytes
seen before is decompressed at once, its header not parsed again (half the
time of `unpack`)."""
_SINGLE_SEGMENT: Final = 0x20
_TWO_BYTE_DICTIONARY_ID: Final = 0x02
_SMALL_CONTENT_SIZE: Final = 0x40
"""Frame header descriptor bits (RFC 8878 3.1.1.1.1): one segment; the
dictionary id in two bytes; the content size in at most two bytes."""


def _compressor(kind: str) -> zstandard.ZstdCompressor:
    compressor = _contexts.compressors.get(kind)
    if compressor is None:
        if kind not in WRITE_WITH:
            raise StoredPayloadError(f"no dictionary is named for payloads of kind {kind!r}: one of {sorted(WRITE_WITH)}")
        _, dictionary = dictionaries()[WRITE_WITH[kind]]
        # The content size lets the reader allocate once; no checksum: the
        # canonical bytes are hashed where integrity matters (entry hashes,
        # content hashes), and a damaged frame fails to decode or to parse.
        compressor = zstandard.ZstdCompressor(level=COMPRESSION_LEVEL, dict_data=dictionary, write_checksum=False,
                                              write_content_size=True, write_dict_id=True)
        _contexts.compressors[kind] = compressor
    return compressor


def _decompressor(dictionary_id: int) -> zstandard.ZstdDecompressor:
    decompressor = _contexts.decompressors.get(dictionary_id)
    if decompressor is None:
        known = dictionaries()
        if dictionary_id not in known:
            raise UnknownDictionary(
                f"a stored payload was compressed with zstd dictionary {dictionary_id}, which is not among the "
                f"dictionaries of this installation ({', '.join(map(str, sorted(known)))}): install the release "
                f"that wrote it, or a later one (dictionaries are never removed)")
        decompressor = zstandard.ZstdDecompressor(dict_data=known[dictionary_id][1])
        _contexts.decompressors[dictionary_id] = decompressor
    return decompressor


def pack(kind: str, canonical: bytes) -> bytes:
    """What to store for an event of `kind` (a topic's name: tokens.consumed,
    tokens.priced, usage.reported) whose canonical bytes are `canonical`."""
    return _compressor(kind).compress(canonical)


def unpack(stored: bytes) -> bytes:
    """The canonical bytes of a stored payload: a frame decompressed with the
    dictionary it names, or raw JSON (a row written before compression) as it is."""
    decompressor = _contexts.by_header.get(stored[:HEADER_KEY_BYTES])
    if decompressor is None:
        return _unpack_first_of_its_kind(stored)
    try:
        return decompressor.decompress(stored)
    except zstandard.ZstdError as error:
        raise StoredPayloadError(f"a stored payload does not decompress with the dictionary it names: {error}") from None


def _unpack_first_of_its_kind(stored: bytes) -> bytes:
    """`unpack` of raw JSON, or of a frame whose first bytes were not seen yet:
    its header read and checked, and the decompressor kept by those bytes."""
    if stored[:1] == b"{":
        return bytes(stored)
    if stored[:4] != ZSTD_MAGIC:
        if bytes(stored[:64]).lstrip()[:1] == b"{":  # usage as a producer sent it, whitespace first
            return bytes(stored)
        raise StoredPayloadError(f"a stored payload is neither a zstd frame nor JSON: it starts {bytes(stored[:8]).hex()}")
    try:
        parameters = zstandard.get_frame_parameters(stored)
    except zstandard.ZstdError as error:
        raise StoredPayloadError(f"a stored payload's zstd frame header cannot be read: {error}") from None
    if parameters.dict_id == 0:
        raise StoredPayloadError("a stored payload's zstd frame names no dictionary: Token Hub did not write it")
    if not 0 < parameters.content_size <= PAYLOAD_BYTES_MAX:
        raise StoredPayloadError(f"a stored payload's zstd frame holds {parameters.content_size} bytes, "
                                 f"not 1 to {PAYLOAD_BYTES_MAX}")
    decompressor = _decompressor(parameters.dict_id)
    descriptor = stored[4]
    if descriptor & 0x23 == _SINGLE_SEGMENT | _TWO_BYTE_DICTIONARY_ID and descriptor & 0xC0 in (0, _SMALL_CONTENT_SIZE):
        _contexts.by_header[bytes(stored[:HEADER_KEY_BYTES])] = decompressor
    try:
        return decompressor.decompress(stored)
    except zstandard.ZstdError as error:
        raise StoredPayloadError(f"a stored payload does not decompress with dictionary {parameters.dict_id}: {error}") from None


def frame_dictionary(stored: bytes) -> int | None:
    """The dictionary id a stored frame names; None for anything else (raw JSON)."""
    if stored[:4] != ZSTD_MAGIC:
        return None
    return zstandard.get_frame_parameters(stored).dict_id
