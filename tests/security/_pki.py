"""Certificates for the security tests, made with the product's own ``meshgate.tls`` code."""

from __future__ import annotations

import ssl
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from cryptography import x509

from meshgate.tls import CertPair, make_ca, make_client_cert, make_region_cert, write_pair


@dataclass
class Pki:
    """A CA in ``root`` with files ``<name>.crt``/``<name>.key`` per region or client made."""

    root: Path
    ca: CertPair = field(default_factory=make_ca)

    def __post_init__(self) -> None:
        write_pair(self.ca, self.ca_path, self.root / "ca.key")

    @property
    def ca_path(self) -> Path:
        return self.root / "ca.crt"

    def cert(self, name: str) -> Path:
        return self.root / f"{name}.crt"

    def key(self, name: str) -> Path:
        return self.root / f"{name}.key"

    def region(self, name: str, *, ca: CertPair | None = None) -> CertPair:
        """Makes (or makes again: a rotation) the certificate of region ``name``."""
        pair = make_region_cert(ca or self.ca, name)
        write_pair(pair, self.cert(name), self.key(name))
        return pair

    def regions(self, names: Iterable[str]) -> None:
        for name in names:
            self.region(name)

    def client(self, name: str = "client") -> CertPair:
        pair = make_client_cert(self.ca, name)
        write_pair(pair, self.cert(name), self.key(name))
        return pair

    def credentials(self, name: str | None) -> grpc.ChannelCredentials:
        """Channel credentials trusting this CA, with ``name``'s certificate (None: none)."""
        ca = self.ca_path.read_bytes()
        if name is None:
            return grpc.ssl_channel_credentials(root_certificates=ca)
        return grpc.ssl_channel_credentials(
            root_certificates=ca,
            private_key=self.key(name).read_bytes(),
            certificate_chain=self.cert(name).read_bytes(),
        )

    def channel(self, address: str, name: str | None, *, server_name: str | None = None) -> grpc.aio.Channel:
        options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
        return grpc.aio.secure_channel(address, self.credentials(name), options=options)


def served_certificate(address: str, pki: Pki, client: str) -> x509.Certificate:
    """The certificate a gateway presents to a new connection now (a TLS handshake with ``client``'s certificate)."""
    import socket

    host, _, port = address.rpartition(":")
    ctx = ssl.create_default_context(cafile=str(pki.ca_path))
    ctx.check_hostname = False
    ctx.load_cert_chain(pki.cert(client), pki.key(client))
    ctx.set_alpn_protocols(["h2"])
    with socket.create_connection((host, int(port)), timeout=10) as sock, ctx.wrap_socket(sock) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)
