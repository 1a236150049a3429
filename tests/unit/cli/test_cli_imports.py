"""What the ``meshgate`` command imports: the parser argparse only, each command what it uses.

Each check runs in a fresh interpreter (this one has imported everything already) and looks
at ``sys.modules``; nothing is timed. The start time that follows from it (about 0.05 s for
``meshgate --help`` against about 0.4 s when every command module imported the gateway and
the brokers' clients) is measured by hand, not here.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from meshgate.config import EXAMPLES_DIR

# Imported by none of the parser, --help or the plain-gRPC commands.
_SERVER_SIDE = (
    "aiokafka",
    "nats",
    "opentelemetry",
    "prometheus_client",
    "meshgate.gateway",
    "meshgate.brokers",
    "meshgate.replicator",
)
_LOADER = ("jsonschema", "yaml", "cryptography", "meshgate.tls")
_GRPC = ("grpc", "google.protobuf", "meshgate.v1")

# Builds the parser, renders the help of every command, runs `main(argv)` when argv is given,
# and prints the exit status and the modules then loaded as the last line.
_PROBE = """
import argparse, json, sys
import meshgate.cli as cli

def walk(parser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from walk(sub)

rc = None
if len(sys.argv) > 1:
    rc = cli.main(sys.argv[1:])
else:
    for parser in walk(cli.build_parser()):
        parser.format_help()
print(json.dumps({"rc": rc, "modules": sorted(sys.modules)}))
"""


def _probe(*argv: str) -> tuple[int | None, set[str]]:
    argv_ = [sys.executable, "-c", _PROBE, *argv]
    proc = subprocess.run(argv_, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    last = json.loads(proc.stdout.splitlines()[-1])
    return last["rc"], set(last["modules"])


def _loaded(modules: set[str], names: tuple[str, ...]) -> list[str]:
    """Which of ``names`` (packages: with any of their submodules) are in ``modules``."""
    return [n for n in names if any(m == n or m.startswith(n + ".") for m in modules)]


@pytest.fixture
def refused() -> Iterator[str]:
    """HOST:PORT of a socket bound but never listening: a connection is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{s.getsockname()[1]}"


def test_building_the_parser_and_every_help_imports_argparse_only() -> None:
    _, modules = _probe()
    assert _loaded(modules, (*_SERVER_SIDE, *_LOADER, *_GRPC, "meshgate.config", "meshgate.router", "asyncio")) == []


@pytest.mark.parametrize(
    "argv",
    [
        ("status", "-g", "{gw}"),
        ("publish", "-g", "{gw}", "orders/created", "x"),
        ("tail", "-g", "{gw}", "orders/>", "--limit", "1"),
    ],
    ids=["status", "publish", "tail"],
)
def test_a_gateway_client_command_imports_grpc_and_nothing_of_the_server(refused: str, argv: tuple[str, ...]) -> None:
    rc, modules = _probe(*(a.format(gw=refused) for a in argv))
    assert rc == 1  # it ran: the gateway refused the connection
    assert "grpc" in modules
    # Plaintext: not even the certificate code.
    assert _loaded(modules, (*_SERVER_SIDE, *_LOADER, "meshgate.config")) == []


def test_trace_reads_its_duration_without_the_config_loader(refused: str) -> None:
    rc, modules = _probe("trace", "-g", refused, "o-1", "--since", "10m")
    assert rc == 1
    assert "meshgate.config._values" in modules
    assert _loaded(modules, (*_SERVER_SIDE, *_LOADER, "meshgate.config._loader", "meshgate.config._reload")) == []


def test_route_loads_the_file_without_the_gateway_or_the_watcher() -> None:
    rc, modules = _probe("route", "-c", str(EXAMPLES_DIR / "brief.yaml"), "orders/created")
    assert rc == 0
    assert "meshgate.config._loader" in modules
    assert _loaded(modules, (*_SERVER_SIDE, "meshgate.config._reload")) == []


@pytest.mark.parametrize("module", ["meshgate.config", "meshgate.router", "meshgate.brokers"])
def test_the_model_and_the_topic_syntax_come_without_the_file_loader(module: str) -> None:
    # meshgate.brokers imports meshgate.router for the topic syntax, and the router imports the
    # config model: neither needs jsonschema, YAML or the certificate checks of the loader.
    code = f"import json, sys; import {module}; print(json.dumps(sorted(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    modules = set(json.loads(proc.stdout.splitlines()[-1]))
    assert _loaded(modules, (*_LOADER, "meshgate.config._loader", "meshgate.config._reload")) == []
