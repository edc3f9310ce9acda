"""A throwaway PKI for TLS tests: a CA, a server certificate for 127.0.0.1 / localhost and a
client certificate (PEM bytes). Needs the `cryptography` package (tests importorskip it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Pki:
    """PEM bytes of a CA, a server certificate for 127.0.0.1 / localhost, and a client one."""

    ca: bytes
    server_cert: bytes
    server_key: bytes
    client_cert: bytes
    client_key: bytes


def make_pki() -> Pki:
    """A throwaway CA and two leaf certificates (EC P-256, valid for a day)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def build(subject, key, issuer, issuer_key, ca: bool, san=None) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if san is not None:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    def pem_key(key) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def pem(cert: x509.Certificate) -> bytes:
        return cert.public_bytes(serialization.Encoding.PEM)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = build(name("yaie test CA"), ca_key, name("yaie test CA"), ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    san = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    server = build(name("localhost"), server_key, ca.subject, ca_key, ca=False, san=san)
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = build(name("yaie client"), client_key, ca.subject, ca_key, ca=False)
    return Pki(pem(ca), pem(server), pem_key(server_key), pem(client), pem_key(client_key))
