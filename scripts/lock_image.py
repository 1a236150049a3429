"""Rewrite requirements.lock: the image's dependencies, every one pinned and hashed.

Usage: python scripts/lock_image.py [--uv PATH]

The Dockerfile installs requirements.lock with ``pip install --require-hashes`` in a layer of
its own, before the sources are copied: a change of the sources reuses that layer, and every
file pip downloads must match a hash written here. The lock holds pyproject.toml's
[project.dependencies] and its [build-system] requirements (the image builds meshgate itself
without build isolation, so nothing unpinned is fetched), resolved for the image's Python
(3.12, Linux) with uv (``pip install uv``) against PyPI; each pin lists the hashes of all its
files, so one lock serves amd64 and arm64 images. Run it after changing the dependencies:
tests/helm/test_dockerfile.py fails while the lock misses one or pins a version outside a
specifier.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
# The Python of the Dockerfile's base image.
IMAGE_PYTHON = "3.12"
HEADER = f"""\
# The image's dependencies (pyproject.toml's, and its build-system's), pinned with the hashes of
# every file of each version, for Python {IMAGE_PYTHON} on Linux. Made by: python scripts/lock_image.py
# Installed by the Dockerfile with: pip install --require-hashes --no-deps -r requirements.lock
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uv", default=shutil.which("uv") or "uv", help="the uv binary (default: uv on PATH)")
    args = parser.parse_args(argv)
    with (ROOT / "pyproject.toml").open("rb") as f:
        build_requires: list[str] = tomllib.load(f)["build-system"]["requires"]
    with tempfile.TemporaryDirectory() as tmp:
        build_in = Path(tmp) / "build-system.in"
        build_in.write_text("\n".join(build_requires) + "\n")
        out = Path(tmp) / "requirements.lock"
        command = [
            args.uv, "pip", "compile", "pyproject.toml", str(build_in),
            "--python-version", IMAGE_PYTHON, "--python-platform", "x86_64-unknown-linux-gnu",
            "--generate-hashes", "--index-url", "https://pypi.org/simple", "--no-header",
            "--no-annotate", "--output-file", str(out),
        ]  # fmt: skip
        # This machine's pip configuration (local indexes, constraints) must not shape the image's lock.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_"))}
        env.update(UV_NO_CONFIG="1", UV_PYTHON_DOWNLOADS="never")
        done = subprocess.run(command, cwd=ROOT, env=env, check=False, capture_output=True, text=True)
        if done.returncode != 0:
            print(done.stderr, file=sys.stderr)
            return 1
        LOCK.write_text(HEADER + out.read_text())
    print(f"wrote {LOCK.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
