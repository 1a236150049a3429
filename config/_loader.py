"""Loading a mesh file: YAML with positions, ``${VAR}`` substitution, the JSON Schema, cross-checks, the model.

Every problem of a file is reported at once, each as ``FILE:LINE:COL: message``, so an operator
fixes a file in one pass rather than one error per run.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path as FsPath
from typing import Any, cast

import jsonschema

from meshgate.config._check import (
    CheckContext,
    base_dir,
    client_certs_mode,
    file_path,
    kind_of,
    model_default,
    suggest,
)
from meshgate.config._check_regions import check_regions
from meshgate.config._check_routing import check_routing
from meshgate.config._check_security import (
    REPLICATION_SECRET_VARIABLE,
    SECRET_PATH,
    TOKEN_REFERENCE,
    check_replication,
    check_security,
    check_tokens,
)
from meshgate.config._check_settings import EVENT_FRAMING_BYTES, check_retention, check_settings
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
from meshgate.config._values import parse_duration, parse_size
from meshgate.config._yaml import Document, Path, format_path, parse_yaml, position_of_index

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

# The substitution's generic advice for an unset variable offers a default, which a token may not have.
_UNSET_TOKEN_VARIABLE = re.compile(
    r"(?P<head>event_mesh\.security\.(?:(?P<token>tokens\[\d+\]\.token)|replication_secret):"
    r" environment variable \w+ is not set); set it, or give.*"
)


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


def _schema(ctx: CheckContext) -> None:
    """Each JSON Schema failure of the file, said as the section checks say theirs."""
    data: Any = ctx.doc.data
    for error in _validator().iter_errors(data):
        _schema_error(ctx, error)


def _schema_error(ctx: CheckContext, error: jsonschema.ValidationError) -> None:
    path: Path = tuple(error.absolute_path)
    schema = error.schema if isinstance(error.schema, dict) else {}
    expected = schema.get("x-expected")
    value = error.instance
    kind = str(error.validator)
    if kind == "additionalProperties" and isinstance(value, dict):
        allowed = list(schema.get("properties", {}))
        for key in value:
            if key not in allowed:
                ctx.add(
                    (*path, key),
                    f"unknown key {key!r}{suggest(key, allowed)} (allowed here: {', '.join(allowed)})",
                    key=True,
                    origin=kind,
                )
        return
    if kind == "required" and isinstance(value, dict):
        required: list[str] = list(cast(list[str], error.validator_value))
        for key in required:
            if key not in value:
                root = "root " if not path else ""
                ctx.add(path, f"missing the required {root}key {key!r}", origin=kind)
        return
    if kind == "uniqueItems" and isinstance(value, list):
        seen: dict[str, int] = {}
        for i, item in enumerate(value):
            marker = json.dumps(item, sort_keys=True, default=str)
            if marker in seen:
                ctx.add((*path, i), f"{item!r} is listed twice (first as item {seen[marker] + 1}); keep one")
            else:
                seen[marker] = i
        return
    if kind == "enum":
        choices = [str(c) for c in cast(list[object], error.validator_value)]
        ctx.add(
            path,
            f"{value!r} is not one of {', '.join(choices)}{suggest(str(value), choices)}",
            origin=kind,
        )
        return
    if kind == "type" and error.validator_value == "integer" and isinstance(value, float):
        # "got a number" would read as no fault at all: say the value, and that a whole one is wanted.
        wanted = "an integer" if expected is None else f"an integer ({expected})"
        ctx.add(path, f"expected {wanted}, got {value!r}", origin=kind)
        return
    got = _describe_type(value) if kind == "type" else _describe(value)
    if expected is None:
        ctx.add(path, error.message, origin=kind)
    else:
        ctx.add(path, f"expected {expected}, got {got}", origin=kind)


def _cross(ctx: CheckContext) -> None:
    """The checks a schema cannot do, section by section (see ``_check``)."""
    data = ctx.doc.data
    mesh = data.get("event_mesh") if isinstance(data, dict) else None
    if not isinstance(mesh, dict):
        return
    regions = mesh.get("regions")
    names = check_regions(ctx, regions if isinstance(regions, list) else [])
    routing = mesh.get("routing")
    if isinstance(routing, list):
        check_routing(ctx, routing, names)
    settings = mesh.get("settings")
    window = check_settings(ctx, settings if isinstance(settings, dict) else {})
    if window is not None and isinstance(regions, list):
        check_retention(ctx, regions, window)
    security = mesh.get("security")
    if isinstance(security, dict) and isinstance(security.get("tokens"), list):
        check_tokens(ctx, security["tokens"])
    if isinstance(security, dict):
        check_replication(ctx, security)
    check_security(ctx, security if isinstance(security, dict) else {}, regions if isinstance(regions, list) else [])


def _build(data: dict[str, Any], doc: Document, *, source: str, sha256: str) -> MeshConfig:
    mesh: dict[str, Any] = data["event_mesh"]
    folder = base_dir(source)
    regions: list[RegionConfig] = []
    for i, r in enumerate(mesh["regions"]):
        nats_raw: dict[str, Any] = r.get("nats") or {}
        kafka_raw: dict[str, Any] = r.get("kafka") or {}
        nats_default = NatsSettings()
        nats = NatsSettings(
            subject_prefix=nats_raw.get("subject_prefix", nats_default.subject_prefix),
            stream=nats_raw.get("stream", nats_default.stream),
            partitions=int(nats_raw.get("partitions", nats_default.partitions)),
            replicas=int(nats_raw.get("replicas", nats_default.replicas)),
            max_age_seconds=parse_duration(nats_raw.get("max_age", nats_default.max_age_seconds)),
            max_bytes=parse_size(nats_raw.get("max_bytes", nats_default.max_bytes)),
            max_msgs=int(nats_raw.get("max_msgs", nats_default.max_msgs)),
            sync_always=bool(nats_raw.get("sync_always", nats_default.sync_always)),
            max_payload=parse_size(nats_raw.get("max_payload", nats_default.max_payload)),
            monitor=nats_raw.get("monitor", nats_default.monitor),
            cpus=int(nats_raw.get("cpus", nats_default.cpus)),
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
                kind=BrokerKind(str(kind_of(r))),
                gateway=r.get("gateway"),
                metrics=r.get("metrics"),
                nats=nats,
                kafka=kafka,
                tls=(
                    RegionTls(cert=file_path(folder, r["tls"]["cert"]), key=file_path(folder, r["tls"]["key"]))
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
        max_replication_inflight_events=int(
            raw_limits.get("max_replication_inflight_events", default_limits.max_replication_inflight_events)
        ),
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
        replication_ack_timeout_seconds=parse_duration(
            raw_settings.get("replication_ack_timeout", default_settings.replication_ack_timeout_seconds)
        ),
        replication_window=int(raw_settings.get("replication_window", default_settings.replication_window)),
        replication_batch_events=int(
            raw_settings.get("replication_batch_events", default_settings.replication_batch_events)
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
    return max(defaults.max_message_bytes, data + attributes + EVENT_FRAMING_BYTES)


def _secret(doc: Document, path: Path) -> tuple[str, str] | None:
    """(secret, variable) of a checked secret reference; None where the variable is unset (``need_secrets`` off)."""
    if path not in doc.substituted:
        return None
    # Checked above: the value came from exactly one ${VAR}; its text as substituted, not as retyped.
    written, secret = doc.substituted[path]
    ref = TOKEN_REFERENCE.fullmatch(written)
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
                admin=bool(entry.get("admin", model_default(ClientToken, "admin"))),
                line=doc.position(("event_mesh", "security", "tokens", i))[0],
            )
        )
    secret = _secret(doc, SECRET_PATH) if "replication_secret" in raw else None
    # A refusal for the whole block points at its key, or at event_mesh when there is none.
    where: Path = ("event_mesh", "security") if ("event_mesh", "security") in doc.key_positions else ("event_mesh",)
    line, column = doc.position(where, key=True)
    defaults = SecuritySettings()
    return SecuritySettings(
        ca=file_path(folder, raw["ca"]) if raw.get("ca") else None,
        client_certs=ClientCerts(str(client_certs_mode(raw.get("client_certs", defaults.client_certs)))),
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
    context = CheckContext(doc=doc, source=source, check_files=check_files, region=region)
    _schema(context)
    _cross(context)
    issues.extend(context.results())
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
