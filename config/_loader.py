"""Loading a mesh file: YAML with positions, ``${VAR}`` substitution, the JSON Schema, cross-checks, the model.

Every problem of a file is reported at once, each as ``FILE:LINE:COL: message``, so an operator
fixes a file in one pass rather than one error per run.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import ipaddress
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path as FsPath
from typing import Any, cast

import jsonschema
from cryptography import x509
from cryptography.exceptions import InvalidSignature

from meshgate.config._errors import ConfigError, ConfigIssue
from meshgate.config._model import (
    BrokerKind,
    ClientCerts,
    ClientToken,
    KafkaSettings,
    Limits,
    MeshConfig,
    NatsSettings,
    RegionConfig,
    RegionTls,
    ReplicationMode,
    RouteRule,
    SecuritySettings,
    Settings,
)
from meshgate.config._values import format_duration, parse_duration, parse_size, split_host_port
from meshgate.config._yaml import Document, Path, format_path, parse_yaml, position_of_index
from meshgate.tls import TlsError, check_pair, read_ca, regions_named
from meshgate.topics import validate_pattern

__all__ = [
    "REPLICATION_SECRET_VARIABLE",
    "SCHEMA_PATH",
    "anonymous_replication_warning",
    "load_config",
    "load_config_bytes",
    "load_config_text",
    "mesh_schema",
    "replication_auth_issue",
]

SCHEMA_PATH = FsPath(__file__).resolve().with_name("mesh.schema.json")

# A mesh file's size: checked before it is read (parsing takes about a second per MB, and a reload
# holds the next one). 20,000 rules, the most a file may have, take about 1.5 MB.
DEFAULT_MAX_CONFIG_BYTES = 4 * 1024 * 1024
# Not a key of the file, which would have to be read to know it: an environment variable of the
# process that reads it (gateway, CLI), a size such as 8MiB.
MAX_CONFIG_BYTES_ENV = "MESHGATE_CONFIG_MAX_BYTES"
# Rules of event_mesh.routing; 5,000 load in about a second, each rule costs admission nothing
# (the router matches a trie of levels) but a reload parses them all.
MAX_RULES = 20_000

_KINDS = tuple(k.value for k in BrokerKind)
# Schema failures that a cross-check explains better at the same place.
_SUPERSEDED_VALIDATORS = frozenset({"pattern", "minLength", "maxLength"})
# A client token is one variable reference and nothing else: a default would be a secret in the file.
_TOKEN_REFERENCE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)\}")
_TOKEN_DEFAULT = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*:-.*\}", re.DOTALL)
# What an HTTP/2 header value carries as is: printable ASCII, no spaces.
_TOKEN_CHARS = re.compile(r"[\x21-\x7e]+")
MIN_TOKEN_CHARS = 16
# The substitution's generic advice for an unset variable offers a default, which a token may not have.
_UNSET_TOKEN_VARIABLE = re.compile(
    r"(?P<head>event_mesh\.security\.(?:(?P<token>tokens\[\d+\]\.token)|replication_secret):"
    r" environment variable \w+ is not set); set it, or give.*"
)
# The variable the docs, the Helm chart and the test suite use for security.replication_secret.
REPLICATION_SECRET_VARIABLE = "MESH_REPLICATION_SECRET"
_SECRET_PATH: Path = ("event_mesh", "security", "replication_secret")
# A request carries one event plus at most this much of framing and gateway fields.
_EVENT_FRAMING_BYTES = 16 * 1024
# Renewals come every third of the lease TTL: below this, one slow broker round trip loses a link.
_MIN_LEASE_TTL_SECONDS = 1.0
_MIN_METADATA_BYTES = 4 * 1024


@functools.cache
def mesh_schema() -> dict[str, Any]:
    """The JSON Schema of mesh files (Draft 2020-12), as shipped in ``config/mesh.schema.json``."""
    schema: dict[str, Any] = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    return schema


@functools.cache
def _validator() -> jsonschema.protocols.Validator:
    return jsonschema.Draft202012Validator(mesh_schema())


def _describe(value: object) -> str:
    """'a string', 'a list'... as said after 'got'."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the string {value!r}" if len(value) <= 60 else "a long string"
    if isinstance(value, list):
        return "an empty list" if not value else "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


def _describe_type(value: object) -> str:
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return _describe(value)


def _model_default(model: type[Any], name: str) -> Any:
    """The model's default of one field. The loader has no defaults of its own: what a file leaves
    out is what the model says (and the schema's "default"s agree with the model's, a test checks)."""
    for f in dataclasses.fields(model):
        if f.name == name:
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
            return f.default
    raise KeyError(f"{model.__name__} has no field {name!r}")


def _kind_of(region: Mapping[str, object]) -> object:
    """A region's kind as written, else the default kind (a BrokerKind, equal to its value)."""
    return region.get("kind", _model_default(RegionConfig, "kind"))


def _client_certs(value: object) -> object:
    # YAML 1.1 reads an unquoted `off` as the boolean false.
    return ClientCerts.OFF.value if value is False else value


def _base_dir(source: str) -> FsPath:
    """The folder that relative paths in the mesh file start from: the file's own, else the working directory."""
    if source.startswith("<"):
        return FsPath.cwd()
    return FsPath(os.path.abspath(source)).parent


def _file_path(base: FsPath, value: str) -> FsPath:
    # Normalised but never resolved: a Kubernetes Secret volume rotates its files by swapping
    # a symlink, which a resolved path would no longer follow.
    return FsPath(os.path.normpath(base / os.path.expanduser(value)))


def _suggest(word: str, choices: list[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


# Host names and addresses that all reach this machine: a peer that dials one reaches a gateway
# listening on another (and binding the wildcard takes the port of the loopback addresses too).
_LOOPBACK = "this machine"
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})
_LOOPBACK_IPS = frozenset(
    {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
        ipaddress.ip_address("0.0.0.0"),
        ipaddress.ip_address("::"),
    }
)
_LOOPBACK_NOTE = "localhost, 127.0.0.1, [::1], 0.0.0.0 and [::] all reach this machine"


def _address_key(address: str, *, default_port: int | None) -> tuple[str, int | None]:
    """``address`` as compared with others: host case and spelling of one IP address aside, the
    loopback and wildcard addresses as one, and the broker's default port when none is given.

    No DNS lookups: a file is checked the same wherever it is checked, and two names of one host
    are the operator's to see. ValueError for an address that is not host[:port]."""
    host, port = split_host_port(address, port_required=False)
    name = host.lower().rstrip(".")
    if name in _LOOPBACK_NAMES or name.endswith(".localhost"):
        name = _LOOPBACK
    else:
        try:
            ip = ipaddress.ip_address(name)
        except ValueError:
            pass
        else:
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
            name = _LOOPBACK if ip in _LOOPBACK_IPS else ip.compressed
    return name, port if port is not None else default_port


_BrokerKey = tuple[str, str, int | None]
# Names that only mean something inside one network (a Kubernetes cluster, a LAN): two regions
# in two clusters may each have their own "nats.nats.svc.cluster.local".
_LOCAL_SUFFIXES = (".local", ".localdomain", ".internal", ".lan", ".home.arpa", ".svc")


def _network_local(host: str) -> bool:
    """Whether ``host`` (as _address_key gives it) names a place only within the network it is used in."""
    if host == _LOOPBACK or ("." not in host.strip("[]") and ":" not in host) or host.endswith(_LOCAL_SUFFIXES):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_private or ip.is_link_local


def _broker_key(address: str, *, default_port: int, gateway_host: str) -> _BrokerKey:
    """Where a region's broker is. A broker is dialed by its own region's gateway, so an address of
    a local network (127.0.0.1 of a sidecar, a cluster's service name) is one place only for
    regions whose gateways run on one host (``meshgate up``, a test) and unknown otherwise: those
    are given the gateway's host as their scope; global names and addresses have scope ''."""
    host, port = _address_key(address, default_port=default_port)
    return (gateway_host if _network_local(host) else "", host, port)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class _BrokerUse:
    """What one region keeps on its brokers: where, and under which stream and prefix."""

    label: str
    line: int
    kind: str
    family: str
    # (index in brokers, as written, as compared: (scope, host, port), see _broker_key)
    addresses: tuple[tuple[int, str, _BrokerKey], ...]
    stream: str
    prefix: str

    @property
    def keys(self) -> frozenset[_BrokerKey]:
        return frozenset(key for _, _, key in self.addresses)


def _shared_broker(address: str, key: _BrokerKey, other: _BrokerUse) -> str:
    """'broker X is also a broker of region R (line L)', saying why when the two are spelled apart."""
    written = next(a for _, a, k in other.addresses if k == key)
    where = f"a broker of region {other.label} (line {other.line})"
    scope, host, port = key
    notes = []
    if scope:
        on = "this machine" if scope == _LOOPBACK else f"host {scope}"
        notes.append(f"both regions' gateways run on {on}, so it is one place for both")
    if written.lower() == address.lower():
        why = f" ({'; '.join(notes)})" if notes else ""
        return f"broker {address} is also {where}{why}"
    if ":" not in address.rpartition("]")[2] or ":" not in written.rpartition("]")[2]:
        notes.append(f"without a port, a broker is at port {port}")
    if host == _LOOPBACK:
        notes.append(_LOOPBACK_NOTE)
    why = f" ({'; '.join(notes)})" if notes else ""
    return f"broker {address} is the same as {written}, {where}{why}"


def _broker_conflict(use: _BrokerUse, other: _BrokerUse) -> str | None:
    """Why two regions on one broker cannot work, or None when they keep apart."""
    embedded = BrokerKind.EMBEDDED.value
    if use.kind == embedded and other.kind == embedded:
        return (
            "both are embedded regions, so both would run a broker listening there and the second would fail"
            " to start; give this one another port, or no brokers (a free port of 127.0.0.1)"
        )
    if use.family == "kafka":
        if use.prefix == other.prefix:
            return (
                f"both use kafka.topic_prefix {use.prefix!r}, so they would share their topics, consumer groups"
                " and checkpoints (each reading the other's events as its own); give this region its own"
                " kafka.topic_prefix (e.g. 'eu.') that neither starts nor is started by the other's, or other brokers"
            )
        if use.prefix.startswith(other.prefix) or other.prefix.startswith(use.prefix):
            return (
                f"its kafka.topic_prefix {use.prefix!r} and that region's {other.prefix!r} overlap (one starts the"
                " other), so one region would read the other's topics as its own; give this region a prefix that"
                " neither starts nor is started by the other's, or other brokers"
            )
        return None
    if use.stream == other.stream:
        return (
            f"both use JetStream stream {use.stream}, so they would share one stream (each reading the other's"
            " events as its own); give this region its own nats.stream and nats.subject_prefix"
            " (e.g. stream: MESHGATE_EU, subject_prefix: 'eu.'), or other brokers"
        )
    if use.prefix.startswith(other.prefix) or other.prefix.startswith(use.prefix):
        return (
            f"its stream {use.stream} would hold subjects {use.prefix}> and that region's stream {other.stream}"
            f" holds {other.prefix}>, which overlap, and JetStream refuses a second stream over the same subjects;"
            " give this region a nats.subject_prefix that neither starts nor is started by the other's"
            " (e.g. 'eu.'), or other brokers"
        )
    return None


class _Checker:
    def __init__(self, *, doc: Document, source: str, check_files: bool = True, region: str | None = None) -> None:
        self.doc = doc
        self.source = source
        self.check_files = check_files
        # With a region, only its certificate files (and the CA) are read: see load_config.
        self.region = region
        self.issues: list[tuple[Path, str, ConfigIssue]] = []

    def add(self, path: Path, message: str, *, key: bool = False, origin: str = "check") -> None:
        line, column = self.doc.position(path, key=key)
        where = format_path(path)
        text = f"{where}: {message}" if where else message
        self.issues.append((path, origin, ConfigIssue(file=self.source, line=line, column=column, message=text)))

    # ---- JSON Schema -------------------------------------------------------------------------

    def schema(self) -> None:
        data: Any = self.doc.data
        for error in _validator().iter_errors(data):
            self.schema_error(error)

    def schema_error(self, error: jsonschema.ValidationError) -> None:
        path: Path = tuple(error.absolute_path)
        schema = error.schema if isinstance(error.schema, dict) else {}
        expected = schema.get("x-expected")
        value = error.instance
        kind = str(error.validator)
        if kind == "additionalProperties" and isinstance(value, dict):
            allowed = list(schema.get("properties", {}))
            for key in value:
                if key not in allowed:
                    self.add(
                        (*path, key),
                        f"unknown key {key!r}{_suggest(key, allowed)} (allowed here: {', '.join(allowed)})",
                        key=True,
                        origin=kind,
                    )
            return
        if kind == "required" and isinstance(value, dict):
            required: list[str] = list(cast(list[str], error.validator_value))
            for key in required:
                if key not in value:
                    root = "root " if not path else ""
                    self.add(path, f"missing the required {root}key {key!r}", origin=kind)
            return
        if kind == "uniqueItems" and isinstance(value, list):
            seen: dict[str, int] = {}
            for i, item in enumerate(value):
                marker = json.dumps(item, sort_keys=True, default=str)
                if marker in seen:
                    self.add((*path, i), f"{item!r} is listed twice (first as item {seen[marker] + 1}); keep one")
                else:
                    seen[marker] = i
            return
        if kind == "enum":
            choices = [str(c) for c in cast(list[object], error.validator_value)]
            self.add(
                path,
                f"{value!r} is not one of {', '.join(choices)}{_suggest(str(value), choices)}",
                origin=kind,
            )
            return
        got = _describe_type(value) if kind == "type" else _describe(value)
        if expected is None:
            self.add(path, error.message, origin=kind)
        else:
            self.add(path, f"expected {expected}, got {got}", origin=kind)

    # ---- cross-checks ------------------------------------------------------------------------

    def cross(self) -> None:
        data = self.doc.data
        mesh = data.get("event_mesh") if isinstance(data, dict) else None
        if not isinstance(mesh, dict):
            return
        regions = mesh.get("regions")
        names = self.check_regions(regions if isinstance(regions, list) else [])
        routing = mesh.get("routing")
        if isinstance(routing, list):
            self.check_routing(routing, names)
        settings = mesh.get("settings")
        window = self.check_settings(settings if isinstance(settings, dict) else {})
        if window is not None and isinstance(regions, list):
            self.check_retention(regions, window)
        security = mesh.get("security")
        if isinstance(security, dict) and isinstance(security.get("tokens"), list):
            self.check_tokens(security["tokens"])
        if isinstance(security, dict):
            self.check_replication(security)
        self.check_security(
            security if isinstance(security, dict) else {}, regions if isinstance(regions, list) else []
        )

    def check_regions(self, regions: list[object]) -> list[str] | None:
        """The region names, or None when some name is unknown (an unset variable) so none can be checked against."""
        names: dict[str, int] = {}
        unknown_name = False
        addresses: dict[tuple[str, int | None], tuple[str, str, int, str]] = {}
        for i, region in enumerate(regions):
            if not isinstance(region, dict):
                continue
            base: Path = ("event_mesh", "regions", i)
            name = region.get("name")
            line = self.doc.position(base)[0]
            if (*base, "name") in self.doc.broken:
                unknown_name = True
            elif isinstance(name, str):
                if name in names:
                    first = self.doc.position(("event_mesh", "regions", names[name]))[0]
                    self.add((*base, "name"), f"region {name!r} is declared twice (first at line {first}); rename one")
                else:
                    names[name] = i
            label = name if isinstance(name, str) else f"#{i}"
            kind = _kind_of(region)
            if kind in _KINDS:
                self.check_kind(base, region, kind)
            brokers = region.get("brokers")
            if isinstance(brokers, list):
                for j, broker in enumerate(brokers):
                    if isinstance(broker, str):
                        self.check_address((*base, "brokers", j), broker, port_required=False)
            for what in ("gateway", "metrics"):
                address = region.get(what)
                if not isinstance(address, str) or not self.check_address((*base, what), address, port_required=True):
                    continue
                norm = _address_key(address, default_port=None)
                if norm in addresses:
                    other, other_what, other_line, other_address = addresses[norm]
                    same = "" if address.lower() == other_address.lower() else f"the same as {other_address}, which is "
                    alias = f" ({_LOOPBACK_NOTE})" if same and norm[0] == _LOOPBACK else ""
                    self.add(
                        (*base, what),
                        f"address {address} is {same}already the {other_what} of region {other} (line {other_line})"
                        f"{alias}; every gateway and metrics endpoint needs its own HOST:PORT",
                    )
                else:
                    addresses[norm] = (label, what, line, address)
        self.check_shared_brokers(regions)
        return None if unknown_name else list(names)

    def check_shared_brokers(self, regions: list[object]) -> None:
        """Two regions on one broker (cluster) must not share what they store there.

        Regions share a broker when they list the same address (spelled alike or not; no DNS
        lookups). Two embedded regions there would both listen on it. Two NATS regions may share
        a server only with their own stream and subjects that do not overlap (JetStream refuses a
        second stream over the same subjects), two Kafka regions only with topic prefixes where
        neither starts the other (a region reads every topic under its prefix as its own)."""
        seen: list[_BrokerUse] = []
        for i, region in enumerate(regions):
            if not isinstance(region, dict):
                continue
            use = self.broker_use(i, region)
            if use is None:
                continue
            for other in seen:
                if other.family != use.family:
                    continue
                shared = next(((j, a, key) for j, a, key in use.addresses if key in other.keys), None)
                if shared is None:
                    continue
                reason = _broker_conflict(use, other)
                if reason is not None:
                    j, address, key = shared
                    self.add(
                        ("event_mesh", "regions", i, "brokers", j),
                        f"{_shared_broker(address, key, other)}; {reason}",
                    )
                    break
            seen.append(use)

    def broker_use(self, i: int, region: dict[str, object]) -> _BrokerUse | None:
        base: Path = ("event_mesh", "regions", i)
        kind = _kind_of(region)
        brokers = region.get("brokers")
        if kind not in _KINDS or not isinstance(brokers, list):
            return None
        if kind == BrokerKind.EMBEDDED.value:
            # An embedded region listens on its first broker address only (else on a free port).
            brokers = brokers[:1]
        family = "kafka" if kind == BrokerKind.KAFKA.value else "nats"
        default_port = 9092 if family == "kafka" else 4222
        gateway = region.get("gateway")
        try:
            # Without one it listens on the default 0.0.0.0: this machine.
            gateway_host = _address_key(gateway, default_port=None)[0] if isinstance(gateway, str) else _LOOPBACK
        except ValueError:
            return None  # check_address reported it
        addresses: list[tuple[int, str, _BrokerKey]] = []
        for j, broker in enumerate(brokers):
            if not isinstance(broker, str) or (*base, "brokers", j) in self.doc.broken:
                continue
            try:
                addresses.append((j, broker, _broker_key(broker, default_port=default_port, gateway_host=gateway_host)))
            except ValueError:
                continue  # check_address reported it
        block = region.get(family)
        settings = block if isinstance(block, dict) else {}
        if family == "kafka":
            stream, prefix = "", settings.get("topic_prefix", KafkaSettings().topic_prefix)
        else:
            stream, prefix = (
                settings.get("stream", NatsSettings().stream),
                settings.get("subject_prefix", NatsSettings().subject_prefix),
            )
        if not isinstance(stream, str) or not isinstance(prefix, str) or not addresses:
            return None
        if any((*base, family, key) in self.doc.broken for key in ("stream", "subject_prefix", "topic_prefix")):
            return None
        name = region.get("name")
        return _BrokerUse(
            label=name if isinstance(name, str) else f"#{i + 1}",
            line=self.doc.position(base)[0],
            kind=kind,
            family=family,
            addresses=tuple(addresses),
            stream=stream,
            prefix=prefix,
        )

    def check_kind(self, base: Path, region: dict[str, object], kind: str) -> None:
        brokers = region.get("brokers")
        if kind in (BrokerKind.NATS.value, BrokerKind.KAFKA.value):
            if "brokers" not in region:
                self.add(
                    base,
                    f"a {kind} region needs brokers: a list of at least one host[:port]"
                    " (or kind: embedded to run a broker on this machine)",
                )
            elif isinstance(brokers, list) and not brokers:
                self.add((*base, "brokers"), f"a {kind} region needs at least one broker host[:port]")
        block_kinds = {"nats": ("nats", "embedded"), "kafka": ("kafka",)}
        for block, fits in block_kinds.items():
            if block in region and kind not in fits:
                self.add(
                    (*base, block),
                    f"{block} settings do not apply to a {kind} region; remove the block"
                    f" or set kind: {' or '.join(fits)}",
                    key=True,
                )
        nats = region.get("nats")
        if not isinstance(nats, dict):
            return
        if kind == BrokerKind.NATS.value and nats.get("sync_always") is True:
            self.add(
                (*base, "nats", "sync_always"),
                "sync_always applies only to embedded regions; a nats region's server sets its own sync"
                " policy (jetstream sync_interval)",
                key=True,
            )
        replicas = nats.get("replicas")
        if kind == BrokerKind.EMBEDDED.value and isinstance(replicas, int) and replicas > 1:
            self.add(
                (*base, "nats", "replicas"),
                f"an embedded region runs one nats-server, so replicas must be 1, got {replicas};"
                " use kind: nats for a JetStream cluster",
            )

    def check_address(self, path: Path, address: str, *, port_required: bool) -> bool:
        try:
            split_host_port(address, port_required=port_required)
        except ValueError as exc:
            self.add(path, str(exc))
            return False
        return True

    def check_routing(self, routing: list[object], names: list[str] | None) -> None:
        for i, rule in enumerate(routing):
            if not isinstance(rule, dict):
                continue
            base: Path = ("event_mesh", "routing", i)
            topic = rule.get("topic")
            if isinstance(topic, str):
                reason = validate_pattern(topic)
                if reason is not None:
                    self.add((*base, "topic"), reason)
            regions = rule.get("regions")
            if not isinstance(regions, list) or not names:
                continue
            for j, region in enumerate(regions):
                if isinstance(region, str) and region not in names:
                    self.add(
                        (*base, "regions", j),
                        f"unknown region {region!r}{_suggest(region, names)} (regions: {', '.join(names)})",
                    )

    @staticmethod
    def duration(value: object) -> float | None:
        try:
            return parse_duration(value)
        except (TypeError, ValueError):
            return None  # the schema reports it

    @staticmethod
    def count(value: object, default: int) -> int | None:
        if value is None:
            return default
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        return None

    def check_settings(self, settings: dict[str, object]) -> float | None:
        base: Path = ("event_mesh", "settings")
        window = self.duration(settings.get("idempotency_window", Settings().idempotency_window_seconds))
        if window is not None and window <= 0:
            self.add(
                (*base, "idempotency_window"),
                "the idempotency window must be longer than 0; retries of an event id would be stored twice",
            )
        lease_ttl = self.duration(settings.get("lease_ttl", "10s"))
        if lease_ttl is not None and lease_ttl < _MIN_LEASE_TTL_SECONDS:
            self.add(
                (*base, "lease_ttl"),
                f"lease_ttl {format_duration(lease_ttl)} is below {format_duration(_MIN_LEASE_TTL_SECONDS)}; a lease"
                " renewed every third of it would lapse on any pause of the gateway or its broker",
            )
        limits = settings.get("limits")
        if isinstance(limits, dict):
            lbase: Path = (*base, "limits")
            defaults = Limits()
            batch = self.count(limits.get("max_batch_events"), defaults.max_batch_events)
            per_stream = self.count(
                limits.get("max_inflight_events_per_stream"), defaults.max_inflight_events_per_stream
            )
            total = self.count(limits.get("max_inflight_events"), defaults.max_inflight_events)
            if batch is not None and per_stream is not None and batch > per_stream:
                key = "max_batch_events" if "max_batch_events" in limits else "max_inflight_events_per_stream"
                self.add(
                    (*lbase, key),
                    f"max_batch_events ({batch}) is above max_inflight_events_per_stream ({per_stream});"
                    " a full batch could never be admitted",
                )
            if per_stream is not None and total is not None and per_stream > total:
                key = (
                    "max_inflight_events_per_stream"
                    if "max_inflight_events_per_stream" in limits
                    else "max_inflight_events"
                )
                self.add(
                    (*lbase, key),
                    f"max_inflight_events_per_stream ({per_stream}) is above max_inflight_events ({total})",
                )
            self.check_client_limits(lbase, limits, defaults)
        return window

    @staticmethod
    def size(value: object, default: int) -> int | None:
        if value is None:
            return default
        try:
            return parse_size(value)
        except (TypeError, ValueError):
            return None  # the schema reports it

    def check_client_limits(self, lbase: Path, limits: dict[str, object], defaults: Limits) -> None:
        data = self.size(limits.get("max_data_bytes"), defaults.max_data_bytes)
        attributes = self.size(limits.get("max_attributes_bytes"), defaults.max_attributes_bytes)
        # Unset, it grows to fit one event of the file's max_data_bytes (see _message_bytes).
        message = self.size(limits.get("max_message_bytes"), -1) if "max_message_bytes" in limits else None
        if message is not None and message >= 0 and data is not None and attributes is not None:
            need = data + attributes + _EVENT_FRAMING_BYTES
            if message < need:
                self.add(
                    (*lbase, "max_message_bytes"),
                    f"max_message_bytes ({message} bytes) cannot carry one event of max_data_bytes ({data})"
                    f" plus max_attributes_bytes ({attributes}) and framing; raise it to at least {need}"
                    " or lower max_data_bytes",
                )
        metadata = self.size(limits.get("max_metadata_bytes"), defaults.max_metadata_bytes)
        if metadata is not None and metadata < _MIN_METADATA_BYTES:
            self.add(
                (*lbase, "max_metadata_bytes"),
                f"max_metadata_bytes of {metadata} bytes leaves no room for gRPC's own headers and a token;"
                f" use at least {_MIN_METADATA_BYTES} (4KiB)",
            )
        if limits.get("client_burst") and not limits.get("client_rate"):
            self.add(
                (*lbase, "client_burst"),
                "client_burst applies only with a client_rate above 0; set client_rate or remove client_burst",
            )
        per_call = self.size(limits.get("subscribe_buffer_bytes"), defaults.subscribe_buffer_bytes)
        total = self.size(limits.get("subscribe_buffer_total_bytes"), defaults.subscribe_buffer_total_bytes)
        if per_call is not None and total is not None and total < per_call:
            key = (
                "subscribe_buffer_total_bytes" if "subscribe_buffer_total_bytes" in limits else "subscribe_buffer_bytes"
            )
            self.add(
                (*lbase, key),
                f"subscribe_buffer_total_bytes ({total}) is below subscribe_buffer_bytes ({per_call}): every"
                " Subscribe would be refused; raise the total or lower the per-call bytes",
            )

    def check_tokens(self, tokens: list[object]) -> None:
        """Each client token is exactly one ``${VAR}`` reference to a usable secret; names and tokens unique."""
        names: dict[str, int] = {}
        secrets: dict[str, tuple[int, str]] = {}
        for i, entry in enumerate(tokens):
            if not isinstance(entry, dict):
                continue
            base: Path = ("event_mesh", "security", "tokens", i)
            name = entry.get("name")
            label = name if isinstance(name, str) else f"#{i}"
            if isinstance(name, str) and (*base, "name") not in self.doc.broken:
                if name in names:
                    self.add(
                        (*base, "name"),
                        f"client {name!r} is listed twice (first as tokens[{names[name]}]);"
                        " give each client its own name",
                    )
                else:
                    names[name] = i
            for what in ("publish", "subscribe"):
                patterns = entry.get(what)
                if not isinstance(patterns, list):
                    continue
                for j, pattern in enumerate(patterns):
                    if isinstance(pattern, str):
                        reason = validate_pattern(pattern)
                        if reason is not None:
                            self.add((*base, what, j), reason)
            if "token" in entry:
                secret = self.check_token((*base, "token"), entry["token"])
                if secret is not None:
                    if secret[1] in secrets:
                        first, first_name = secrets[secret[1]]
                        self.add(
                            (*base, "token"),
                            f"client {label!r} has the same token as tokens[{first}] ({first_name!r});"
                            " give each client its own token",
                        )
                    else:
                        secrets[secret[1]] = (i, label)

    def check_token(
        self,
        path: Path,
        value: object,
        *,
        what: str = "token",
        example: str = "ORDERS_TOKEN",
        owner: str = "the client's token",
    ) -> tuple[str, str] | None:
        """(variable, secret) when a secret (a client token, the replication secret: ``what``) is a usable
        single reference; else adds why. Never shows the value."""
        if path in self.doc.broken or isinstance(value, list | dict):
            return None  # an unset variable or a list: already reported
        written = self.doc.substituted.get(path)
        if written is None:
            if value is None:
                self.add(path, f"the {what} is empty; write one environment variable reference such as ${{{example}}}")
            else:
                self.add(
                    path,
                    f"a {what} written in the file is refused (files get copied, committed and shown);"
                    f" write one environment variable reference such as ${{{example}}} and set that variable"
                    " where the gateway runs",
                )
            return None
        raw, token = written
        ref = _TOKEN_REFERENCE.fullmatch(raw)
        if ref is None:
            if _TOKEN_DEFAULT.fullmatch(raw):
                self.add(
                    path,
                    f"a {what} cannot have a default (${{NAME:-...}}): the default would be a secret in"
                    " the file; write ${NAME} alone",
                )
            else:
                self.add(
                    path,
                    f"a {what} must be exactly one environment variable reference such as ${{{example}}},"
                    " with nothing before or after it",
                )
            return None
        variable = ref.group("name")
        if not token:
            self.add(path, f"environment variable {variable} is empty; set it to {owner}")
            return None
        if _TOKEN_CHARS.fullmatch(token) is None:
            self.add(
                path,
                f"environment variable {variable} holds characters a gRPC header cannot carry;"
                f" a {what} is printable ASCII without spaces (e.g. from openssl rand -hex 32)",
            )
            return None
        if len(token) < MIN_TOKEN_CHARS:
            self.add(
                path,
                f"environment variable {variable} holds a {what} of {len(token)} characters; use at least"
                f" {MIN_TOKEN_CHARS} (e.g. openssl rand -hex 32)",
            )
            return None
        return variable, token

    def check_replication(self, security: dict[str, object]) -> None:
        """The replication secret is a usable reference; anonymous replication is not mixed with a credential."""
        if "replication_secret" in security:
            self.check_token(
                _SECRET_PATH,
                security["replication_secret"],
                what="replication secret",
                example=REPLICATION_SECRET_VARIABLE,
                owner="the secret the regions share (e.g. from openssl rand -hex 32)",
            )
        if security.get("replication") != ReplicationMode.ANONYMOUS.value:
            return
        # A gateway asking for a credential while the file says nobody needs one: one of the two is a mistake.
        for key, what in (("ca", "a certificate of the mesh CA"), ("replication_secret", "the shared secret")):
            if key in security:
                self.add(
                    ("event_mesh", "security", "replication"),
                    f"replication: anonymous contradicts security.{key}, which makes every Replicate caller show"
                    f" {what}; remove one of the two",
                )

    def check_retention(self, regions: list[object], window: float) -> None:
        for i, region in enumerate(regions):
            if not isinstance(region, dict) or _kind_of(region) not in (BrokerKind.NATS, BrokerKind.EMBEDDED):
                continue
            nats = region.get("nats")
            if not isinstance(nats, dict) or "max_age" not in nats:
                continue
            max_age = self.duration(nats["max_age"])
            if max_age is not None and 0 < max_age < window:
                self.add(
                    ("event_mesh", "regions", i, "nats", "max_age"),
                    f"max_age {format_duration(max_age)} is shorter than settings.idempotency_window"
                    f" {format_duration(window)}; JetStream keeps duplicate ids no longer than events,"
                    " so raise max_age (0 keeps events without age limit) or lower the window",
                )

    def check_security(self, security: dict[str, object], regions: list[object]) -> None:
        """TLS settings that hold together, and certificate files that exist and fit their region."""
        base: Path = ("event_mesh", "security")
        folder = _base_dir(self.source)
        ca = security.get("ca")
        ca_certs: list[x509.Certificate] | None = None
        if self.check_files and isinstance(ca, str) and ca and (*base, "ca") not in self.doc.broken:
            try:
                ca_certs = read_ca(_file_path(folder, ca))[1]
            except TlsError as exc:
                self.add((*base, "ca"), str(exc))
        tls_on = "ca" in security
        mode = _client_certs(security.get("client_certs"))
        if mode in (ClientCerts.OPTIONAL.value, ClientCerts.REQUIRED.value) and not tls_on:
            self.add(
                (*base, "client_certs"),
                "client_certs applies only with security.ca set (the CA that signs client certificates)",
                key=True,
            )
        elif tls_on and mode in (ClientCerts.OFF.value, ClientCerts.OPTIONAL.value):
            self.add(
                (*base, "client_certs"),
                f"client_certs {mode} cannot be served: a gateway serves clients and peers on one port, Replicate"
                " needs the peer's certificate, and gRPC Python can only require a client certificate or not ask"
                " for one; use required and give clients a certificate of the CA (meshgate certs makes one)",
            )
        for i, region in enumerate(regions):
            if isinstance(region, dict):
                self.check_region_tls(i, region, tls_on=tls_on, folder=folder, ca_certs=ca_certs)

    def check_region_tls(
        self,
        i: int,
        region: dict[str, object],
        *,
        tls_on: bool,
        folder: FsPath,
        ca_certs: list[x509.Certificate] | None,
    ) -> None:
        """A region's ``tls``: present exactly when security.ca is, and its files a pair that fits the region."""
        rbase: Path = ("event_mesh", "regions", i)
        name = region.get("name")
        label = f"region {name}" if isinstance(name, str) else f"region #{i + 1}"
        tls = region.get("tls")
        if tls is None:
            if tls_on:
                self.add(
                    rbase,
                    f"{label} has no tls: {{cert, key}}; with security.ca set every gateway serves TLS only"
                    " and shows its region's certificate to clients and peers",
                )
            return
        if not tls_on:
            self.add(
                (*rbase, "tls"),
                "tls needs security.ca: the mesh CA that signed the regions' certificates",
                key=True,
            )
            return
        if not isinstance(tls, dict):
            return
        cert, key = tls.get("cert"), tls.get("key")
        if not (self.check_files and isinstance(cert, str) and cert and isinstance(key, str) and key):
            return
        if self.region is not None and name != self.region:
            # Another region's files live on its own gateways (a Kubernetes pod mounts only its
            # region's Secret); this gateway never reads them.
            return
        if (*rbase, "tls", "cert") in self.doc.broken or (*rbase, "tls", "key") in self.doc.broken:
            return
        key_path = _file_path(folder, key)
        try:
            leaf = check_pair(_file_path(folder, cert), key_path)[2]
        except TlsError as exc:
            which = "key" if exc.path == key_path else "cert"
            self.add((*rbase, "tls", which), str(exc))
            return
        if isinstance(name, str) and (*rbase, "name") not in self.doc.broken:
            self.check_region_cert((*rbase, "tls", "cert"), name, cert, leaf, ca_certs)

    def check_region_cert(
        self, path: Path, name: str, file: str, leaf: x509.Certificate, ca_certs: list[x509.Certificate] | None
    ) -> None:
        named = regions_named(leaf)
        if named != (name,):
            shown = ", ".join(named) if named else "no region"
            self.add(
                path,
                f"the certificate {file} names {shown}, not region {name}: a region's certificate carries exactly"
                f" one SAN URI:meshgate://region/{name} (meshgate certs --region {name} makes one)",
            )
        try:
            dns = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
                x509.DNSName
            )
        except x509.ExtensionNotFound:
            dns = []
        if name not in dns:
            self.add(
                path,
                f"the certificate {file} lacks the SAN DNS:{name}; peers replicating to region {name}"
                " expect its gateway to present that name",
            )
        if ca_certs is not None and not any(_issued_by(leaf, ca) for ca in ca_certs):
            self.add(path, f"the certificate {file} is not signed by the CA of security.ca")

    def results(self) -> list[ConfigIssue]:
        broken = self.doc.broken
        detailed = {path for path, origin, _ in self.issues if origin == "check"}
        kept: dict[str, ConfigIssue] = {}
        for path, origin, issue in self.issues:
            if any(path[: n + 1] in broken for n in range(len(path))) or () in broken:
                continue
            if origin in _SUPERSEDED_VALIDATORS and path in detailed:
                continue
            kept.setdefault(str(issue), issue)
        return list(kept.values())


def _issued_by(leaf: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        leaf.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _build(data: dict[str, Any], doc: Document, *, source: str, sha256: str) -> MeshConfig:
    mesh: dict[str, Any] = data["event_mesh"]
    folder = _base_dir(source)
    regions: list[RegionConfig] = []
    for i, r in enumerate(mesh["regions"]):
        nats_raw: dict[str, Any] = r.get("nats") or {}
        kafka_raw: dict[str, Any] = r.get("kafka") or {}
        nats_default = NatsSettings()
        nats = NatsSettings(
            subject_prefix=nats_raw.get("subject_prefix", nats_default.subject_prefix),
            stream=nats_raw.get("stream", nats_default.stream),
            replicas=int(nats_raw.get("replicas", nats_default.replicas)),
            max_age_seconds=parse_duration(nats_raw.get("max_age", nats_default.max_age_seconds)),
            max_bytes=parse_size(nats_raw.get("max_bytes", nats_default.max_bytes)),
            max_msgs=int(nats_raw.get("max_msgs", nats_default.max_msgs)),
            sync_always=bool(nats_raw.get("sync_always", nats_default.sync_always)),
            max_payload=parse_size(nats_raw.get("max_payload", nats_default.max_payload)),
        )
        kafka_default = KafkaSettings()
        kafka = KafkaSettings(
            topic_prefix=kafka_raw.get("topic_prefix", kafka_default.topic_prefix),
            partitions=int(kafka_raw.get("partitions", kafka_default.partitions)),
            replication_factor=int(kafka_raw.get("replication_factor", kafka_default.replication_factor)),
            max_window_ids=int(kafka_raw.get("max_window_ids", kafka_default.max_window_ids)),
        )
        regions.append(
            RegionConfig(
                name=r["name"],
                brokers=tuple(r.get("brokers") or ()),
                kind=BrokerKind(str(_kind_of(r))),
                gateway=r.get("gateway"),
                metrics=r.get("metrics"),
                nats=nats,
                kafka=kafka,
                tls=(
                    RegionTls(cert=_file_path(folder, r["tls"]["cert"]), key=_file_path(folder, r["tls"]["key"]))
                    if r.get("tls")
                    else None
                ),
                line=doc.position(("event_mesh", "regions", i))[0],
            )
        )
    rules: list[RouteRule] = []
    for i, rule in enumerate(mesh.get("routing") or ()):
        line, column = doc.position(("event_mesh", "routing", i))
        rules.append(RouteRule(index=i, topic=rule["topic"], regions=tuple(rule["regions"]), line=line, column=column))
    raw_settings: dict[str, Any] = mesh.get("settings") or {}
    raw_limits: dict[str, Any] = raw_settings.get("limits") or {}
    default_limits = Limits()
    limits = Limits(
        max_data_bytes=parse_size(raw_limits.get("max_data_bytes", default_limits.max_data_bytes)),
        max_attributes_bytes=parse_size(raw_limits.get("max_attributes_bytes", default_limits.max_attributes_bytes)),
        max_extensions=int(raw_limits.get("max_extensions", default_limits.max_extensions)),
        max_batch_events=int(raw_limits.get("max_batch_events", default_limits.max_batch_events)),
        max_inflight_events_per_stream=int(
            raw_limits.get("max_inflight_events_per_stream", default_limits.max_inflight_events_per_stream)
        ),
        max_inflight_events=int(raw_limits.get("max_inflight_events", default_limits.max_inflight_events)),
        max_message_bytes=_message_bytes(raw_limits, default_limits),
        max_metadata_bytes=parse_size(raw_limits.get("max_metadata_bytes", default_limits.max_metadata_bytes)),
        max_streams_per_client=int(raw_limits.get("max_streams_per_client", default_limits.max_streams_per_client)),
        client_rate=float(raw_limits.get("client_rate", default_limits.client_rate)),
        client_burst=int(raw_limits.get("client_burst", default_limits.client_burst)),
        subscribe_buffer_events=int(raw_limits.get("subscribe_buffer_events", default_limits.subscribe_buffer_events)),
        max_connections=int(raw_limits.get("max_connections", default_limits.max_connections)),
        max_connections_per_address=int(
            raw_limits.get("max_connections_per_address", default_limits.max_connections_per_address)
        ),
        idle_connection_timeout_seconds=parse_duration(
            raw_limits.get("idle_connection_timeout", default_limits.idle_connection_timeout_seconds)
        ),
        subscribe_buffer_bytes=parse_size(
            raw_limits.get("subscribe_buffer_bytes", default_limits.subscribe_buffer_bytes)
        ),
        subscribe_buffer_total_bytes=parse_size(
            raw_limits.get("subscribe_buffer_total_bytes", default_limits.subscribe_buffer_total_bytes)
        ),
    )
    default_settings = Settings()
    settings = Settings(
        idempotency_window_seconds=parse_duration(
            raw_settings.get("idempotency_window", default_settings.idempotency_window_seconds)
        ),
        shutdown_grace_seconds=parse_duration(
            raw_settings.get("shutdown_grace", default_settings.shutdown_grace_seconds)
        ),
        lease_ttl_seconds=parse_duration(raw_settings.get("lease_ttl", default_settings.lease_ttl_seconds)),
        limits=limits,
    )
    return MeshConfig(
        regions=tuple(regions),
        routing=tuple(rules),
        settings=settings,
        security=_build_security(mesh.get("security") or {}, doc, folder),
        source=source,
        sha256=sha256,
    )


def _message_bytes(raw_limits: dict[str, Any], defaults: Limits) -> int:
    """max_message_bytes as set, else the default or, if larger, room for one event of max_data_bytes."""
    if "max_message_bytes" in raw_limits:
        return parse_size(raw_limits["max_message_bytes"])
    data = parse_size(raw_limits.get("max_data_bytes", defaults.max_data_bytes))
    attributes = parse_size(raw_limits.get("max_attributes_bytes", defaults.max_attributes_bytes))
    return max(defaults.max_message_bytes, data + attributes + _EVENT_FRAMING_BYTES)


def _secret(doc: Document, path: Path) -> tuple[str, str] | None:
    """(secret, variable) of a checked secret reference; None where the variable is unset (``need_secrets`` off)."""
    if path not in doc.substituted:
        return None
    # Checked above: the value came from exactly one ${VAR}; its text as substituted, not as retyped.
    written, secret = doc.substituted[path]
    ref = _TOKEN_REFERENCE.fullmatch(written)
    return secret, ref.group("name") if ref else ""


def _build_security(raw: dict[str, Any], doc: Document, folder: FsPath) -> SecuritySettings:
    tokens: list[ClientToken] = []
    for i, entry in enumerate(raw.get("tokens") or ()):
        found = _secret(doc, ("event_mesh", "security", "tokens", i, "token"))
        if found is None:
            continue
        token, variable = found
        tokens.append(
            ClientToken(
                name=entry["name"],
                token=token,
                variable=variable,
                publish=tuple(entry.get("publish") or ()),
                subscribe=tuple(entry.get("subscribe") or ()),
                admin=bool(entry.get("admin", _model_default(ClientToken, "admin"))),
                line=doc.position(("event_mesh", "security", "tokens", i))[0],
            )
        )
    secret = _secret(doc, _SECRET_PATH) if "replication_secret" in raw else None
    # A refusal for the whole block points at its key, or at event_mesh when there is none.
    where: Path = ("event_mesh", "security") if ("event_mesh", "security") in doc.key_positions else ("event_mesh",)
    line, column = doc.position(where, key=True)
    defaults = SecuritySettings()
    return SecuritySettings(
        ca=_file_path(folder, raw["ca"]) if raw.get("ca") else None,
        client_certs=ClientCerts(str(_client_certs(raw.get("client_certs", defaults.client_certs)))),
        tokens=tuple(tokens),
        replication_secret=secret[0] if secret else None,
        replication_secret_variable=secret[1] if secret else "",
        replication=ReplicationMode(raw.get("replication", defaults.replication)),
        line=line,
        column=column,
    )


def replication_auth_issue(config: MeshConfig, *, refuser: str = "meshgate serve") -> ConfigIssue | None:
    """Why ``refuser`` refuses this mesh: several regions (so replication links) and no way to
    authenticate a Replicate caller, nor the explicit anonymous opt-in. None when it is fine."""
    security = config.security
    if (
        len(config.regions) < 2
        or security.replication_authenticated
        or security.replication is ReplicationMode.ANONYMOUS
    ):
        return None
    return ConfigIssue(
        file=config.source,
        line=security.line,
        column=security.column,
        message=(
            f"{refuser} refuses a mesh of {len(config.regions)} regions whose replication is not authenticated:"
            " anyone who reaches a gateway could write events as any region. Set"
            f" security.replication_secret: ${{{REPLICATION_SECRET_VARIABLE}}} (the same secret of 16 or more"
            f" characters in {REPLICATION_SECRET_VARIABLE} on every gateway, e.g. from openssl rand -hex 32),"
            " or security.ca with a certificate per region (meshgate certs), or, on a network you trust,"
            " security.replication: anonymous"
        ),
    )


def anonymous_replication_warning(config: MeshConfig) -> ConfigIssue | None:
    """The warning of a mesh whose replication is anonymous by choice (None otherwise)."""
    security = config.security
    if security.replication is not ReplicationMode.ANONYMOUS or len(config.regions) < 2:
        return None
    return ConfigIssue(
        file=config.source,
        line=security.line,
        column=security.column,
        message=(
            "warning: replication is unauthenticated (security.replication: anonymous): anyone who reaches a"
            " gateway can write events as any region; set security.replication_secret or security.ca instead"
            " unless every gateway's port is on a network you trust"
        ),
    )


def _token_advice(issue: ConfigIssue) -> ConfigIssue:
    m = _UNSET_TOKEN_VARIABLE.fullmatch(issue.message)
    if m is None:
        return issue
    if m.group("token"):
        message = f"{m.group('head')}; set it to the client's token where the gateway runs (a token has no default)"
    else:
        message = (
            f"{m.group('head')}; set it where the gateway runs to the secret every region shares"
            " (a secret has no default; e.g. openssl rand -hex 32)"
        )
    return dataclasses.replace(issue, message=message)


def _too_many_rules(doc: Document, source: str) -> ConfigIssue | None:
    mesh = doc.data.get("event_mesh") if isinstance(doc.data, dict) else None
    routing = mesh.get("routing") if isinstance(mesh, dict) else None
    if not isinstance(routing, list) or len(routing) <= MAX_RULES:
        return None
    path: Path = ("event_mesh", "routing")
    line, column = doc.position(path, key=True)
    return ConfigIssue(
        file=source,
        line=line,
        column=column,
        message=f"{format_path(path)}: {len(routing)} rules exceed the limit of {MAX_RULES} rules; one rule with"
        " a wildcard (orders/*, orders/>) routes many topics",
    )


def max_config_bytes() -> int:
    """The largest mesh file read: $MESHGATE_CONFIG_MAX_BYTES (a size: 8MiB, 10000000), else 4 MiB.

    ValueError naming the variable when it is not a size."""
    raw = os.environ.get(MAX_CONFIG_BYTES_ENV, "")
    if not raw.strip():
        return DEFAULT_MAX_CONFIG_BYTES
    try:
        limit = parse_size(raw)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{MAX_CONFIG_BYTES_ENV}={raw!r} is not a size: {exc}") from None
    if limit <= 0:
        raise ValueError(f"{MAX_CONFIG_BYTES_ENV}={raw!r}: the limit must be above 0 bytes")
    return limit


def _size_issue(source: str, size: int, limit: int) -> ConfigIssue:
    return ConfigIssue(
        file=source,
        line=0,
        column=0,
        message=f"the file is {size} bytes, more than the limit of {limit} bytes ({limit / 1024**2:g} MiB) for a"
        f" mesh file (20000 rules take about 1.5 MB); look for a generated or pasted block, or raise the limit"
        f" with {MAX_CONFIG_BYTES_ENV} where it is read",
    )


def _check_size(source: str, size: int) -> None:
    limit = _limit_or_error(source)
    if size > limit:
        raise ConfigError([_size_issue(source, size, limit)])


def _limit_or_error(source: str) -> int:
    try:
        return max_config_bytes()
    except ValueError as exc:
        raise ConfigError([ConfigIssue(file=source, line=0, column=0, message=str(exc))]) from None


def _read_limited(source: str) -> bytes:
    """The bytes of a mesh file, its size checked before it is read and no more than the limit and
    one byte read (a file that grows meanwhile, or a pipe, is refused as well): ConfigError when
    over the limit, OSError when it cannot be read."""
    limit = _limit_or_error(source)
    with open(source, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            raise ConfigError([_size_issue(source, size, limit)])
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ConfigError([_size_issue(source, max(size, len(data)), limit)])
    return data


def read_config_file(path: str | os.PathLike[str]) -> bytes:
    """The bytes of a mesh file; ConfigError when it cannot be read or is over the size limit."""
    source = os.fspath(path)
    try:
        return _read_limited(source)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(
            [ConfigIssue(file=source, line=0, column=0, message=f"cannot read the file: {reason}")]
        ) from None


def _load(
    text: str,
    *,
    source: str,
    sha256: str,
    env: Mapping[str, str] | None,
    check_files: bool = True,
    region: str | None = None,
    need_secrets: bool = True,
) -> MeshConfig:
    doc, issues = parse_yaml(text, source=source, env=os.environ if env is None else env)
    if doc is None:
        raise ConfigError(issues)
    if not need_secrets:
        # The secrets' variables belong to the gateways; a tool that reads regions does without them.
        issues = [issue for issue in issues if _UNSET_TOKEN_VARIABLE.match(issue.message) is None]
    issues = [_token_advice(issue) for issue in issues]
    if doc.data is None:
        issues.append(
            ConfigIssue(
                file=source,
                line=1,
                column=1,
                message="the file has no content; a mesh file is a mapping with the root key event_mesh"
                " (see config/examples/quickstart.yaml)",
            )
        )
        raise ConfigError(issues)
    too_many = _too_many_rules(doc, source)
    if too_many is not None:
        # Checked before the schema, which would take as long again over every rule.
        raise ConfigError([*issues, too_many])
    checker = _Checker(doc=doc, source=source, check_files=check_files, region=region)
    checker.schema()
    checker.cross()
    issues.extend(checker.results())
    if issues:
        raise ConfigError(sorted(issues, key=lambda i: (i.line, i.column, i.message)))
    assert isinstance(doc.data, dict)
    return _build(doc.data, doc, source=source, sha256=sha256)


def load_config_bytes(
    data: bytes,
    source: str = "<bytes>",
    *,
    env: Mapping[str, str] | None = None,
    check_files: bool = True,
    region: str | None = None,
    need_secrets: bool = True,
) -> MeshConfig:
    """The config of a mesh file's bytes (UTF-8); ``sha256`` is of these bytes.

    ``check_files`` False skips reading the certificate files the file names (``meshgate certs``
    reads a mesh file to make them). ``region`` set (the gateway of that region): of the
    certificate files, only the CA and that region's certificate and key are read and checked;
    the other regions' ``tls`` entries are checked for form only. None: every region's files.
    ``need_secrets`` False lets the variables of client tokens and of the replication secret be
    unset (``meshgate certs`` reads only the regions): such a config lacks those secrets, so it
    must never run a gateway."""
    digest = hashlib.sha256(data).hexdigest()
    _check_size(source, len(data))
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        prefix = data[: exc.start].decode("utf-8", errors="replace")
        line, column = position_of_index(prefix, len(prefix))
        raise ConfigError(
            [
                ConfigIssue(
                    file=source,
                    line=line,
                    column=column,
                    message=f"byte 0x{data[exc.start]:02x} is not UTF-8; save the file as UTF-8",
                )
            ]
        ) from None
    return _load(
        text,
        source=source,
        sha256=digest,
        env=env,
        check_files=check_files,
        region=region,
        need_secrets=need_secrets,
    )


def load_config_text(
    text: str, source: str = "<string>", *, env: Mapping[str, str] | None = None, region: str | None = None
) -> MeshConfig:
    """The config of mesh file text; ``env`` replaces ``os.environ`` for ``${VAR}`` (tests, tools)."""
    data = text.encode("utf-8")
    _check_size(source, len(data))
    digest = hashlib.sha256(data).hexdigest()
    return _load(text, source=source, sha256=digest, env=env, region=region)


def load_config(
    path: str | os.PathLike[str],
    *,
    env: Mapping[str, str] | None = None,
    check_files: bool = True,
    region: str | None = None,
    need_secrets: bool = True,
) -> MeshConfig:
    """The config of the mesh file at ``path``; raises ConfigError naming every problem as FILE:LINE:COL.

    ``region``: load it as that region's gateway does, reading only the CA and that region's
    certificate files (see ``load_config_bytes``)."""
    source = os.fspath(path)
    try:
        data = _read_limited(source)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(
            [ConfigIssue(file=source, line=0, column=0, message=f"cannot read the file: {reason}")]
        ) from None
    return load_config_bytes(data, source, env=env, check_files=check_files, region=region, need_secrets=need_secrets)
