"""Apache Kafka's broker from Maven Central: `pom.xml` beside this file pins the
version, Maven copies the broker's jars into a cache folder once, and every
later start reuses them (no Maven, no network).

    python -m tokenhub.infra.kafka.fetch      # prints the cache folder

The cache is per user, not per checkout (`$XDG_CACHE_HOME/tokenhub`, else
`~/.cache/tokenhub`; `TOKENHUB_KAFKA_CACHE_DIR` overrides it), and is named by
the version and a digest of the pom, so a changed pom fetches anew. A lock
keeps two processes from fetching into it at once; the jars land in a
temporary folder that is renamed into place only when Maven succeeded.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Final

import structlog

POM: Final = Path(__file__).resolve().parent / "pom.xml"
FETCH_TIMEOUT_S: Final = 600.0
"""Maven resolving ~45 jars (~45 MB) from nothing; measured here in seconds, so
this only catches a hung network."""
COMPLETE_MARKER: Final = "complete"

log = structlog.get_logger()


class KafkaUnavailable(RuntimeError):
    """Java or Maven missing, or Maven could not resolve the broker."""


def kafka_version(pom: Path = POM) -> str:
    match = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", pom.read_text())
    if match is None:
        raise KafkaUnavailable(f"{pom} names no <kafka.version>")
    return match.group(1).strip()


def cache_root() -> Path:
    explicit = os.environ.get("TOKENHUB_KAFKA_CACHE_DIR")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tokenhub"


def library_dir(pom: Path = POM) -> Path:
    digest = hashlib.sha256(pom.read_bytes()).hexdigest()[:12]
    return cache_root() / f"kafka-{kafka_version(pom)}-{digest}" / "lib"


def missing_tools() -> list[str]:
    """What is needed to fetch and run the broker and is not on PATH."""
    return [tool for tool in ("java", "mvn") if shutil.which(tool) is None]


def fetched(pom: Path = POM) -> bool:
    return (library_dir(pom).parent / COMPLETE_MARKER).exists()


def fetch(pom: Path = POM) -> Path:
    """The folder of the broker's jars, fetched with Maven if not cached yet."""
    target = library_dir(pom)
    if fetched(pom):
        return target
    if shutil.which("java") is None:
        raise KafkaUnavailable("no `java` on PATH: Apache Kafka needs Java 17 or later")
    if shutil.which("mvn") is None:
        raise KafkaUnavailable("no `mvn` on PATH: Maven fetches Apache Kafka from Maven Central")
    home = target.parent
    home.mkdir(parents=True, exist_ok=True)
    with (home / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be fetching the same version
        if fetched(pom):
            return target
        started = time.monotonic()
        staging = Path(tempfile.mkdtemp(prefix="lib-", dir=home))
        try:
            result = subprocess.run(
                ["mvn", "--batch-mode", "--quiet", "-f", str(pom), "dependency:copy-dependencies",
                 "-DincludeScope=runtime", f"-DoutputDirectory={staging}"],
                capture_output=True, text=True, timeout=FETCH_TIMEOUT_S, stdin=subprocess.DEVNULL,
            )
            if result.returncode != 0:
                raise KafkaUnavailable(f"Maven could not fetch Apache Kafka {kafka_version(pom)}:\n"
                                       f"{(result.stdout + result.stderr)[-2000:]}")
            if not any(staging.glob("kafka_2.13-*.jar")):
                raise KafkaUnavailable(f"Maven succeeded but no kafka_2.13 jar is in {staging}")
            shutil.rmtree(target, ignore_errors=True)
            staging.rename(target)
            (home / COMPLETE_MARKER).write_text(kafka_version(pom) + "\n")
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        log.info("kafka_fetched", version=kafka_version(pom), jars=len(list(target.glob("*.jar"))),
                 seconds=round(time.monotonic() - started, 1), folder=str(target))
    return target


def classpath(pom: Path = POM) -> str:
    return str(fetch(pom) / "*")


if __name__ == "__main__":
    try:
        print(fetch())
    except KafkaUnavailable as error:
        print(error, file=sys.stderr)
        sys.exit(1)
