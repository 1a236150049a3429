"""Cross-checks of event_mesh.regions: names, kinds, addresses, and regions that share a broker."""

from __future__ import annotations

import dataclasses
import ipaddress

from meshgate.config._check import KINDS, CheckContext, kind_of
from meshgate.config._model import BrokerKind, KafkaSettings, NatsSettings
from meshgate.config._values import split_host_port
from meshgate.config._yaml import Path

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


def check_regions(ctx: CheckContext, regions: list[object]) -> list[str] | None:
    """The region names, or None when some name is unknown (an unset variable) so none can be checked against."""
    names: dict[str, int] = {}
    unknown_name = False
    addresses: dict[tuple[str, int | None], tuple[str, str, int, str]] = {}
    for i, region in enumerate(regions):
        if not isinstance(region, dict):
            continue
        base: Path = ("event_mesh", "regions", i)
        name = region.get("name")
        line = ctx.doc.position(base)[0]
        if (*base, "name") in ctx.doc.broken:
            unknown_name = True
        elif isinstance(name, str):
            if name in names:
                first = ctx.doc.position(("event_mesh", "regions", names[name]))[0]
                ctx.add((*base, "name"), f"region {name!r} is declared twice (first at line {first}); rename one")
            else:
                names[name] = i
        label = name if isinstance(name, str) else f"#{i}"
        kind = kind_of(region)
        if kind in KINDS:
            _check_kind(ctx, base, region, kind)
        brokers = region.get("brokers")
        if isinstance(brokers, list):
            for j, broker in enumerate(brokers):
                if isinstance(broker, str):
                    _check_address(ctx, (*base, "brokers", j), broker, port_required=False)
        nats = region.get("nats")
        endpoints: list[tuple[str, Path, object]] = [
            ("gateway", (*base, "gateway"), region.get("gateway")),
            ("metrics", (*base, "metrics"), region.get("metrics")),
            ("broker monitoring", (*base, "nats", "monitor"), nats.get("monitor") if isinstance(nats, dict) else None),
        ]
        for what, path, address in endpoints:
            if not isinstance(address, str) or not _valid_address(ctx, what, path, address):
                continue
            norm = _address_key(address, default_port=None)
            if norm in addresses:
                other, other_what, other_line, other_address = addresses[norm]
                same = "" if address.lower() == other_address.lower() else f"the same as {other_address}, which is "
                alias = f" ({_LOOPBACK_NOTE})" if same and norm[0] == _LOOPBACK else ""
                monitor_free = "broker monitoring" not in (what, other_what)
                ctx.add(
                    path,
                    f"address {address} is {same}already the {other_what} of region {other} (line {other_line})"
                    f"{alias}; every gateway{' and metrics' if monitor_free else ', metrics and broker monitoring'}"
                    " endpoint needs its own HOST:PORT",
                )
            else:
                addresses[norm] = (label, what, line, address)
    _check_shared_brokers(ctx, regions)
    return None if unknown_name else list(names)


def _valid_address(ctx: CheckContext, what: str, path: Path, address: str) -> bool:
    if what == "broker monitoring":
        # Its errors are reported with the rest of the nats block (_check_kind), once.
        try:
            split_host_port(address)
        except ValueError:
            return False
        return True
    return _check_address(ctx, path, address, port_required=True)


def _check_shared_brokers(ctx: CheckContext, regions: list[object]) -> None:
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
        use = _broker_use(ctx, i, region)
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
                ctx.add(
                    ("event_mesh", "regions", i, "brokers", j),
                    f"{_shared_broker(address, key, other)}; {reason}",
                )
                break
        seen.append(use)


def _broker_use(ctx: CheckContext, i: int, region: dict[str, object]) -> _BrokerUse | None:
    base: Path = ("event_mesh", "regions", i)
    kind = kind_of(region)
    brokers = region.get("brokers")
    if kind not in KINDS or not isinstance(brokers, list):
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
        if not isinstance(broker, str) or (*base, "brokers", j) in ctx.doc.broken:
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
    if any((*base, family, key) in ctx.doc.broken for key in ("stream", "subject_prefix", "topic_prefix")):
        return None
    name = region.get("name")
    return _BrokerUse(
        label=name if isinstance(name, str) else f"#{i + 1}",
        line=ctx.doc.position(base)[0],
        kind=kind,
        family=family,
        addresses=tuple(addresses),
        stream=stream,
        prefix=prefix,
    )


def _check_kind(ctx: CheckContext, base: Path, region: dict[str, object], kind: str) -> None:
    brokers = region.get("brokers")
    if kind in (BrokerKind.NATS.value, BrokerKind.KAFKA.value):
        if "brokers" not in region:
            ctx.add(
                base,
                f"a {kind} region needs brokers: a list of at least one host[:port]"
                " (or kind: embedded to run a broker on this machine)",
            )
        elif isinstance(brokers, list) and not brokers:
            ctx.add((*base, "brokers"), f"a {kind} region needs at least one broker host[:port]")
    block_kinds = {"nats": ("nats", "embedded"), "kafka": ("kafka",)}
    for block, fits in block_kinds.items():
        if block in region and kind not in fits:
            ctx.add(
                (*base, block),
                f"{block} settings do not apply to a {kind} region; remove the block or set kind: {' or '.join(fits)}",
                key=True,
            )
    nats = region.get("nats")
    if not isinstance(nats, dict):
        return
    if kind == BrokerKind.NATS.value and nats.get("sync_always") is True:
        ctx.add(
            (*base, "nats", "sync_always"),
            "sync_always applies only to embedded regions; a nats region's server sets its own sync"
            " policy (jetstream sync_interval)",
            key=True,
        )
    cpus = nats.get("cpus")
    if kind == BrokerKind.NATS.value and type(cpus) is int and cpus != 0:  # a wrong type: the schema says so
        ctx.add(
            (*base, "nats", "cpus"),
            "cpus applies only to embedded regions; a nats region's server sets its own (GOMAXPROCS)",
            key=True,
        )
    monitor = nats.get("monitor")
    if kind == BrokerKind.NATS.value and monitor is not None:
        ctx.add(
            (*base, "nats", "monitor"),
            "monitor applies only to embedded regions; a nats region's server sets its own monitoring port (http_port)",
            key=True,
        )
    elif isinstance(monitor, str):
        _check_address(ctx, (*base, "nats", "monitor"), monitor, port_required=True)
    replicas = nats.get("replicas")
    if kind == BrokerKind.EMBEDDED.value and isinstance(replicas, int) and replicas > 1:
        ctx.add(
            (*base, "nats", "replicas"),
            f"an embedded region runs one nats-server, so replicas must be 1, got {replicas};"
            " use kind: nats for a JetStream cluster",
        )


def _check_address(ctx: CheckContext, path: Path, address: str, *, port_required: bool) -> bool:
    try:
        split_host_port(address, port_required=port_required)
    except ValueError as exc:
        ctx.add(path, str(exc))
        return False
    return True
