"""Who is on the other end of a call: the verified peer certificate of a TLS connection."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cryptography import x509

from meshgate.tls._certs import REGION_URI_PREFIX

__all__ = ["PeerIdentity", "peer_identity", "regions_named"]


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerIdentity:
    # The connection is TLS (whether or not the peer showed a certificate).
    tls: bool
    # gRPC verified the peer's certificate against the mesh CA (the handshake requires one).
    verified: bool
    # Regions the certificate names as URI:meshgate://region/<name> (normally exactly one).
    regions: tuple[str, ...] = ()
    subject: str = ""

    def describe(self) -> str:
        if not self.verified:
            return "no verified certificate"
        if self.regions:
            return f"a certificate of region {', '.join(self.regions)} ({self.subject})"
        return f"a certificate naming no region ({self.subject})"


def regions_named(cert: x509.Certificate) -> tuple[str, ...]:
    """The regions a certificate names in its URI SANs."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    return tuple(
        u[len(REGION_URI_PREFIX) :] for u in uris if u.startswith(REGION_URI_PREFIX) and len(u) > len(REGION_URI_PREFIX)
    )


def peer_identity(auth: Mapping[str, Iterable[bytes]]) -> PeerIdentity:
    """The identity in a gRPC auth context (``context.auth_context()``).

    gRPC puts ``x509_pem_cert`` there only for a certificate it verified against the server's
    root certificates, so its presence is the proof; the regions are read from the certificate
    itself (parsed, not from gRPC's flattened SAN list, which mixes URIs, DNS names and IPs).
    """
    tls = b"ssl" in auth.get("transport_security_type", ())
    pem = list(auth.get("x509_pem_cert", ()))
    if not tls or not pem:
        return PeerIdentity(tls=tls, verified=False)
    try:
        cert = x509.load_pem_x509_certificate(pem[0])
    except ValueError:
        return PeerIdentity(tls=tls, verified=False)
    return PeerIdentity(tls=True, verified=True, regions=regions_named(cert), subject=cert.subject.rfc4514_string())
