"""A certificate authority of the deployment's own and the brokers' certificates,
made with `cryptography`: the CA as PEM for every client to trust, each
broker's key and certificate as a PKCS#12 keystore for the JVM.

    python -m tokenhub.infra.kafka.tls FOLDER kafka-1 kafka-2 kafka-3

writes FOLDER/ca.pem and FOLDER/kafka-N.p12 (with the keystore password in
FOLDER/keystore-password), each broker's certificate naming its host, plus
localhost and 127.0.0.1; the compose deployment's `certificates` step runs it.
"""

from __future__ import annotations

import ipaddress
import secrets
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY: Final = timedelta(days=825)
"""The longest validity that common TLS clients accept for a server certificate;
a deployment renews by running this again and restarting the brokers."""
CLOCK_SKEW: Final = timedelta(hours=1)
CA_FILE: Final = "ca.pem"
KEYSTORE_PASSWORD_FILE: Final = "keystore-password"
LOCAL_NAMES: Final = ("localhost", "127.0.0.1")


@dataclass(frozen=True)
class Keystore:
    path: Path
    password: str


@dataclass(frozen=True)
class Authority:
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate
    ca_file: Path

    @classmethod
    def create(cls, folder: Path, name: str = "Token Hub Kafka CA") -> Authority:
        folder.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.now(UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        ca_file = folder / CA_FILE
        ca_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        return cls(key, certificate, ca_file)

    def issue(self, folder: Path, name: str, hosts: tuple[str, ...] = LOCAL_NAMES, password: str | None = None) -> Keystore:
        """A server certificate for `hosts` (names or IP addresses), in a PKCS#12 keystore."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        alternative_names: list[x509.GeneralName] = []
        for host in dict.fromkeys(hosts):
            try:
                alternative_names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                alternative_names.append(x509.DNSName(host))
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + VALIDITY)
            .add_extension(x509.SubjectAlternativeName(alternative_names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            # A broker is a server to clients and a client to the other brokers (replication).
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        password = password or secrets.token_hex(16)
        path = folder / f"{name}.p12"
        path.write_bytes(pkcs12.serialize_key_and_certificates(
            name.encode(), key, certificate, [self.certificate],
            serialization.BestAvailableEncryption(password.encode())))
        path.chmod(0o600)
        return Keystore(path, password)


def main(arguments: list[str]) -> int:
    if len(arguments) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    folder, hosts = Path(arguments[0]), arguments[1:]
    if (folder / CA_FILE).exists():
        print(f"{folder / CA_FILE} exists: keeping the authority and certificates already made")
        return 0
    authority = Authority.create(folder)
    password = secrets.token_hex(16)
    for host in hosts:
        authority.issue(folder, host, (host, *LOCAL_NAMES), password)
    password_file = folder / KEYSTORE_PASSWORD_FILE
    password_file.write_text(password)
    password_file.chmod(0o600)
    print(f"wrote {authority.ca_file} and keystores for {', '.join(hosts)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
