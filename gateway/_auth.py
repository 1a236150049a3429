"""Client authentication and allow-lists: bearer tokens from the mesh file's ``security.tokens``.

A client sends gRPC metadata ``authorization: Bearer <token>``. Without tokens in the mesh file
every caller is let in as an anonymous client named after its IP address (so the per-client
limits still have a key). Tokens are compared in constant time, and a token never appears in a
message, a log line or a repr: clients are named by their ``name``.

The handlers call ``authenticate`` first (they need the client for its allow-lists and its
limits). Replication is not a client's call: a peer region proves itself by its certificate
(mTLS) and/or by the secret the regions share, sent as ``meshgate-replication-secret`` metadata
(never as ``authorization``, so a replication secret is never taken for a client token nor a
token for it); ``ReplicationGuard`` checks it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

import grpc

from meshgate.config import ClientToken, SecuritySettings
from meshgate.gateway._admission import RESERVED_TOPIC_PREFIX
from meshgate.router import pattern_covers, pattern_regex

__all__ = [
    "AUTHORIZATION",
    "REPLICATION_SECRET_KEY",
    "Authenticator",
    "Client",
    "ReplicationGuard",
    "abort",
    "authenticate",
    "peer_host",
]

AUTHORIZATION = "authorization"
_BEARER = "bearer "
_HOW = "send gRPC metadata 'authorization: Bearer <token>' (meshgate CLI: --token or MESHGATE_TOKEN)"
_SHOWN_PATTERNS = 5
# The metadata key of the replication secret: its own, not `authorization`.
REPLICATION_SECRET_KEY = "meshgate-replication-secret"


def peer_host(peer: str) -> str:
    """The address part of a gRPC peer string (``ipv4:10.0.0.7:51234`` -> ``10.0.0.7``), without its port."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0] or rest
    if kind == "ipv6":
        host = rest.rpartition(":")[0] if rest.startswith("[") else rest
        return host.strip("[]") or rest
    return peer or "unknown"


def _shown(patterns: Sequence[str]) -> str:
    if not patterns:
        return "none"
    head = ", ".join(patterns[:_SHOWN_PATTERNS])
    return head if len(patterns) <= _SHOWN_PATTERNS else f"{head}, ... ({len(patterns)} in all)"


@dataclass(frozen=True, slots=True, kw_only=True)
class Client:
    """Who is calling, and what it may do. ``patterns`` of None means anything (no tokens configured)."""

    name: str
    # What the per-client limits count by: the token's name, or the caller's IP address.
    key: str
    authenticated: bool
    publish: tuple[str, ...] | None = None
    subscribe: tuple[str, ...] | None = None
    admin: bool = True
    # SHA-256 of the token, to find the client's entry again after a reload; never shown.
    digest: bytes = field(default=b"", repr=False)
    _publish_re: re.Pattern[str] | None = field(default=None, repr=False, compare=False)
    # The publish patterns that name the reserved prefix literally (``meshgate/dlq/>``; not ``>``).
    _reserved_re: re.Pattern[str] | None = field(default=None, repr=False, compare=False)

    @property
    def label(self) -> str:
        return f"client {self.name!r}" if self.authenticated else f"client at {self.name}"

    def may_publish(self, topic: str) -> bool:
        if topic.startswith(RESERVED_TOPIC_PREFIX):
            # The gateway's own topics (dead letters): only a pattern that names them lets a client in.
            return self._reserved_re is not None and self._reserved_re.fullmatch(topic) is not None
        if self.publish is None:
            return True
        return self._publish_re is not None and self._publish_re.fullmatch(topic) is not None

    def may_subscribe(self, pattern: str) -> bool:
        if self.subscribe is None:
            return True
        return any(pattern_covers(allowed, pattern) for allowed in self.subscribe)

    def publish_refusal(self, topic: str) -> str:
        if topic.startswith(RESERVED_TOPIC_PREFIX):
            return (
                f"{self.label} may not publish to topic {topic!r}: topics under {RESERVED_TOPIC_PREFIX!r} are"
                " reserved for the gateway (dead letters: meshgate/dlq/<destination>); publish elsewhere, or have"
                f" the operator name the topic in the client's publish list with a pattern that starts with"
                f" {RESERVED_TOPIC_PREFIX!r} (security.tokens in the mesh file; '>' does not count)"
            )
        return (
            f"{self.label} may not publish to topic {topic!r}: no pattern of its publish list"
            f" ({_shown(self.publish or ())}) matches it; publish within it, or have the operator add a"
            " pattern to the client's publish list (security.tokens in the mesh file)"
        )

    def subscribe_refusal(self, pattern: str) -> str:
        allowed = self.subscribe or ()
        hint = f", e.g. {allowed[0]!r}" if allowed else ""
        return (
            f"{self.label} may not subscribe to {pattern!r}: it is not within its subscribe patterns"
            f" ({_shown(allowed)}); subscribe to a pattern inside one of them{hint}, or have the operator"
            " extend the client's subscribe list (security.tokens in the mesh file)"
        )

    def revoked_refusal(self) -> str:
        """Why an open call ends when a reload removed this client's token (or turned tokens on)."""
        if not self.authenticated:
            return (
                f"a reload of the mesh file turned client tokens on; {self.label} sent none:"
                " reconnect with a token (authorization: Bearer <token>)"
            )
        return f"the token of {self.label} was removed from the mesh file by a reload; reconnect with a current token"

    def admin_refusal(self, method: str) -> str:
        return (
            f"{self.label} may not call Admin.{method}: it is not an admin client;"
            " use an admin client's token, or set admin: true for it in security.tokens of the mesh file"
        )


def _any_of(patterns: Sequence[str]) -> re.Pattern[str] | None:
    return re.compile("|".join(f"(?:{pattern_regex(p).pattern})" for p in patterns)) if patterns else None


def _client_of(entry: ClientToken, digest: bytes) -> Client:
    publish_re = _any_of(entry.publish)
    reserved_re = _any_of([p for p in entry.publish if p.startswith(RESERVED_TOPIC_PREFIX)])
    return Client(
        name=entry.name,
        key=entry.name,
        authenticated=True,
        publish=entry.publish,
        subscribe=entry.subscribe,
        admin=entry.admin,
        digest=digest,
        _publish_re=publish_re,
        _reserved_re=reserved_re,
    )


class AuthError(Exception):
    """Why a call is not let in: a gRPC code and a message that never holds the token."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Authenticator:
    """The token table of one config; a reload builds a new one and swaps it in one assignment."""

    def __init__(self, security: SecuritySettings) -> None:
        # Digests, so that every comparison has the same length whatever the caller sent.
        self._entries = [(hashlib.sha256(t.token.encode()).digest(), t) for t in security.tokens]
        self._by_digest = {digest: _client_of(entry, digest) for digest, entry in self._entries}

    def __repr__(self) -> str:
        return f"Authenticator({len(self._entries)} client tokens)"

    def identify(self, metadata: Iterable[tuple[str, str | bytes]] | None, peer: str) -> Client:
        """The calling client, or AuthError (UNAUTHENTICATED) when tokens are on and none valid was sent."""
        if not self._entries:
            host = peer_host(peer)
            return Client(name=host, key=host, authenticated=False)
        values = [v for k, v in metadata or () if k.lower() == AUTHORIZATION]
        if not values:
            raise AuthError(grpc.StatusCode.UNAUTHENTICATED, f"this gateway requires a client token: {_HOW}")
        if len(values) > 1:
            raise AuthError(
                grpc.StatusCode.UNAUTHENTICATED, f"{len(values)} authorization entries sent; send exactly one"
            )
        value = values[0]
        text = value.decode("latin-1") if isinstance(value, bytes) else value
        if text[: len(_BEARER)].lower() != _BEARER or not text[len(_BEARER) :].strip():
            raise AuthError(
                grpc.StatusCode.UNAUTHENTICATED,
                f"the authorization metadata is not 'Bearer <token>'; {_HOW}",
            )
        presented = hashlib.sha256(text[len(_BEARER) :].strip().encode("utf-8", "surrogateescape")).digest()
        found: ClientToken | None = None
        # Every entry is compared, and each comparison takes the same time: how long this takes says
        # nothing about which token, or how much of one, was right.
        for digest, entry in self._entries:
            if hmac.compare_digest(presented, digest):
                found = entry
        if found is None:
            raise AuthError(
                grpc.StatusCode.UNAUTHENTICATED,
                "the token sent is not valid for this gateway (unknown, mistyped or rotated away);"
                " check the client's token against security.tokens of the mesh file",
            )
        return self._by_digest[presented]

    def refresh(self, client: Client) -> Client | None:
        """The same caller under this (newer) table: None when its token was removed."""
        if not client.authenticated:
            if self._entries:
                return None
            return client
        if not self._entries:
            return Client(name=client.name, key=client.key, authenticated=False)
        return self._by_digest.get(client.digest)


async def abort(context: grpc.aio.ServicerContext[Any, Any], error: AuthError) -> NoReturn:
    await context.abort(error.code, error.message)
    raise AssertionError("context.abort returned")  # pragma: no cover: abort always raises


async def authenticate(
    auth: Authenticator,
    context: grpc.aio.ServicerContext[Any, Any],
    *,
    on_refused: Callable[[], object] | None = None,
) -> Client:
    """The calling client; the call ends UNAUTHENTICATED when tokens are on and none valid was sent.

    ``on_refused`` runs just before such a call ends (the event path counts its refused events).
    """
    try:
        return auth.identify(context.invocation_metadata(), context.peer())
    except AuthError as exc:
        if on_refused is not None:
            on_refused()
        await abort(context, exc)


class ReplicationGuard:
    """Who may call ``Replicate``, fixed when the gateway starts (a reload that changes it needs a restart).

    With a secret, a call must carry it (compared in constant time); the TLS check of the peer's
    certificate is the replication service's own. The secret is sent by this gateway's links too.
    """

    def __init__(self, security: SecuritySettings, *, secret: str | None = None) -> None:
        # ``secret`` replaces the file's (meshgate up makes one per run for its own regions).
        secret = secret if secret is not None else security.replication_secret
        self._secret = secret
        self._digest = hashlib.sha256(secret.encode()).digest() if secret is not None else None
        self._variable = security.replication_secret_variable or "the replication secret's variable"
        self.tls = security.ca is not None
        self.anonymous = not self.tls and secret is None

    def __repr__(self) -> str:
        kinds = [k for k, on in (("certificate", self.tls), ("secret", self._digest is not None)) if on]
        return f"ReplicationGuard({' and '.join(kinds) or 'anonymous'})"

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """What a link sends with its Replicate call."""
        return ((REPLICATION_SECRET_KEY, self._secret),) if self._secret is not None else ()

    def check(self, metadata: Iterable[tuple[str, str | bytes]] | None, *, region: str) -> AuthError | None:
        """Why a Replicate call to ``region`` is not let in (UNAUTHENTICATED), or None. Never shows a secret."""
        if self._digest is None:
            return None
        values = [v for k, v in metadata or () if k.lower() == REPLICATION_SECRET_KEY]
        how = (
            f"a peer must send the mesh's replication secret ({self._variable} on every gateway of the mesh,"
            f" security.replication_secret) as gRPC metadata {REPLICATION_SECRET_KEY}"
        )
        if not values:
            return AuthError(
                grpc.StatusCode.UNAUTHENTICATED,
                f"region {region} takes Replicate only from a region of the mesh: {how}",
            )
        if len(values) > 1:
            return AuthError(
                grpc.StatusCode.UNAUTHENTICATED,
                f"{len(values)} {REPLICATION_SECRET_KEY} entries sent; send exactly one",
            )
        value = values[0]
        text = value.decode("latin-1") if isinstance(value, bytes) else value
        presented = hashlib.sha256(text.encode("utf-8", "surrogateescape")).digest()
        if not hmac.compare_digest(presented, self._digest):
            return AuthError(
                grpc.StatusCode.UNAUTHENTICATED,
                f"the replication secret sent is not region {region}'s (mistyped, or rotated on some gateways only);"
                f" {how}",
            )
        return None
