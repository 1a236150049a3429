"""The mesh config: the typed model, loading with line numbers, the JSON Schema, hot reload, examples."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING

from meshgate.config._compat import check_compatible, region_changes
from meshgate.config._errors import ConfigError, ConfigIssue
from meshgate.config._model import (
    KAFKA_MAX_APPEND_EVENTS,
    KAFKA_REPLICATION_INFLIGHT_EVENTS,
    NATS_REPLICATION_INFLIGHT_EVENTS,
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

# The loader (jsonschema, YAML, the certificate checks, gRPC through meshgate.tls) and the
# watcher (prometheus_client, asyncio) are imported on first use of one of their names: who
# needs only the model, the errors or the value syntax (`meshgate trace --since`) does not
# wait for them.
_LAZY = {
    **dict.fromkeys(
        (
            "REPLICATION_SECRET_VARIABLE",
            "SCHEMA_PATH",
            "anonymous_replication_warning",
            "load_config",
            "load_config_bytes",
            "load_config_text",
            "mesh_schema",
            "replication_auth_issue",
        ),
        "meshgate.config._loader",
    ),
    **dict.fromkeys(("ConfigWatcher", "ReloadOutcome", "ReloadResult"), "meshgate.config._reload"),
}

if TYPE_CHECKING:
    from meshgate.config._loader import (
        REPLICATION_SECRET_VARIABLE,
        SCHEMA_PATH,
        anonymous_replication_warning,
        load_config,
        load_config_bytes,
        load_config_text,
        mesh_schema,
        replication_auth_issue,
    )
    from meshgate.config._reload import ConfigWatcher, ReloadOutcome, ReloadResult
else:
    # Hidden from the type checker, which sees the imports above: a misspelt name stays an error.

    def __getattr__(name: str) -> object:
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value  # later lookups find it without coming here
        return value

    def __dir__() -> list[str]:
        return sorted({*globals(), *_LAZY})


__all__ = [
    "EXAMPLES_DIR",
    "KAFKA_MAX_APPEND_EVENTS",
    "KAFKA_REPLICATION_INFLIGHT_EVENTS",
    "NATS_REPLICATION_INFLIGHT_EVENTS",
    "QUICKSTART_PATH",
    "REPLICATION_SECRET_VARIABLE",
    "SCHEMA_PATH",
    "BrokerKind",
    "ClientCerts",
    "ClientToken",
    "ConfigError",
    "ConfigIssue",
    "ConfigWatcher",
    "KafkaSettings",
    "Limits",
    "MeshConfig",
    "NatsSettings",
    "RegionConfig",
    "RegionTls",
    "ReloadOutcome",
    "ReloadResult",
    "ReplicationMode",
    "RouteRule",
    "SecuritySettings",
    "Settings",
    "anonymous_replication_warning",
    "check_compatible",
    "format_duration",
    "load_config",
    "load_config_bytes",
    "load_config_text",
    "mesh_schema",
    "parse_duration",
    "parse_size",
    "region_changes",
    "replication_auth_issue",
    "split_host_port",
]

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
# The default file of `meshgate up`: three embedded regions on this machine.
QUICKSTART_PATH = EXAMPLES_DIR / "quickstart.yaml"
