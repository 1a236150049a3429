"""A development CA and certificates for regions and clients (``meshgate certs``).

A region's certificate names it twice: ``URI:meshgate://region/<name>`` is the identity a
destination checks on Replicate, ``DNS:<name>`` is the name a replicator expects the destination
to present (it dials with that name as the TLS target), plus the host names a person dials
(``localhost``, ``127.0.0.1``, the gateway's host). The same certificate serves both ways, so
it carries both the serverAuth and clientAuth extended key usages.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CLIENT_URI_PREFIX",
    "REGION_URI_PREFIX",
    "CertPair",
    "make_ca",
    "make_client_cert",
    "make_region_cert",
    "write_pair",
]

REGION_URI_PREFIX = "meshgate://region/"
CLIENT_URI_PREFIX = "meshgate://client/"
_LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")
# Clocks of two machines disagree a little: a certificate made now is valid from a minute ago.
_BACKDATE = datetime.timedelta(minutes=1)


@dataclass(frozen=True, slots=True, kw_only=True)
class CertPair:
    """A certificate and its private key, both PEM."""

    cert: bytes
    key: bytes

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert)

    def private_key(self) -> ec.EllipticCurvePrivateKey:
        key = serialization.load_pem_private_key(self.key, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise TypeError(f"expected an EC private key, got {type(key).__name__}")
        return key


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _validity(days: int) -> tuple[datetime.datetime, datetime.datetime]:
    if days < 1:
        raise ValueError(f"a certificate must be valid for 1 day or more, got {days}")
    now = datetime.datetime.now(datetime.UTC)
    return now - _BACKDATE, now + datetime.timedelta(days=days)


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """A CA signs certificates only; a leaf's EC key signs (ECDHE_ECDSA) and may agree keys (ECDH)."""
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=not ca,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def make_ca(*, name: str = "Meshgate development CA", days: int = 365) -> CertPair:
    """A self-signed CA that may sign leaf certificates only (path length 0)."""
    key = _new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    not_before, not_after = _validity(days)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertPair(cert=cert.public_bytes(serialization.Encoding.PEM), key=_key_pem(key))


def _general_names(uri: str, names: Iterable[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri)]
    seen: set[str] = set()
    for name in names:
        if not name or name in seen:
            continue
        seen.add(name)
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name.strip("[]"))))
        except ValueError:
            out.append(x509.DNSName(name))
    return out


def _leaf(ca: CertPair, *, common_name: str, sans: list[x509.GeneralName], days: int) -> CertPair:
    ca_cert = ca.certificate
    ca_key = ca.private_key()
    key = _new_key()
    not_before, not_after = _validity(days)
    # A leaf never outlives its CA: peers would refuse it from that day on anyway.
    not_after = min(not_after, ca_cert.not_valid_after_utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return CertPair(cert=cert.public_bytes(serialization.Encoding.PEM), key=_key_pem(key))


def make_region_cert(ca: CertPair, region: str, *, hosts: Iterable[str] = (), days: int = 90) -> CertPair:
    """A region gateway's certificate: ``URI:meshgate://region/<region>``, ``DNS:<region>``, the
    local names and ``hosts`` (e.g. the host of its ``gateway:`` address)."""
    sans = _general_names(f"{REGION_URI_PREFIX}{region}", [region, *_LOCAL_NAMES, *hosts])
    return _leaf(ca, common_name=f"meshgate region {region}", sans=sans, days=days)


def make_client_cert(ca: CertPair, name: str = "client", *, days: int = 90) -> CertPair:
    """A client's certificate (``URI:meshgate://client/<name>``): accepted by gateways for the
    client API, refused for Replicate, which needs a region's certificate."""
    sans = _general_names(f"{CLIENT_URI_PREFIX}{name}", ())
    return _leaf(ca, common_name=f"meshgate client {name}", sans=sans, days=days)


def _write(path: Path, data: bytes, mode: int) -> None:
    # Written next to the target and renamed over it: a reader (a gateway reloading its
    # certificate) never sees half a file. The key is private from its first byte.
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def write_pair(pair: CertPair, cert_path: Path, key_path: Path | None) -> None:
    """Writes the certificate (0644) and the key (0600), each replaced atomically."""
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    if key_path is not None:
        key_path.parent.mkdir(parents=True, exist_ok=True)
        _write(key_path, pair.key, 0o600)
    _write(cert_path, pair.cert, 0o644)
