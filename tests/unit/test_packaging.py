"""The build's view of the package, the install's and the static checks' agree.

The wheel is built from pyproject.toml's package-directory mapping (``gateway/`` is
``meshgate.gateway``, ...), with no links in the tree. An editable install imports through
the same mapping; mypy and the import-contract linter cannot follow it and run on a copy
``scripts/static_checks.py`` makes. These tests keep the mapping, the package list, the copy
and what ``import`` finds in step.
"""

from __future__ import annotations

import importlib.util
import runpy
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STATIC_CHECKS = runpy.run_path(str(ROOT / "scripts" / "static_checks.py"))


def _setuptools() -> dict[str, object]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        config: dict[str, object] = tomllib.load(f)["tool"]["setuptools"]
    return config


def test_no_links_in_the_package() -> None:
    """The top-level folders are subpackages through the mapping alone (the contract: no symlinks)."""
    links = [str(p.relative_to(ROOT)) for p in (ROOT / "meshgate").rglob("*") if p.is_symlink()]
    assert links == []


def test_the_static_checks_see_what_import_finds(tmp_path: Path) -> None:
    """Each module of the copy mypy and lint-imports read is, by import, the file it was copied from."""
    origins = STATIC_CHECKS["build_view"](tmp_path / "view", ROOT)
    modules: dict[str, Path] = {}
    for copy, source in origins.items():
        if copy.suffix != ".py":
            continue
        parts = list(copy.relative_to(tmp_path / "view").with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = source
    assert {"meshgate", "meshgate.gateway", "meshgate.v1", "meshgate.brokers.nats._broker"} <= set(modules)
    for module, source in modules.items():
        spec = importlib.util.find_spec(module)
        assert spec is not None and spec.origin is not None, module
        assert Path(spec.origin).resolve() == source.resolve(), module


@pytest.mark.parametrize("package", ["meshgate.gateway", "meshgate.v1", "meshgate.bench"])
def test_a_mapped_package_imports_from_its_folder(package: str) -> None:
    folders = STATIC_CHECKS["package_folders"](ROOT)
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.origin is not None
    assert Path(spec.origin).parent.resolve() == folders[package].resolve()


def test_every_subpackage_is_listed() -> None:
    """A new subpackage (a folder with ``__init__.py``) must be listed, or the wheel leaves it out."""
    listed = _setuptools()["packages"]
    assert isinstance(listed, list)
    folders = STATIC_CHECKS["package_folders"](ROOT)
    for package in listed:
        assert (folders[package] / "__init__.py").is_file(), package
    found = set()
    for package in [p for p in listed if p.count(".") <= 1]:
        base = folders[package]
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base)
            if rel.parts and any(part.startswith(("_", ".")) for part in rel.parts):
                continue
            found.add(".".join((package, *rel.parts)))
    assert found <= set(listed), sorted(found - set(listed))
