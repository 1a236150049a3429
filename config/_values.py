"""Value syntaxes of the mesh file: durations, sizes and HOST:PORT addresses."""

from __future__ import annotations

import ipaddress
import re

__all__ = ["format_duration", "parse_duration", "parse_size", "split_host_port"]

_DURATION_PART = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d)\s*")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([kKMGT]i?B|B)?\s*")
_SIZE_UNITS = {"B": 1, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "TB": 1000**4}
_SIZE_UNITS |= {"KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4}
_HOST_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOSTNAME = re.compile(rf"{_HOST_LABEL}(?:\.{_HOST_LABEL})*\.?")


def parse_duration(value: object) -> float:
    """Seconds of a duration: a number of seconds, or a string like ``500ms``, ``10s``, ``15m``, ``7d``, ``1h30m``."""
    if isinstance(value, bool):
        raise TypeError(f"expected a duration, got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"a duration cannot be negative, got {value}")
        return float(value)
    if not isinstance(value, str):
        raise TypeError(f"expected a duration, got {type(value).__name__}")
    if not value.strip():
        raise ValueError("expected a duration like 500ms, 10s, 15m, 2h, 7d or 1h30m, got an empty string")
    total = 0.0
    pos = 0
    while pos < len(value):
        m = _DURATION_PART.match(value, pos)
        if m is None or m.end() == pos:
            raise ValueError(f"expected a duration like 500ms, 10s, 15m, 2h, 7d or 1h30m, got {value!r}")
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    return total


def format_duration(seconds: float) -> str:
    """The shortest exact unit form of ``seconds`` (``900.0`` -> ``15m``) for messages."""
    for unit in ("d", "h", "m", "s"):
        n = seconds / _DURATION_UNITS[unit]
        if n >= 1 and n == int(n):
            return f"{int(n)}{unit}"
    return f"{seconds * 1000:g}ms" if seconds < 1 else f"{seconds:g}s"


def parse_size(value: object) -> int:
    """Bytes of a size: an integer, or a string like ``512KiB``, ``64MiB``, ``10GB`` (KB = 1000, KiB = 1024)."""
    if isinstance(value, bool):
        raise TypeError(f"expected a size, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a size cannot be negative, got {value}")
        return value
    if isinstance(value, float) and value.is_integer() and value >= 0:
        return int(value)
    if not isinstance(value, str):
        raise TypeError(f"expected a size, got {type(value).__name__}")
    m = _SIZE.fullmatch(value)
    if m is None:
        raise ValueError(f"expected a size like 512KiB, 64MiB or 10GB, got {value!r}")
    unit = m.group(2) or "B"
    return int(float(m.group(1)) * _SIZE_UNITS[unit.replace("k", "K")])


def split_host_port(address: str, *, port_required: bool = True) -> tuple[str, int | None]:
    """``(host, port)`` of ``host[:port]``; IPv6 hosts in brackets (``[::1]:7401``). ValueError says what to fix."""
    if not address:
        raise ValueError(
            "empty address; expected HOST:PORT" if port_required else "empty address; expected host[:port]"
        )
    if address.startswith("["):
        end = address.find("]")
        if end < 0:
            raise ValueError(f"{address!r}: '[' opens an IPv6 address but no ']' closes it")
        host, rest = address[1:end], address[end + 1 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{address!r}: {host!r} is not an IPv6 address") from None
        if rest and not rest.startswith(":"):
            raise ValueError(f"{address!r}: expected ':PORT' after ']', got {rest!r}")
        port_text = rest[1:] if rest else None
    else:
        if "://" in address or "/" in address:
            raise ValueError(f"{address!r}: expected host:port without a scheme or path, e.g. nats1.example.com:4222")
        if address.count(":") > 1:
            raise ValueError(f"{address!r}: write an IPv6 host in brackets, e.g. [::1]:7401")
        host, sep, port_text_raw = address.partition(":")
        port_text = port_text_raw if sep else None
        if not host:
            raise ValueError(f"{address!r}: the host before ':' is missing")
        if not _HOSTNAME.fullmatch(host):
            raise ValueError(f"{address!r}: {host!r} is not a host name or IP address")
    if port_text is None:
        if port_required:
            raise ValueError(f"{address!r}: the port is missing; expected HOST:PORT, e.g. {address}:7401")
        return host, None
    if not re.fullmatch(r"[0-9]+", port_text):
        raise ValueError(f"{address!r}: port {port_text!r} is not a number; use 1 to 65535")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"{address!r}: port {port} is out of range; use 1 to 65535")
    return host, port
