"""mypy and lint-imports over the package as the wheel maps it.

``meshgate`` is built from the top-level folders by ``pyproject.toml``'s package-directory
mapping (``gateway/`` is ``meshgate.gateway``, ``proto/meshgate/v1/`` is ``meshgate.v1``, ...).
An install (editable or not) imports through that mapping, but mypy and import-linter find a
package by walking one folder, and ``meshgate/`` holds only the CLI and the shared helpers.

So this script copies the mapped package into ``build/package-view/meshgate`` (copies keep
their modification times, so mypy's cache still holds), runs the tool on that copy and writes
mypy's paths back as the files you edit. The copy is made anew on every run and never edited.

    python scripts/static_checks.py mypy [ARGS]          # ARGS default to: tests
    python scripts/static_checks.py lint-imports [ARGS]  # e.g. --no-cache
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VIEW = ROOT / "build" / "package-view"
# What the tools read: sources, stubs and the PEP 561 marker.
_SUFFIXES = (".py", ".pyi", ".typed")


def package_folders(root: Path = ROOT) -> dict[str, Path]:
    """Each listed package and the folder it is built from, by the setuptools mapping."""
    with (root / "pyproject.toml").open("rb") as f:
        setuptools = tomllib.load(f)["tool"]["setuptools"]
    mapped: dict[str, str] = setuptools.get("package-dir", {})
    folders: dict[str, Path] = {}
    for package in setuptools["packages"]:
        parts = package.split(".")
        for n in range(len(parts), 0, -1):
            prefix = ".".join(parts[:n])
            if prefix in mapped:
                folders[package] = root / mapped[prefix] / Path(*parts[n:])
                break
        else:
            folders[package] = root / Path(*parts)
    return folders


def build_view(view: Path = VIEW, root: Path = ROOT) -> dict[Path, Path]:
    """Copy the mapped package under ``view``; return each copy and the file it was copied from."""
    if view.exists():
        shutil.rmtree(view)
    origins: dict[Path, Path] = {}
    for package, folder in package_folders(root).items():
        target = view / Path(*package.split("."))
        target.mkdir(parents=True, exist_ok=True)
        # One level only: a listed subpackage has its own entry, and an unlisted folder (data,
        # examples) holds nothing the tools read.
        for src in sorted(folder.iterdir()):
            if src.is_file() and src.name.endswith(_SUFFIXES):
                dst = target / src.name
                shutil.copy2(src, dst)
                origins[dst] = src
    return origins


def _relative(path: Path) -> str:
    return os.path.relpath(path, ROOT)


def _mypy(args: list[str]) -> int:
    # mypy prints paths relative to its working directory, the checkout's root.
    origins = {_relative(copy): _relative(source) for copy, source in build_view().items()}
    view_package = _relative(VIEW / "meshgate")
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", view_package, *(args or ["tests"])],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    sys.stderr.write(proc.stderr)
    for line in proc.stdout.splitlines(keepends=True):
        path, sep, rest = line.partition(":")
        sys.stdout.write(origins.get(path, path) + sep + rest if sep else line)
    return proc.returncode


def _lint_imports(args: list[str]) -> int:
    build_view()
    # Run from the copy: import-linter puts the working directory first on sys.path, so it finds
    # the copied `meshgate` before the checkout's (which lacks the mapped subpackages).
    return subprocess.run(["lint-imports", *args, str(ROOT / "pyproject.toml")], cwd=VIEW, check=False).returncode


def main(argv: list[str]) -> int:
    tools = {"mypy": _mypy, "lint-imports": _lint_imports}
    if not argv or argv[0] not in tools:
        sys.stderr.write(f"usage: python scripts/static_checks.py {{{'|'.join(tools)}}} [ARGS]\n")
        return 2
    return tools[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
