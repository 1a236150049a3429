"""Loading a mesh file: YAML with positions, ``${VAR}`` substitution, the JSON Schema, cross-checks, the model.

Every problem of a file is reported at once, each as ``FILE:LINE:COL: message``, so an operator
fixes a file in one pass rather than one error per run.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
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
    RouteRule,
    SecuritySettings,
    Settings,
)
from meshgate.config._values import format_duration, parse_duration, parse_size, split_host_port
from meshgate.config._yaml import Document, Path, format_path, parse_yaml, position_of_index
from meshgate.router._topics import validate_pattern
from meshgate.tls import TlsError, check_pair, read_ca, regions_named

__all__ = ["SCHEMA_PATH", "load_config", "load_config_bytes", "load_config_text", "mesh_schema"]

SCHEMA_PATH = FsPath(__file__).resolve().with_name("mesh.schema.json")

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
    r"(?P<head>event_mesh\.security\.tokens\[\d+\]\.token: environment variable \w+ is not set); set it, or give.*"
)
# A request carries one event plus at most this much of framing and gateway fields.
_EVENT_FRAMING_BYTES = 16 * 1024
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
        self.check_security(
            security if isinstance(security, dict) else {}, regions if isinstance(regions, list) else []
        )

    def check_regions(self, regions: list[object]) -> list[str] | None:
        """The region names, or None when some name is unknown (an unset variable) so none can be checked against."""
        names: dict[str, int] = {}
        unknown_name = False
        addresses: dict[str, tuple[str, str, int]] = {}
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
            kind = region.get("kind", BrokerKind.NATS.value)
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
                norm = address.lower()
                if norm in addresses:
                    other, other_what, other_line = addresses[norm]
                    self.add(
                        (*base, what),
                        f"address {address} is already the {other_what} of region {other} (line {other_line});"
                        " every gateway and metrics endpoint needs its own HOST:PORT",
                    )
                else:
                    addresses[norm] = (label, what, line)
        return None if unknown_name else list(names)

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
        window = self.duration(settings.get("idempotency_window", "15m"))
        if window is not None and window <= 0:
            self.add(
                (*base, "idempotency_window"),
                "the idempotency window must be longer than 0; retries of an event id would be stored twice",
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

    def check_token(self, path: Path, value: object) -> tuple[str, str] | None:
        """(variable, token) when the token is a usable single reference; else adds why. Never shows the value."""
        if path in self.doc.broken or isinstance(value, list | dict):
            return None  # an unset variable or a list: already reported
        written = self.doc.substituted.get(path)
        if written is None:
            if value is None:
                self.add(path, "the token is empty; write one environment variable reference such as ${ORDERS_TOKEN}")
            else:
                self.add(
                    path,
                    "a token written in the file is refused (files get copied, committed and shown);"
                    " write one environment variable reference such as ${ORDERS_TOKEN} and set that variable"
                    " where the gateway runs",
                )
            return None
        raw, token = written
        ref = _TOKEN_REFERENCE.fullmatch(raw)
        if ref is None:
            if _TOKEN_DEFAULT.fullmatch(raw):
                self.add(
                    path,
                    "a token cannot have a default (${NAME:-...}): the default would be a secret in"
                    " the file; write ${NAME} alone",
                )
            else:
                self.add(
                    path,
                    "a token must be exactly one environment variable reference such as ${ORDERS_TOKEN},"
                    " with nothing before or after it",
                )
            return None
        variable = ref.group("name")
        if not token:
            self.add(path, f"environment variable {variable} is empty; set it to the client's token")
            return None
        if _TOKEN_CHARS.fullmatch(token) is None:
            self.add(
                path,
                f"environment variable {variable} holds characters a gRPC header cannot carry;"
                " a token is printable ASCII without spaces (e.g. from openssl rand -hex 32)",
            )
            return None
        if len(token) < MIN_TOKEN_CHARS:
            self.add(
                path,
                f"environment variable {variable} holds a token of {len(token)} characters; use at least"
                f" {MIN_TOKEN_CHARS} (e.g. openssl rand -hex 32)",
            )
            return None
        return variable, token

    def check_retention(self, regions: list[object], window: float) -> None:
        for i, region in enumerate(regions):
            if not isinstance(region, dict) or region.get("kind", "nats") not in ("nats", "embedded"):
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
            if not isinstance(region, dict):
                continue
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
                continue
            if not tls_on:
                self.add(
                    (*rbase, "tls"),
                    "tls needs security.ca: the mesh CA that signed the regions' certificates",
                    key=True,
                )
                continue
            if not isinstance(tls, dict):
                continue
            cert, key = tls.get("cert"), tls.get("key")
            if not (self.check_files and isinstance(cert, str) and cert and isinstance(key, str) and key):
                continue
            if self.region is not None and name != self.region:
                # Another region's files live on its own gateways (a Kubernetes pod mounts only its
                # region's Secret); this gateway never reads them.
                continue
            if (*rbase, "tls", "cert") in self.doc.broken or (*rbase, "tls", "key") in self.doc.broken:
                continue
            key_path = _file_path(folder, key)
            try:
                leaf = check_pair(_file_path(folder, cert), key_path)[2]
            except TlsError as exc:
                which = "key" if exc.path == key_path else "cert"
                self.add((*rbase, "tls", which), str(exc))
                continue
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
                kind=BrokerKind(r.get("kind", BrokerKind.NATS.value)),
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


def _build_security(raw: dict[str, Any], doc: Document, folder: FsPath) -> SecuritySettings:
    tokens: list[ClientToken] = []
    for i, entry in enumerate(raw.get("tokens") or ()):
        path: Path = ("event_mesh", "security", "tokens", i, "token")
        # Checked above: the value came from exactly one ${VAR}; its text as substituted, not as retyped.
        written, token = doc.substituted[path]
        ref = _TOKEN_REFERENCE.fullmatch(written)
        tokens.append(
            ClientToken(
                name=entry["name"],
                token=token,
                variable=ref.group("name") if ref else "",
                publish=tuple(entry.get("publish") or ()),
                subscribe=tuple(entry.get("subscribe") or ()),
                admin=bool(entry.get("admin", False)),
                line=doc.position(("event_mesh", "security", "tokens", i))[0],
            )
        )
    return SecuritySettings(
        ca=_file_path(folder, raw["ca"]) if raw.get("ca") else None,
        client_certs=ClientCerts(str(_client_certs(raw.get("client_certs", ClientCerts.REQUIRED.value)))),
        tokens=tuple(tokens),
    )


def _token_advice(issue: ConfigIssue) -> ConfigIssue:
    m = _UNSET_TOKEN_VARIABLE.fullmatch(issue.message)
    if m is None:
        return issue
    message = f"{m.group('head')}; set it to the client's token where the gateway runs (a token has no default)"
    return dataclasses.replace(issue, message=message)


def _load(
    text: str,
    *,
    source: str,
    sha256: str,
    env: Mapping[str, str] | None,
    check_files: bool = True,
    region: str | None = None,
) -> MeshConfig:
    doc, issues = parse_yaml(text, source=source, env=os.environ if env is None else env)
    if doc is None:
        raise ConfigError(issues)
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
) -> MeshConfig:
    """The config of a mesh file's bytes (UTF-8); ``sha256`` is of these bytes.

    ``check_files`` False skips reading the certificate files the file names (``meshgate certs``
    reads a mesh file to make them). ``region`` set (the gateway of that region): of the
    certificate files, only the CA and that region's certificate and key are read and checked;
    the other regions' ``tls`` entries are checked for form only. None: every region's files."""
    digest = hashlib.sha256(data).hexdigest()
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
    return _load(text, source=source, sha256=digest, env=env, check_files=check_files, region=region)


def load_config_text(
    text: str, source: str = "<string>", *, env: Mapping[str, str] | None = None, region: str | None = None
) -> MeshConfig:
    """The config of mesh file text; ``env`` replaces ``os.environ`` for ``${VAR}`` (tests, tools)."""
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return _load(text, source=source, sha256=digest, env=env, region=region)


def load_config(
    path: str | os.PathLike[str],
    *,
    env: Mapping[str, str] | None = None,
    check_files: bool = True,
    region: str | None = None,
) -> MeshConfig:
    """The config of the mesh file at ``path``; raises ConfigError naming every problem as FILE:LINE:COL.

    ``region``: load it as that region's gateway does, reading only the CA and that region's
    certificate files (see ``load_config_bytes``)."""
    source = os.fspath(path)
    try:
        data = FsPath(source).read_bytes()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(
            [ConfigIssue(file=source, line=0, column=0, message=f"cannot read the file: {reason}")]
        ) from None
    return load_config_bytes(data, source, env=env, check_files=check_files, region=region)
