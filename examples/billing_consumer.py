"""A downstream billing system, as an outsider would write it: plain aiokafka,
subscribed to invoices.issued and settlements.netted, each message validated
against Token Hub's exported JSON Schemas before it is used.

    python examples/billing_consumer.py --bootstrap-servers 127.0.0.1:9092 --idle-timeout 5

On a secured cluster (SASL/SCRAM over TLS), with the password in
TOKENHUB_KAFKA_SASL_PASSWORD rather than on the command line:

    python examples/billing_consumer.py --bootstrap-servers kafka-1:9092 --security-protocol SASL_SSL \
        --sasl-username billing --ssl-cafile ca.pem
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import jsonschema
from aiokafka import AIOKafkaConsumer

from tokenhub.client import KafkaSecurity

SCHEMAS = Path(__file__).resolve().parent.parent / "contracts" / "schemas"
TOPICS = {"invoices.issued": "InvoiceIssued.schema.json", "settlements.netted": "SettlementNetted.schema.json"}


@dataclass
class Received:
    invoices: list[dict] = field(default_factory=list)
    settlements: list[dict] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)


async def consume(bootstrap_servers: str, idle_timeout_s: float, group_id: str = "example-billing",
                  security: KafkaSecurity | None = None) -> Received:
    validators = {topic: jsonschema.Draft202012Validator(json.loads((SCHEMAS / name).read_text()))
                  for topic, name in TOPICS.items()}
    consumer = AIOKafkaConsumer(*TOPICS, bootstrap_servers=bootstrap_servers, group_id=group_id,
                                auto_offset_reset="earliest", enable_auto_commit=False, session_timeout_ms=6000,
                                **(security or KafkaSecurity()).aiokafka_options())
    received = Received()
    await consumer.start()
    try:
        last = time.monotonic()
        while time.monotonic() - last < idle_timeout_s:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                last = time.monotonic()
                for record in records:
                    event = json.loads(record.value)
                    errors = sorted(validators[record.topic].iter_errors(event), key=str)
                    if errors:
                        received.invalid.append(f"{record.topic}@{record.offset}: {errors[0].message}")
                        continue
                    (received.invoices if record.topic == "invoices.issued" else received.settlements).append(event)
            if batches:
                await consumer.commit()
    finally:
        await consumer.stop()
    return received


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap-servers", required=True)
    parser.add_argument("--idle-timeout", type=float, default=5.0)
    parser.add_argument("--security-protocol", default="PLAINTEXT", choices=("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"))
    parser.add_argument("--sasl-mechanism", default="SCRAM-SHA-512", choices=("SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"))
    parser.add_argument("--sasl-username")
    parser.add_argument("--ssl-cafile", type=Path, help="PEM file of the authority that signed the brokers' certificates")
    arguments = parser.parse_args()
    security = KafkaSecurity(protocol=arguments.security_protocol, sasl_mechanism=arguments.sasl_mechanism,
                             username=arguments.sasl_username, password=os.environ.get("TOKENHUB_KAFKA_SASL_PASSWORD"),
                             cafile=arguments.ssl_cafile)
    received = asyncio.run(consume(arguments.bootstrap_servers, arguments.idle_timeout, security=security))
    for invoice in received.invoices:
        print(f"invoice {invoice['payer_bu']}-{invoice['number']:04d} {invoice['period']}: {invoice['total']} {invoice['currency']}")
    for settlement in received.settlements:
        print(f"settlement {settlement['period']}: {len(settlement['transfers'])} transfers")
    for problem in received.invalid:
        print(f"INVALID {problem}", file=sys.stderr)
    return 1 if received.invalid else 0


if __name__ == "__main__":
    sys.exit(main())
