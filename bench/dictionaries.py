"""Train the zstd dictionaries payloads are stored with (`contracts/stored.py`),
and measure what they do.

    python -m tokenhub.bench.dictionaries            # write the dictionaries WRITE_WITH names, if missing
    python -m tokenhub.bench.dictionaries --measure  # bytes and microseconds per payload, per kind

The samples are the demo's company (`infra/demo/`) and the benchmark's load
generator (`bench/load.py`), seeded, over days spread across a year so that no
one date is learnt: usage events metered into TokenConsumed and priced into
Priced with the services' own pure cores, exactly the bytes the services store.
Training with fixed parameters on one thread gives the same dictionary every
time, so running this again reproduces the committed files byte for byte; it
refuses to write over a committed dictionary with other bytes (frames in every
database name it). A better dictionary is a new generation: a new id in
`WRITE_WITH`, its file trained here, the old file kept."""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Final

import zstandard

from tokenhub.bench.load import CONSUMERS, DAY_END_DEFAULT, SEED_DEFAULT, generate_usage, pricebook_document, registry_document
from tokenhub.contracts import codecs, stored
from tokenhub.contracts.canonical import canonical_json
from tokenhub.contracts.pricebook import BookIndex, book_from_document
from tokenhub.contracts.registry import PAYLOAD_MODELS, REGISTRY_SECTIONS
from tokenhub.services.metering import domain as metering
from tokenhub.services.pricing import domain as pricing

DICTIONARY_BYTES: Final = 16 * 1024
"""Past 16 KB a dictionary of these events stores a payload in no fewer bytes
(--measure trains 8, 16, 32 and 64 KB); every process keeps one per kind."""
SAMPLE_DAYS: Final = 12
SAMPLE_EVENTS_PER_DAY: Final = 500
"""6,000 usage events: about 7,000 TokenConsumed and Priced (funding splits
some), enough for the trainer to see every model, class and payer split."""
MEASURE_DAY_END: Final = datetime(2026, 9, 20, 0, 5, tzinfo=DAY_END_DEFAULT.tzinfo)
"""Measured on a day and seed not trained on."""
COVER_K: Final = 256
COVER_D: Final = 8
"""Fixed COVER parameters (segment size, d-mer size) instead of a search over
them: the search runs on threads, and a fixed run is reproducible."""


def samples(days: int = SAMPLE_DAYS, per_day: int = SAMPLE_EVENTS_PER_DAY, seed: int = SEED_DEFAULT,
            first_day_end: datetime = DAY_END_DEFAULT) -> dict[str, list[bytes]]:
    """Canonical bytes per kind, as the services store them, for `days` days a month apart."""
    catalogue, books = _company()
    kinds: dict[str, list[bytes]] = {"usage.reported": [], "tokens.consumed": [], "tokens.priced": []}
    for day in range(days):
        day_end = first_day_end + timedelta(days=31 * day)
        limits = metering.Limits(now=day_end, accepted_window=timedelta(days=2), future_skew=timedelta(minutes=5),
                                 message_bytes_max=1 << 20)
        for usage in generate_usage(per_day, seed=seed + day, day_end=day_end):
            value = canonical_json(usage)
            metered = metering.meter(metering.RawUsage(value), catalogue, limits)
            kinds["usage.reported"].append(value)
            for consumed in metered.consumed:
                encoded = codecs.encode(consumed)
                kinds["tokens.consumed"].append(encoded)
                kinds["tokens.priced"].append(codecs.encode_priced(pricing.price_in_force(codecs.decode_consumed(encoded), books)))
    return kinds


def _company() -> tuple[metering.Catalogue, BookIndex]:
    """The demo's registry as metering's catalogue, and the demo's price book."""
    document = registry_document()
    entities = {kind: [PAYLOAD_MODELS[kind].model_validate(item) for item in document.get(section) or []]
                for section, kind in REGISTRY_SECTIONS.items()}
    book = book_from_document(pricebook_document(), actor="dictionaries", reason="training samples", retroactive=True,
                              published_at=DAY_END_DEFAULT)
    catalogue = metering.Catalogue(
        business_units=frozenset(unit.bu_id for unit in entities["business_unit"]),
        models={model.model_id: model for model in entities["model"]},
        conversion_tables=tuple(sorted(entities["conversion_table"], key=lambda table: table.effective_from)),
        funding=tuple(entities["funding_agreement"]))
    return catalogue, BookIndex.of([book])


def train(kind: str, dictionary_id: int, values: list[bytes], size: int = DICTIONARY_BYTES) -> bytes:
    """One dictionary, reproducibly: fixed COVER parameters, one thread."""
    dictionary = zstandard.train_dictionary(size, values, k=COVER_K, d=COVER_D, dict_id=dictionary_id, threads=0,
                                            level=stored.COMPRESSION_LEVEL)
    if dictionary.dict_id() != dictionary_id:
        raise RuntimeError(f"{kind}: trained dictionary has id {dictionary.dict_id()}, not {dictionary_id}")
    return dictionary.as_bytes()


def write(directory: Path = stored.DICTIONARY_DIR) -> list[str]:
    """Train and write each dictionary `WRITE_WITH` names that is not committed
    yet; check the committed ones reproduce. What was done, one line each."""
    kinds = samples()
    said = []
    directory.mkdir(exist_ok=True)
    for kind, dictionary_id in stored.WRITE_WITH.items():
        path = directory / f"{kind}.{dictionary_id}{stored.DICTIONARY_SUFFIX}"
        trained = train(kind, dictionary_id, kinds[kind])
        if path.exists():
            same = path.read_bytes() == trained
            said.append(f"{path.name}: committed, {'reproduced byte for byte' if same else 'NOT reproduced (kept as it is)'}")
            continue
        path.write_bytes(trained)
        said.append(f"{path.name}: trained on {len(kinds[kind])} samples, {len(trained)} bytes")
    return said


def _per_value_us(function: Callable[[bytes], bytes], values: list[bytes], rounds: int = 5) -> float:
    """The best of `rounds` passes over every value, in microseconds per value."""
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for value in values:
            function(value)
        best = min(best, time.perf_counter() - started)
    return best / len(values) * 1e6


def _renamed(kinds: dict[str, list[bytes]]) -> dict[str, list[bytes]]:
    """The events as another company's: each name of the demo's replaced by one
    of the same length that the dictionaries never saw (a digest of it)."""
    document = registry_document()
    names = {unit["bu_id"] for unit in document["business_units"]} | {model["model_id"] for model in document["models"]}
    names |= {app for *_, apps in CONSUMERS for app in apps}
    replacements = [(name.encode(), hashlib.sha256(name.encode()).hexdigest()[:len(name)].encode())
                    for name in sorted(names, key=len, reverse=True)]
    renamed: dict[str, list[bytes]] = {}
    for kind, values in kinds.items():
        renamed[kind] = []
        for value in values:
            for name, replacement in replacements:
                value = value.replace(b'"' + name + b'"', b'"' + replacement + b'"').replace(
                    b":" + name + b":", b":" + replacement + b":")
            renamed[kind].append(value)
    return renamed


def measure() -> list[str]:
    """Bytes and microseconds per payload with the committed dictionaries, on
    events of a day and seed they were not trained on; then what the dictionary's
    size and the level would change."""
    fresh = samples(days=1, per_day=4_000, seed=SEED_DEFAULT + 1_000, first_day_end=MEASURE_DAY_END)
    lines = [f"{'kind':<16} {'events':>7} {'canonical B':>12} {'stored B':>9} {'ratio':>6} {'pack us':>8} {'unpack us':>10}"]
    timed: dict[str, tuple[float, float]] = {}
    for kind, values in fresh.items():
        packed = [stored.pack(kind, value) for value in values]
        if [stored.unpack(value) for value in packed] != values:
            raise RuntimeError(f"{kind}: a payload does not come back byte for byte")
        canonical = statistics.fmean(map(len, values))
        size = statistics.fmean(map(len, packed))
        timed[kind] = (_per_value_us(lambda value, kind=kind: stored.pack(kind, value), values),
                       _per_value_us(stored.unpack, packed))
        lines.append(f"{kind:<16} {len(values):>7} {canonical:>12.0f} {size:>9.1f} {canonical / size:>6.2f} "
                     f"{timed[kind][0]:>8.2f} {timed[kind][1]:>10.2f}")
    usage = len(fresh["usage.reported"])
    payers = len(fresh["tokens.consumed"]) / usage
    lines.append(f"per usage event ({payers:.2f} payers each): packing its TokenConsumed once (metering) and its "
                 f"Priced twice (pricing, the journal) {payers * (timed['tokens.consumed'][0] + 2 * timed['tokens.priced'][0]):.1f} us; "
                 f"unpacking its Priced for replay or verify {payers * timed['tokens.priced'][1]:.1f} us")
    renamed = _renamed(fresh)
    lines.append("the same events with every business unit, model and app renamed (names not trained on):")
    for kind, values in renamed.items():
        packed = [stored.pack(kind, value) for value in values]
        lines.append(f"{kind:<16} {len(values):>7} {statistics.fmean(map(len, values)):>12.0f} "
                     f"{statistics.fmean(map(len, packed)):>9.1f}")
    trained = samples()
    lines.append("tokens.priced, by dictionary size and level (bytes stored / us to pack):")
    for size in (8 * 1024, 16 * 1024, 32 * 1024, 64 * 1024):
        dictionary = zstandard.ZstdCompressionDict(train("tokens.priced", 49999, trained["tokens.priced"], size))
        cells = []
        for level in (1, 3, 9, 19):
            compressor = zstandard.ZstdCompressor(level=level, dict_data=dictionary, write_checksum=False)
            values = fresh["tokens.priced"]
            cells.append(f"level {level}: {statistics.fmean(len(compressor.compress(value)) for value in values):.1f} B "
                         f"{_per_value_us(compressor.compress, values, rounds=2):.1f} us")
        lines.append(f"  {size // 1024:>2} KB  " + ", ".join(cells))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measure", action="store_true", help="measure the committed dictionaries instead of training")
    arguments = parser.parse_args(argv)
    for line in measure() if arguments.measure else write():
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
