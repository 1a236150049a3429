"""The build's view of the package and the checkout's agree.

The wheel is built from pyproject.toml's package-directory mapping (``gateway/`` is
``meshgate.gateway``, ...). mypy and the import-contract linter read the package from the
filesystem and cannot follow a build backend's mapping, so ``meshgate/<name>`` links show them
the same tree in a checkout. These tests keep the two views and the package list in step.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _setuptools() -> dict[str, object]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        config: dict[str, object] = tomllib.load(f)["tool"]["setuptools"]
    return config


def _package_dirs() -> dict[str, str]:
    dirs = _setuptools()["package-dir"]
    assert isinstance(dirs, dict)
    return {str(k): str(v) for k, v in dirs.items()}


def test_each_link_is_the_mapped_folder() -> None:
    links = {
        f"meshgate.{p.name}": (p.parent / p.readlink()).resolve()
        for p in (ROOT / "meshgate").iterdir()
        if p.is_symlink()
    }
    mapped = {package: (ROOT / folder).resolve() for package, folder in _package_dirs().items()}
    assert links == mapped


def _directory_of(package: str, dirs: dict[str, str]) -> Path:
    parts = package.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in dirs:
            return ROOT / dirs[prefix] / Path(*parts[n:])
    return ROOT / Path(*parts)


def test_every_subpackage_is_listed() -> None:
    """A new subpackage (a folder with ``__init__.py``) must be listed, or the wheel leaves it out."""
    listed = _setuptools()["packages"]
    assert isinstance(listed, list)
    dirs = _package_dirs()
    for package in listed:
        assert (_directory_of(package, dirs) / "__init__.py").is_file(), package
    found = set()
    for package in [p for p in listed if p.count(".") <= 1]:
        base = _directory_of(package, dirs)
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base)
            if rel.parts and any(part.startswith(("_", ".")) for part in rel.parts):
                continue
            found.add(".".join((package, *rel.parts)))
    assert found <= set(listed), sorted(found - set(listed))
