"""atheris harness: the mesh loader on arbitrary bytes, seeded with the shipped example files.

    python -m tests.fuzz.atheris_loader [-max_total_time=60]

Every input must load into a MeshConfig or raise ConfigError with each issue inside the text
(the same check as tests/fuzz/test_loader.py); any other exception, or an input slower than
the harness's per-input timeout, is a finding.
"""

from __future__ import annotations

import atheris

with atheris.instrument_imports(include=["meshgate", "yaml"]):
    from meshgate.config import EXAMPLES_DIR, load_config_bytes

from tests.fuzz._atheris import run
from tests.fuzz.test_loader import ENV, SOURCE, check

SEEDS = [p.read_bytes() for p in sorted(EXAMPLES_DIR.glob("*.yaml"))]


def test_one(data: bytes) -> None:
    text = data.decode("utf-8", errors="replace")
    check(lambda: load_config_bytes(data, SOURCE, env=ENV), text)


if __name__ == "__main__":
    run(test_one, SEEDS)
