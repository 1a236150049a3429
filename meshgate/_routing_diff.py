"""The routing effect of editing a mesh file: what ``meshgate config diff`` shows before a reload.

A module of its own, above both, because it reads the config (regions, rules) and asks the
router (config and router are siblings of one layer and neither imports the other), and below the
gateway, whose console previews an edit as the CLI does (pyproject's [tool.importlinter] layers).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from meshgate.config import MeshConfig, RouteRule, region_changes
from meshgate.router import Router

__all__ = ["PROBE_LEVEL", "RegionChange", "RoutingDiff", "RuleChange", "TopicChange", "diff_routing", "probe_topics"]

# What stands for '*' and '>' in the concrete topics that probe both files.
PROBE_LEVEL = "x"


@dataclass(frozen=True, slots=True, kw_only=True)
class RuleChange:
    """A pattern kept by the edit whose regions changed."""

    old: RouteRule
    new: RouteRule


@dataclass(frozen=True, slots=True, kw_only=True)
class RegionChange:
    name: str
    changes: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class TopicChange:
    origin: str
    topic: str
    old: tuple[str, ...]
    new: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class RoutingDiff:
    rules_added: tuple[RouteRule, ...]
    rules_removed: tuple[RouteRule, ...]
    rules_changed: tuple[RuleChange, ...]
    regions_added: tuple[str, ...]
    regions_removed: tuple[str, ...]
    regions_changed: tuple[RegionChange, ...]
    # (origin, destination) pairs some rule makes events travel.
    links_added: tuple[tuple[str, str], ...]
    links_removed: tuple[tuple[str, str], ...]
    # Probe topics, from every origin both files have, whose destinations differ.
    topics: tuple[TopicChange, ...]
    probes: tuple[str, ...]

    @property
    def routing_changed(self) -> bool:
        """Whether some event would now go elsewhere (edits that only move or reformat rules do not count)."""
        return bool(self.topics or self.links_added or self.links_removed or self.regions_added or self.regions_removed)

    @property
    def changed(self) -> bool:
        return bool(
            self.routing_changed or self.rules_added or self.rules_removed or self.rules_changed or self.regions_changed
        )

    def to_json(self) -> dict[str, object]:
        def rule(r: RouteRule) -> dict[str, object]:
            return {"index": r.index, "pattern": r.topic, "regions": list(r.regions), "line": r.line}

        def links(pairs: tuple[tuple[str, str], ...]) -> list[dict[str, str]]:
            return [{"origin": o, "destination": d} for o, d in pairs]

        return {
            "routing_changed": self.routing_changed,
            "rules": {
                "added": [rule(r) for r in self.rules_added],
                "removed": [rule(r) for r in self.rules_removed],
                "changed": [
                    {"pattern": c.new.topic, "old": rule(c.old), "new": rule(c.new)} for c in self.rules_changed
                ],
            },
            "regions": {
                "added": list(self.regions_added),
                "removed": list(self.regions_removed),
                "changed": [{"name": c.name, "changes": list(c.changes)} for c in self.regions_changed],
            },
            "links": {"added": links(self.links_added), "removed": links(self.links_removed)},
            "topics": [
                {"origin": t.origin, "topic": t.topic, "old": list(t.old), "new": list(t.new)} for t in self.topics
            ],
            "probes": len(self.probes),
        }


def probe_topics(*configs: MeshConfig) -> tuple[str, ...]:
    """One concrete topic per rule pattern of ``configs``, wildcards replaced by ``PROBE_LEVEL``, sorted."""
    probes = {
        "/".join(PROBE_LEVEL if level in ("*", ">") else level for level in rule.topic.split("/"))
        for config in configs
        for rule in config.routing
    }
    return tuple(sorted(probes))


def _match_rules(old: MeshConfig, new: MeshConfig) -> tuple[list[RouteRule], list[RouteRule], list[RuleChange]]:
    # A pattern may appear in several rules: pair them up in file order, the rest are added or removed.
    remaining: defaultdict[str, list[RouteRule]] = defaultdict(list)
    for r in old.routing:
        remaining[r.topic].append(r)
    added: list[RouteRule] = []
    changed: list[RuleChange] = []
    for r in new.routing:
        same = remaining.get(r.topic)
        if not same:
            added.append(r)
            continue
        before = same.pop(0)
        if set(before.regions) != set(r.regions):
            changed.append(RuleChange(old=before, new=r))
    removed = sorted((r for rules in remaining.values() for r in rules), key=lambda r: r.index)
    return added, removed, changed


def diff_routing(old: MeshConfig, new: MeshConfig) -> RoutingDiff:
    """What changes when ``new`` replaces ``old``: rules, regions, links, and the routes of probe topics."""
    added, removed, changed = _match_rules(old, new)
    old_names, new_names = old.region_names, new.region_names
    regions_changed = tuple(
        RegionChange(name=name, changes=tuple(changes))
        for name in old_names
        if name in new_names and (changes := region_changes(old.region(name), new.region(name)))
    )
    # Caches off: every probe is routed once per origin.
    old_router = Router.from_config(old, cache_size=0)
    new_router = Router.from_config(new, cache_size=0)
    old_links, new_links = old_router.links(), new_router.links()
    probes = probe_topics(old, new)
    topics = [
        TopicChange(origin=origin, topic=topic, old=before, new=after)
        for origin in old_names
        if origin in new_names
        for topic in probes
        if (before := old_router.route(topic, origin)) != (after := new_router.route(topic, origin))
    ]
    return RoutingDiff(
        rules_added=tuple(added),
        rules_removed=tuple(removed),
        rules_changed=tuple(changed),
        regions_added=tuple(n for n in new_names if n not in old_names),
        regions_removed=tuple(n for n in old_names if n not in new_names),
        regions_changed=regions_changed,
        links_added=tuple(sorted(new_links - old_links)),
        links_removed=tuple(sorted(old_links - new_links)),
        topics=tuple(topics),
        probes=probes,
    )
