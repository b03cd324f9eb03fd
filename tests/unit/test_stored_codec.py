"""Payloads as stored (contracts/stored.py): every event comes back as its
canonical bytes, raw JSON written before compression reads as it is, every
committed dictionary is loadable under one id of its own, and a frame this
installation cannot read fails loudly, naming why."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import zstandard

from tokenhub.contracts import stored
from tokenhub.contracts.stored import StoredPayloadError, UnknownDictionary, pack, unpack

GOLDEN = Path(stored.__file__).resolve().parent / "golden"
KIND_OF_GOLDEN = {"token_consumed.json": "tokens.consumed", "usage_reported.json": "usage.reported"} | {
    path.name: "tokens.priced" for path in GOLDEN.glob("priced*.json")}


def golden(name: str) -> bytes:
    return (GOLDEN / name).read_bytes().rstrip(b"\n")


@pytest.mark.parametrize("name", sorted(KIND_OF_GOLDEN))
def test_a_golden_event_comes_back_byte_for_byte_from_a_frame_naming_its_kinds_dictionary(name: str) -> None:
    canonical = golden(name)
    packed = pack(KIND_OF_GOLDEN[name], canonical)
    assert packed[:4] == stored.ZSTD_MAGIC
    assert stored.frame_dictionary(packed) == stored.WRITE_WITH[KIND_OF_GOLDEN[name]]
    assert unpack(packed) == canonical
    assert unpack(packed) == canonical  # the second time through the decompressor kept by the frame's first bytes
    assert len(packed) < len(canonical) * 0.45


def test_the_dictionaries_store_a_priced_in_under_a_quarter_of_its_bytes() -> None:
    canonical = golden("priced.json")
    assert len(pack("tokens.priced", canonical)) < len(canonical) / 4


@pytest.mark.parametrize("raw", [b'{"id":"x"}', b'{}', b'  {"id": "x"}\n', b'\n{"a": 1}'])
def test_raw_json_stored_before_compression_is_read_as_it_is(raw: bytes) -> None:
    assert unpack(raw) == raw
    assert stored.frame_dictionary(raw) is None


def test_every_committed_dictionary_is_loadable_under_a_unique_id_its_file_name_gives() -> None:
    files = sorted(stored.DICTIONARY_DIR.glob(f"*{stored.DICTIONARY_SUFFIX}"))
    ids = [int(path.name.removesuffix(stored.DICTIONARY_SUFFIX).rpartition(".")[2]) for path in files]
    assert len(ids) == len(set(ids)) == len(stored.dictionaries()) >= 3
    for path, dictionary_id in zip(files, ids, strict=True):
        kind, dictionary = stored.dictionaries()[dictionary_id]
        assert path.name == f"{kind}.{dictionary_id}{stored.DICTIONARY_SUFFIX}"
        assert dictionary.dict_id() == dictionary_id
        assert zstandard.ZstdCompressionDict(path.read_bytes()).dict_id() == dictionary_id
        assert 32_768 <= dictionary_id < 65_536  # the applications' range, named in two bytes
    for kind, dictionary_id in stored.WRITE_WITH.items():
        assert stored.dictionaries()[dictionary_id][0] == kind


def test_a_frame_naming_a_dictionary_this_installation_does_not_have_fails_naming_it() -> None:
    samples = [golden(name) for name in KIND_OF_GOLDEN] * 20
    foreign = zstandard.train_dictionary(2_048, samples, dict_id=65_000, k=64, d=8, threads=0)
    frame = zstandard.ZstdCompressor(dict_data=foreign).compress(golden("priced.json"))
    with pytest.raises(UnknownDictionary, match=r"dictionary 65000, which is not among .*41001, 42001, 43001"):
        unpack(frame)


def test_a_frame_without_a_dictionary_is_not_ours() -> None:
    with pytest.raises(StoredPayloadError, match="names no dictionary"):
        unpack(zstandard.ZstdCompressor().compress(golden("priced.json")))


def test_neither_a_frame_nor_json_fails_showing_its_first_bytes() -> None:
    with pytest.raises(StoredPayloadError, match="neither a zstd frame nor JSON: it starts 00010203"):
        unpack(bytes(range(16)))
    with pytest.raises(StoredPayloadError):
        unpack(b"")


def test_a_damaged_frame_fails_instead_of_returning_other_bytes() -> None:
    packed = pack("tokens.priced", golden("priced.json"))
    unpack(packed)  # its first bytes are known now: the fast path reads the damaged one
    with pytest.raises(StoredPayloadError, match="does not decompress"):
        unpack(packed[:-5])
    with pytest.raises(StoredPayloadError):
        unpack(packed[:12] + bytes(len(packed) - 12))


def test_a_kind_without_a_dictionary_is_refused() -> None:
    with pytest.raises(StoredPayloadError, match="no dictionary is named for payloads of kind 'ledger.posted'"):
        pack("ledger.posted", golden("ledger_posted.json"))


def test_threads_pack_and_unpack_with_contexts_of_their_own() -> None:
    values = [golden(name) for name in KIND_OF_GOLDEN]
    expected = [pack(KIND_OF_GOLDEN[name], golden(name)) for name in KIND_OF_GOLDEN]
    results: list[bool] = []

    def work() -> None:
        for _ in range(200):
            packed = [pack(KIND_OF_GOLDEN[name], golden(name)) for name in KIND_OF_GOLDEN]
            results.append(packed == expected and [unpack(value) for value in packed] == values)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert results == [True] * 800


def test_the_training_script_reproduces_every_committed_dictionary_byte_for_byte() -> None:
    """Deterministic training (fixed COVER parameters, one thread, seeded
    samples): the committed files are what `python -m tokenhub.bench.dictionaries`
    makes (about a second)."""
    from tokenhub.bench import dictionaries as training

    kinds = training.samples()
    for kind, dictionary_id in stored.WRITE_WITH.items():
        committed = (stored.DICTIONARY_DIR / f"{kind}.{dictionary_id}{stored.DICTIONARY_SUFFIX}").read_bytes()
        assert training.train(kind, dictionary_id, kinds[kind]) == committed
