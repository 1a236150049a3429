"""``meshgate.topics`` is the bottom layer: importing it loads no other module of meshgate and
nothing outside the standard library, so a broker adapter can validate a topic without the
router, the config loader or their dependencies (jsonschema, YAML, cryptography, gRPC)."""

from __future__ import annotations

import json
import subprocess
import sys

_PROBE = """
import json, sys
before = set(sys.modules)
import meshgate.topics
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def test_importing_topics_loads_only_the_standard_library() -> None:
    proc = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=60, check=True)
    loaded = json.loads(proc.stdout)
    assert "meshgate.topics" in loaded
    ours = [m for m in loaded if m.startswith("meshgate") and m not in ("meshgate", "meshgate.topics")]
    assert ours == []
    outside = [m for m in loaded if m.split(".")[0] not in sys.stdlib_module_names and not m.startswith("meshgate")]
    assert outside == []


def test_one_validate_topic() -> None:
    """The router re-exports the topic syntax; the broker package no longer has a raising twin."""
    import meshgate.brokers
    import meshgate.router
    import meshgate.topics

    assert meshgate.router.validate_topic is meshgate.topics.validate_topic
    assert meshgate.router.validate_pattern is meshgate.topics.validate_pattern
    assert not hasattr(meshgate.brokers, "validate_topic")
    assert meshgate.topics.validate_topic("orders//x") == (
        "topic 'orders//x': level 2 is empty; a level is 1 to 64 characters of A-Z a-z 0-9 - _"
    )
