"""Cross-checks of event_mesh.settings: durations and limits that must fit together (and a NATS region's max_age,
which must outlast the idempotency window)."""

from __future__ import annotations

from meshgate.config._check import CheckContext, kind_of
from meshgate.config._model import BrokerKind, Limits, Settings
from meshgate.config._values import format_duration, parse_duration, parse_size
from meshgate.config._yaml import Path

# A request carries one event plus at most this much of framing and gateway fields.
EVENT_FRAMING_BYTES = 16 * 1024
# Renewals come every third of the lease TTL: below this, one slow broker round trip loses a link.
_MIN_LEASE_TTL_SECONDS = 1.0
_MIN_ACK_TIMEOUT_SECONDS = 1.0
_MIN_METADATA_BYTES = 4 * 1024


def _duration(value: object) -> float | None:
    try:
        return parse_duration(value)
    except (TypeError, ValueError):
        return None  # the schema reports it


def _count(value: object, default: int) -> int | None:
    if value is None:
        return default
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None


def check_settings(ctx: CheckContext, settings: dict[str, object]) -> float | None:
    base: Path = ("event_mesh", "settings")
    window = _duration(settings.get("idempotency_window", Settings().idempotency_window_seconds))
    if window is not None and window <= 0:
        ctx.add(
            (*base, "idempotency_window"),
            "the idempotency window must be longer than 0; retries of an event id would be stored twice",
        )
    lease_ttl = _duration(settings.get("lease_ttl", "10s"))
    if lease_ttl is not None and lease_ttl < _MIN_LEASE_TTL_SECONDS:
        ctx.add(
            (*base, "lease_ttl"),
            f"lease_ttl {format_duration(lease_ttl)} is below {format_duration(_MIN_LEASE_TTL_SECONDS)}; a lease"
            " renewed every third of it would lapse on any pause of the gateway or its broker",
        )
    ack_timeout = _duration(settings.get("replication_ack_timeout", "30s"))
    if ack_timeout is not None and ack_timeout < _MIN_ACK_TIMEOUT_SECONDS:
        ctx.add(
            (*base, "replication_ack_timeout"),
            f"replication_ack_timeout {format_duration(ack_timeout)} is below"
            f" {format_duration(_MIN_ACK_TIMEOUT_SECONDS)}; a destination writing a full batch into a busy broker"
            " would be dropped and sent the same batch again and again",
        )
    limits = settings.get("limits")
    if isinstance(limits, dict):
        lbase: Path = (*base, "limits")
        defaults = Limits()
        batch = _count(limits.get("max_batch_events"), defaults.max_batch_events)
        per_stream = _count(limits.get("max_inflight_events_per_stream"), defaults.max_inflight_events_per_stream)
        total = _count(limits.get("max_inflight_events"), defaults.max_inflight_events)
        if batch is not None and per_stream is not None and batch > per_stream:
            key = "max_batch_events" if "max_batch_events" in limits else "max_inflight_events_per_stream"
            ctx.add(
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
            ctx.add(
                (*lbase, key),
                f"max_inflight_events_per_stream ({per_stream}) is above max_inflight_events ({total})",
            )
        _check_client_limits(ctx, lbase, limits, defaults)
    return window


def _size(value: object, default: int) -> int | None:
    if value is None:
        return default
    try:
        return parse_size(value)
    except (TypeError, ValueError):
        return None  # the schema reports it


def _check_client_limits(ctx: CheckContext, lbase: Path, limits: dict[str, object], defaults: Limits) -> None:
    data = _size(limits.get("max_data_bytes"), defaults.max_data_bytes)
    attributes = _size(limits.get("max_attributes_bytes"), defaults.max_attributes_bytes)
    # Unset, it grows to fit one event of the file's max_data_bytes (see _message_bytes).
    message = _size(limits.get("max_message_bytes"), -1) if "max_message_bytes" in limits else None
    if message is not None and message >= 0 and data is not None and attributes is not None:
        need = data + attributes + EVENT_FRAMING_BYTES
        if message < need:
            ctx.add(
                (*lbase, "max_message_bytes"),
                f"max_message_bytes ({message} bytes) cannot carry one event of max_data_bytes ({data})"
                f" plus max_attributes_bytes ({attributes}) and framing; raise it to at least {need}"
                " or lower max_data_bytes",
            )
    metadata = _size(limits.get("max_metadata_bytes"), defaults.max_metadata_bytes)
    if metadata is not None and metadata < _MIN_METADATA_BYTES:
        ctx.add(
            (*lbase, "max_metadata_bytes"),
            f"max_metadata_bytes of {metadata} bytes leaves no room for gRPC's own headers and a token;"
            f" use at least {_MIN_METADATA_BYTES} (4KiB)",
        )
    if limits.get("client_burst") and not limits.get("client_rate"):
        ctx.add(
            (*lbase, "client_burst"),
            "client_burst applies only with a client_rate above 0; set client_rate or remove client_burst",
        )
    per_call = _size(limits.get("subscribe_buffer_bytes"), defaults.subscribe_buffer_bytes)
    total = _size(limits.get("subscribe_buffer_total_bytes"), defaults.subscribe_buffer_total_bytes)
    if per_call is not None and total is not None and total < per_call:
        key = "subscribe_buffer_total_bytes" if "subscribe_buffer_total_bytes" in limits else "subscribe_buffer_bytes"
        ctx.add(
            (*lbase, key),
            f"subscribe_buffer_total_bytes ({total}) is below subscribe_buffer_bytes ({per_call}): every"
            " Subscribe would be refused; raise the total or lower the per-call bytes",
        )


def check_retention(ctx: CheckContext, regions: list[object], window: float) -> None:
    for i, region in enumerate(regions):
        if not isinstance(region, dict) or kind_of(region) not in (BrokerKind.NATS, BrokerKind.EMBEDDED):
            continue
        nats = region.get("nats")
        if not isinstance(nats, dict) or "max_age" not in nats:
            continue
        max_age = _duration(nats["max_age"])
        if max_age is not None and 0 < max_age < window:
            ctx.add(
                ("event_mesh", "regions", i, "nats", "max_age"),
                f"max_age {format_duration(max_age)} is shorter than settings.idempotency_window"
                f" {format_duration(window)}; JetStream keeps duplicate ids no longer than events,"
                " so raise max_age (0 keeps events without age limit) or lower the window",
            )
