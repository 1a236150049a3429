"""The mesh config: the typed model, loading with line numbers, the JSON Schema, hot reload, examples."""

from __future__ import annotations

from pathlib import Path

from meshgate.config._compat import check_compatible, region_changes
from meshgate.config._errors import ConfigError, ConfigIssue
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
from meshgate.config._reload import ConfigWatcher, ReloadOutcome, ReloadResult
from meshgate.config._values import format_duration, parse_duration, parse_size, split_host_port

__all__ = [
    "EXAMPLES_DIR",
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
