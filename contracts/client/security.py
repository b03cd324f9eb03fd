"""How a client connects to Kafka: the security protocol, SASL credentials and
the certificate authority it trusts. One description, turned into the options
of each client library Token Hub uses (aiokafka, FastStream, confluent-kafka),
so that every producer and consumer of a deployment is secured the same way."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"]
SASL_PROTOCOLS: Final = ("SASL_PLAINTEXT", "SASL_SSL")
TLS_PROTOCOLS: Final = ("SSL", "SASL_SSL")


class SecurityError(ValueError):
    """A security description that no broker would accept."""


@dataclass(frozen=True)
class KafkaSecurity:
    """PLAINTEXT by default, as the embedded broker speaks. With TLS, the broker's
    certificate is checked against `cafile` (or the system's authorities) and its
    host name against the address dialled."""

    protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism = "SCRAM-SHA-512"
    username: str | None = None
    password: str | None = None
    cafile: Path | None = None
    certfile: Path | None = None
    keyfile: Path | None = None

    def __post_init__(self) -> None:
        if self.protocol in SASL_PROTOCOLS and not (self.username and self.password):
            raise SecurityError(f"{self.protocol} needs a user name and a password")
        if (self.certfile is None) != (self.keyfile is None):
            raise SecurityError("a client certificate needs its key, and a key its certificate")

    @property
    def uses_tls(self) -> bool:
        return self.protocol in TLS_PROTOCOLS

    @property
    def uses_sasl(self) -> bool:
        return self.protocol in SASL_PROTOCOLS

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.uses_tls:
            return None
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.cafile) if self.cafile else None)
        if self.certfile and self.keyfile:
            context.load_cert_chain(str(self.certfile), str(self.keyfile))
        return context

    def aiokafka_options(self) -> dict[str, Any]:
        """Keyword arguments of AIOKafkaProducer, AIOKafkaConsumer and AIOKafkaAdminClient."""
        options: dict[str, Any] = {"security_protocol": self.protocol}
        if self.uses_tls:
            options["ssl_context"] = self.ssl_context()
        if self.uses_sasl:
            options.update(sasl_mechanism=self.sasl_mechanism, sasl_plain_username=self.username,
                           sasl_plain_password=self.password)
        return options

    def faststream_security(self) -> Any:  # noqa: ANN401 - faststream.security.BaseSecurity, imported lazily
        """FastStream's description of the same (its KafkaBroker takes no aiokafka options for this)."""
        from faststream.security import BaseSecurity, SASLPlaintext, SASLScram256, SASLScram512

        if not self.uses_sasl:
            return BaseSecurity(ssl_context=self.ssl_context(), use_ssl=self.uses_tls) if self.uses_tls else None
        kind = {"SCRAM-SHA-512": SASLScram512, "SCRAM-SHA-256": SASLScram256, "PLAIN": SASLPlaintext}[self.sasl_mechanism]
        return kind(username=self.username or "", password=self.password or "", ssl_context=self.ssl_context(),
                    use_ssl=self.uses_tls)

    def confluent_options(self) -> dict[str, str]:
        """librdkafka's configuration properties (confluent-kafka's Producer and Consumer)."""
        options = {"security.protocol": self.protocol.lower()}
        if self.uses_tls:
            if self.cafile:
                options["ssl.ca.location"] = str(self.cafile)
            if self.certfile and self.keyfile:
                options.update({"ssl.certificate.location": str(self.certfile), "ssl.key.location": str(self.keyfile)})
        if self.uses_sasl:
            options.update({"sasl.mechanisms": self.sasl_mechanism, "sasl.username": self.username or "",
                            "sasl.password": self.password or ""})
        return options

    def __repr__(self) -> str:  # the password stays out of logs and tracebacks
        return (f"KafkaSecurity(protocol={self.protocol!r}, sasl_mechanism={self.sasl_mechanism!r}, "
                f"username={self.username!r}, cafile={self.cafile!r})")


PLAINTEXT: Final = KafkaSecurity()
