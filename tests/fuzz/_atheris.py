"""Running an atheris (libFuzzer) harness for a bounded time with a throw-away seed corpus.

The harnesses are scripts, not pytest tests (pytest collects ``test_*.py`` only):

    pip install -e '.[dev,fuzz]'
    python -m tests.fuzz.atheris_topics [-max_total_time=60] [libFuzzer flags] [CORPUS_DIR...]
    python -m tests.fuzz.atheris_loader [-max_total_time=60] [libFuzzer flags] [CORPUS_DIR...]

Without ``-max_total_time`` or ``-runs`` a run lasts 60 s; without a corpus directory the seeds
go to a temporary one (libFuzzer writes new inputs into its first corpus directory, so the
shipped examples are never used as one). A crash is written to ``crash-<sha1>`` in the
current directory; rerun the harness with that file as its only argument to reproduce it.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import atheris

__all__ = ["run"]

DEFAULT_SECONDS = 60
# An input slower than this is a finding too (a pathological YAML file, a regex blow-up).
DEFAULT_INPUT_TIMEOUT = 10


def run(test_one: Callable[[bytes], None], seeds: Sequence[bytes]) -> None:
    args = sys.argv[1:]
    flags = [a for a in args if a.startswith("-")]
    if not any(f.startswith(("-max_total_time=", "-runs=")) for f in flags):
        args.append(f"-max_total_time={DEFAULT_SECONDS}")
    if not any(f.startswith("-timeout=") for f in flags):
        args.append(f"-timeout={DEFAULT_INPUT_TIMEOUT}")
    with tempfile.TemporaryDirectory(prefix="meshgate-atheris-") as tmp:
        if not [a for a in args if not a.startswith("-")]:
            for i, seed in enumerate(seeds):
                (Path(tmp) / f"seed-{i}").write_bytes(seed)
            args.append(tmp)
        atheris.Setup([sys.argv[0], *args], test_one)
        atheris.Fuzz()
