"""TLS material by file path, re-read when the files change: rotation without a restart.

A server re-reads its files on the next handshake after they change (gRPC asks the fetcher of
``dynamic_ssl_server_credentials`` before every handshake; a stat of three files is all it costs
when nothing changed). A client reads them when it connects, and a long-lived client (a
replication link) asks ``changed()`` to reconnect with the new ones.

A rotation replaces the certificate and the key one after the other, so a reader may see a new
certificate with the old key for a moment: material that does not hold together (unreadable,
not PEM, a key that is not the certificate's) is refused and the last good material stays in
use until the files agree again. Paths are used as given, never resolved: a Kubernetes Secret
volume rotates by swapping a symlink, which a resolved path would never see.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

__all__ = [
    "ClientTls",
    "ServerTls",
    "TlsError",
    "TlsFiles",
    "TlsMaterial",
    "check_pair",
    "open_channel",
    "read_ca",
]

log = logging.getLogger("meshgate.tls")

_Stat = tuple[int, int, int, int] | None


class TlsError(OSError):
    """TLS material that cannot be used; the message names the file and what is wrong.

    An OSError: like a port in use, a gateway that cannot start for it says why in one line.
    ``path`` is the file to fix (for a key that is not the certificate's: the certificate).
    """

    def __init__(self, message: str, *, path: Path) -> None:
        super().__init__(message)
        self.path = path


def _stat(path: Path | None) -> _Stat:
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns)


# PEM files are a few kB; a CA bundle with every public root is about 250 kB.
_MAX_PEM_BYTES = 1024 * 1024


def _read(path: Path, what: str) -> bytes:
    try:
        # Only a regular file: a device (/dev/zero) would be read without end, a FIFO would block.
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise TlsError(f"the {what} {path} is not a regular file", path=path)
        with path.open("rb") as f:
            data = f.read(_MAX_PEM_BYTES + 1)
    except OSError as exc:
        if isinstance(exc, TlsError):
            raise
        raise TlsError(f"cannot read the {what} {path}: {exc.strerror or exc}", path=path) from None
    if len(data) > _MAX_PEM_BYTES:
        raise TlsError(f"the {what} {path} is over {_MAX_PEM_BYTES} bytes; a PEM file is a few kB", path=path)
    return data


def read_ca(path: Path) -> tuple[bytes, list[x509.Certificate]]:
    """The CA file's bytes and its certificates (one or more PEM blocks)."""
    data = _read(path, "CA file")
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise TlsError(f"the CA file {path} holds no PEM certificate", path=path) from None
    return data, certs


def check_pair(cert_path: Path, key_path: Path) -> tuple[bytes, bytes, x509.Certificate]:
    """The certificate's and key's bytes and the parsed certificate; TlsError unless the key is the certificate's."""
    cert_pem = _read(cert_path, "certificate")
    key_pem = _read(key_path, "private key")
    try:
        # The first certificate is the leaf; a chain may follow it.
        cert = x509.load_pem_x509_certificates(cert_pem)[0]
    except ValueError:
        raise TlsError(f"the certificate {cert_path} is not a PEM certificate", path=cert_path) from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise TlsError(
            f"the private key {key_path} is not an unencrypted PEM private key ({exc})", path=key_path
        ) from None
    public = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*public) != cert.public_key().public_bytes(*public):
        raise TlsError(f"the private key {key_path} is not the key of the certificate {cert_path}", path=cert_path)
    return cert_pem, key_pem, cert


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsMaterial:
    # None: the system's roots (a client of a public server) / no certificate of its own.
    ca: bytes | None
    cert: bytes | None
    key: bytes | None
    leaf: x509.Certificate | None
    # The files' stats when they were read: what `changed()` compares against.
    state: tuple[_Stat, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsFiles:
    ca: Path | None
    cert: Path | None = None
    key: Path | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError("a certificate needs its key and a key its certificate; give both or neither")

    def state(self) -> tuple[_Stat, ...]:
        return (_stat(self.ca), _stat(self.cert), _stat(self.key))

    def read(self) -> TlsMaterial:
        """The files' current material, checked; TlsError says which file is wrong."""
        # Stat first: a change that lands while reading is seen as a change next time.
        state = self.state()
        ca = read_ca(self.ca)[0] if self.ca is not None else None
        cert = key = leaf = None
        if self.cert is not None and self.key is not None:
            cert, key, leaf = check_pair(self.cert, self.key)
        return TlsMaterial(ca=ca, cert=cert, key=key, leaf=leaf, state=state)


class ServerTls:
    """Server credentials that follow the files: the next handshake after a change uses the new ones.

    ``require_client_auth``: the handshake requires a client certificate signed by the CA.
    gRPC Python can either require one or not ask at all (there is no "ask but accept none"),
    and only a certificate asked for shows up in the call's auth context.
    """

    def __init__(self, files: TlsFiles, *, require_client_auth: bool) -> None:
        if files.cert is None or files.key is None:
            raise ValueError("a TLS server needs its certificate and key")
        self.files = files
        self.require_client_auth = require_client_auth
        self._current = files.read()  # TlsError at start: a gateway does not start without its certificate
        self._refused_state: tuple[_Stat, ...] | None = None
        self.reloads = 0
        self.last_error = ""

    @property
    def certificate(self) -> x509.Certificate | None:
        return self._current.leaf

    def _configuration(self, material: TlsMaterial) -> grpc.ServerCertificateConfiguration:
        assert material.cert is not None and material.key is not None
        return grpc.ssl_server_certificate_configuration([(material.key, material.cert)], root_certificates=material.ca)

    def credentials(self) -> grpc.ServerCredentials:
        # The stubs type the fetcher as never returning None; gRPC takes None as "unchanged".
        fetch = cast(Callable[[], grpc.ServerCertificateConfiguration], self._fetch)
        return grpc.dynamic_ssl_server_credentials(
            self._configuration(self._current), fetch, require_client_authentication=self.require_client_auth
        )

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        # Called by gRPC's core before every handshake, on its own thread: cheap when nothing
        # changed, never raises (gRPC would fail the handshake), logs a bad state once.
        state = self.files.state()
        if state in (self._current.state, self._refused_state):
            return None
        try:
            material = self.files.read()
        except TlsError as exc:
            self._refused_state = state
            self.last_error = str(exc)
            log.warning("TLS files changed but cannot be used yet; still serving the previous ones: %s", exc)
            return None
        except Exception:
            self._refused_state = state
            log.exception("reading the TLS files failed; still serving the previous ones")
            return None
        self._current = material
        self._refused_state = None
        self.last_error = ""
        self.reloads += 1
        subject = material.leaf.subject.rfc4514_string() if material.leaf is not None else "?"
        serial = f"{material.leaf.serial_number:x}" if material.leaf is not None else "?"
        log.info("TLS files reloaded: serving certificate %s (serial %s) from the next handshake", subject, serial)
        return self._configuration(material)


class ClientTls:
    """Channel credentials from files, read when a channel is made.

    ``target_name`` (the name the server's certificate must carry, instead of the dialled
    host) is given per channel: a replicator expects each destination's region name.
    """

    def __init__(self, files: TlsFiles) -> None:
        self.files = files

    def material(self) -> TlsMaterial:
        return self.files.read()

    def credentials(self, material: TlsMaterial | None = None) -> grpc.ChannelCredentials:
        m = material or self.files.read()
        return grpc.ssl_channel_credentials(root_certificates=m.ca, private_key=m.key, certificate_chain=m.cert)

    def changed(self, material: TlsMaterial) -> bool:
        """The files differ from the ones ``material`` was read from."""
        return self.files.state() != material.state

    def channel(
        self,
        target: str,
        *,
        target_name: str | None = None,
        options: Sequence[tuple[str, Any]] = (),
        material: TlsMaterial | None = None,
        interceptors: Sequence[grpc.aio.ClientInterceptor] | None = None,
    ) -> grpc.aio.Channel:
        """A TLS channel to ``target``; the server's certificate must name ``target_name`` when given."""
        opts = list(options)
        if target_name:
            opts.append(("grpc.ssl_target_name_override", target_name))
        return grpc.aio.secure_channel(target, self.credentials(material), options=opts, interceptors=interceptors)


def open_channel(
    target: str,
    tls: ClientTls | None,
    *,
    target_name: str | None = None,
    options: Sequence[tuple[str, Any]] = (),
    interceptors: Sequence[grpc.aio.ClientInterceptor] | None = None,
) -> grpc.aio.Channel:
    """A channel to ``target``: TLS with ``tls``, plaintext without."""
    if tls is None:
        return grpc.aio.insecure_channel(target, options=list(options), interceptors=interceptors)
    return tls.channel(target, target_name=target_name, options=options, interceptors=interceptors)
