"""TLS between regions and for clients: certificates, region identities, credentials that follow file changes."""

from meshgate.tls._certs import (
    CLIENT_URI_PREFIX,
    REGION_URI_PREFIX,
    CertPair,
    make_ca,
    make_client_cert,
    make_region_cert,
    write_pair,
)
from meshgate.tls._files import ClientTls, ServerTls, TlsError, TlsFiles, TlsMaterial, check_pair, open_channel, read_ca
from meshgate.tls._identity import PeerIdentity, peer_identity, regions_named

__all__ = [
    "CLIENT_URI_PREFIX",
    "REGION_URI_PREFIX",
    "CertPair",
    "ClientTls",
    "PeerIdentity",
    "ServerTls",
    "TlsError",
    "TlsFiles",
    "TlsMaterial",
    "check_pair",
    "make_ca",
    "make_client_cert",
    "make_region_cert",
    "open_channel",
    "peer_identity",
    "read_ca",
    "regions_named",
    "write_pair",
]
