"""``meshgate config validate FILE...`` and ``meshgate config diff OLD NEW``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from meshgate._routing_diff import RoutingDiff
    from meshgate.config import ConfigError, MeshConfig, RouteRule

__all__ = ["register", "run"]

_VALIDATE_EPILOG = """\
Checks YAML syntax, ${VAR} substitution, the JSON Schema (config/mesh.schema.json) and what a
schema cannot: routing regions exist, unique region names and addresses, topic patterns, broker
settings that fit each region's kind. With security.ca: the CA file and every region's
certificate and key (each must exist, hold together, name its region and be signed by the CA);
with --region NAME, as the gateway of region NAME loads the file: the CA and NAME's files only
(a Kubernetes pod has its own region's certificate only).

Replication: a file of several regions needs security.replication_secret or security.ca (or,
on a network you trust, security.replication: anonymous, warned about). Without any of them,
meshgate serve refuses the file: with --region that is an error here; without, a warning
(meshgate up runs such a file, giving its own regions a secret of its own).

exit status:
  0  every FILE is valid ("FILE: ok (N regions, M rules)" on stdout; warnings on stderr)
  1  some FILE is invalid: one "FILE:LINE:COL: message" line per error on stderr
"""

_DIFF_EPILOG = """\
Shows the routing effect of replacing OLD by NEW: rules added, removed or given other regions,
regions added or removed, links (origin -> destination pairs some rule creates) that appear or
go, and, from every origin region both files have, the probe topics whose destinations change.
Probe topics are the rule patterns of both files with every '*' and '>' replaced by 'x'.

exit status:
  0  both files are valid (whether or not routing changes; see "routing_changed" in --json)
  1  OLD or NEW is invalid: one "FILE:LINE:COL: message" line per error on stderr
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "config",
        help="validate mesh files; show the routing effect of an edit",
        description="Mesh file tools.",
    )
    sub = parser.add_subparsers(dest="config_command", metavar="SUBCOMMAND", required=True)
    validate = sub.add_parser(
        "validate",
        help="check mesh files; one FILE:LINE:COL line per error",
        description="Validate mesh files and report every error of each.",
        epilog=_VALIDATE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    validate.add_argument("files", nargs="+", metavar="FILE", help="mesh files (YAML)")
    validate.add_argument(
        "--region",
        metavar="NAME",
        help="check as region NAME's gateway does: of the certificate files, only the CA and NAME's are read",
    )
    diff = sub.add_parser(
        "diff",
        help="show what an edit changes in routing",
        description="Compare the routing of two mesh files.",
        epilog=_DIFF_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    diff.add_argument("old", metavar="OLD", help="the mesh file in use")
    diff.add_argument("new", metavar="NEW", help="the edited mesh file")
    diff.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.config_command == "validate":
        return _validate(args.files, region=args.region)
    return _diff(args.old, args.new, as_json=args.json)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _print_errors(error: ConfigError) -> None:
    for line in error.lines:
        print(line, file=sys.stderr)


def _validate(files: Iterable[str], *, region: str | None = None) -> int:
    from meshgate.config import ConfigError, anonymous_replication_warning, load_config, replication_auth_issue

    rc = 0
    for path in files:
        try:
            config = load_config(path, region=region)
        except ConfigError as exc:
            _print_errors(exc)
            rc = 1
            continue
        if region is not None and region not in [r.name for r in config.regions]:
            names = ", ".join(r.name for r in config.regions)
            print(f"{path}: --region {region} is not a region of the file (regions: {names})", file=sys.stderr)
            rc = 1
            continue
        unauthenticated = replication_auth_issue(config)
        if unauthenticated is not None and region is not None:
            print(unauthenticated, file=sys.stderr)
            rc = 1
            continue
        if unauthenticated is not None:
            print(
                f"{unauthenticated.file}:{unauthenticated.line}:{unauthenticated.column}: warning:"
                f" {unauthenticated.message} (meshgate up gives its own regions a secret for each run)",
                file=sys.stderr,
            )
        warning = anonymous_replication_warning(config)
        if warning is not None:
            print(warning, file=sys.stderr)
        print(f"{path}: ok ({_plural(len(config.regions), 'region')}, {_plural(len(config.routing), 'rule')})")
    return rc


def _load_both(old: str, new: str) -> tuple[MeshConfig, MeshConfig] | None:
    from meshgate.config import ConfigError, load_config

    configs: list[MeshConfig] = []
    for path in (old, new):
        try:
            configs.append(load_config(path))
        except ConfigError as exc:
            _print_errors(exc)
    if len(configs) != 2:
        return None
    return configs[0], configs[1]


def _rule(r: RouteRule) -> str:
    return f"#{r.index} {r.topic} -> {', '.join(r.regions)} (line {r.line})"


def format_diff(diff: RoutingDiff, *, old: str, new: str) -> str:
    """The human text of ``meshgate config diff``."""
    out = [f"--- {old}", f"+++ {new}"]
    if diff.rules_added or diff.rules_removed or diff.rules_changed:
        out.append("rules:")
        out += [f"  - {_rule(r)}" for r in diff.rules_removed]
        out += [f"  + {_rule(r)}" for r in diff.rules_added]
        out += [
            f"  ~ {c.new.topic}: {', '.join(c.old.regions)} -> {', '.join(c.new.regions)}"
            f" (line {c.old.line} -> {c.new.line})"
            for c in diff.rules_changed
        ]
    if diff.regions_added or diff.regions_removed or diff.regions_changed:
        out.append("regions:")
        out += [f"  - {name}" for name in diff.regions_removed]
        out += [f"  + {name}" for name in diff.regions_added]
        out += [f"  ~ {c.name}: {'; '.join(c.changes)}" for c in diff.regions_changed]
    if diff.links_added or diff.links_removed:
        out.append("links:")
        out += [f"  - {o} -> {d}" for o, d in diff.links_removed]
        out += [f"  + {o} -> {d}" for o, d in diff.links_added]
    if diff.topics:
        out.append(f"topics whose destinations change (of {_plural(len(diff.probes), 'probe topic')}):")
        origin = None
        for t in diff.topics:
            if t.origin != origin:
                origin = t.origin
                out.append(f"  from {origin}:")
            out.append(f"    {t.topic}: {', '.join(t.old)} -> {', '.join(t.new)}")
    if diff.routing_changed:
        out.append("routing changes")
    elif diff.changed:
        out.append("no routing change (only rule order, lines or region settings differ)")
    else:
        out.append("no routing change")
    return "\n".join(out)


def _diff(old: str, new: str, *, as_json: bool) -> int:
    from meshgate._routing_diff import diff_routing

    loaded = _load_both(old, new)
    if loaded is None:
        return 1
    diff = diff_routing(*loaded)
    if as_json:
        print(json.dumps({"old": old, "new": new, **diff.to_json()}))
    else:
        print(format_diff(diff, old=old, new=new))
    return 0
