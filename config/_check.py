"""What the cross-checks of every section share: the file under check, its issues, small helpers.

The JSON Schema checks each value's form; the checks of ``_check_regions``, ``_check_routing``,
``_check_settings`` and ``_check_security`` do what a schema cannot (names and addresses that must
differ, limits that must fit together, secrets and certificate files that must be usable), each
adding its issues to one ``CheckContext`` at the position of the value.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Mapping
from pathlib import Path as FsPath
from typing import Any

from meshgate.config._errors import ConfigIssue
from meshgate.config._model import BrokerKind, ClientCerts, RegionConfig
from meshgate.config._yaml import Document, Path, format_path

KINDS = tuple(k.value for k in BrokerKind)
# Schema failures that a cross-check explains better at the same place.
SUPERSEDED_VALIDATORS = frozenset({"pattern", "minLength", "maxLength"})


@dataclasses.dataclass(slots=True, kw_only=True)
class CheckContext:
    """One mesh file under check: its document, where it came from, and the issues found so far."""

    doc: Document
    source: str
    check_files: bool = True
    # With a region, only its certificate files (and the CA) are read: see load_config.
    region: str | None = None
    issues: list[tuple[Path, str, ConfigIssue]] = dataclasses.field(default_factory=list)

    def add(self, path: Path, message: str, *, key: bool = False, origin: str = "check") -> None:
        """An issue at ``path`` (at its key with ``key``); ``origin``: the schema validator that found it, if any."""
        line, column = self.doc.position(path, key=key)
        where = format_path(path)
        text = f"{where}: {message}" if where else message
        self.issues.append((path, origin, ConfigIssue(file=self.source, line=line, column=column, message=text)))

    def results(self) -> list[ConfigIssue]:
        """The issues to show: none under an unset variable (reported once, by the substitution), no schema
        failure where a cross-check says more at the same place, no repeats."""
        broken = self.doc.broken
        detailed = {path for path, origin, _ in self.issues if origin == "check"}
        kept: dict[str, ConfigIssue] = {}
        for path, origin, issue in self.issues:
            if any(path[: n + 1] in broken for n in range(len(path))) or () in broken:
                continue
            if origin in SUPERSEDED_VALIDATORS and path in detailed:
                continue
            kept.setdefault(str(issue), issue)
        return list(kept.values())


def model_default(model: type[Any], name: str) -> Any:
    """The model's default of one field. The loader has no defaults of its own: what a file leaves
    out is what the model says (and the schema's "default"s agree with the model's, a test checks)."""
    for f in dataclasses.fields(model):
        if f.name == name:
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
            return f.default
    raise KeyError(f"{model.__name__} has no field {name!r}")


def kind_of(region: Mapping[str, object]) -> object:
    """A region's kind as written, else the default kind (a BrokerKind, equal to its value)."""
    return region.get("kind", model_default(RegionConfig, "kind"))


def client_certs_mode(value: object) -> object:
    # YAML 1.1 reads an unquoted `off` as the boolean false.
    return ClientCerts.OFF.value if value is False else value


def base_dir(source: str) -> FsPath:
    """The folder that relative paths in the mesh file start from: the file's own, else the working directory."""
    if source.startswith("<"):
        return FsPath.cwd()
    return FsPath(os.path.abspath(source)).parent


def file_path(base: FsPath, value: str) -> FsPath:
    # Normalised but never resolved: a Kubernetes Secret volume rotates its files by swapping
    # a symlink, which a resolved path would no longer follow.
    return FsPath(os.path.normpath(base / os.path.expanduser(value)))


def suggest(word: str, choices: list[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""
