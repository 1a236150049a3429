"""Cross-checks of event_mesh.routing: topic patterns, and regions that the mesh declares."""

from __future__ import annotations

from meshgate.config._check import CheckContext, suggest
from meshgate.config._yaml import Path
from meshgate.topics import validate_pattern


def check_routing(ctx: CheckContext, routing: list[object], names: list[str] | None) -> None:
    for i, rule in enumerate(routing):
        if not isinstance(rule, dict):
            continue
        base: Path = ("event_mesh", "routing", i)
        topic = rule.get("topic")
        if isinstance(topic, str):
            reason = validate_pattern(topic)
            if reason is not None:
                ctx.add((*base, "topic"), reason)
        regions = rule.get("regions")
        if not isinstance(regions, list) or not names:
            continue
        for j, region in enumerate(regions):
            if isinstance(region, str) and region not in names:
                ctx.add(
                    (*base, "regions", j),
                    f"unknown region {region!r}{suggest(region, names)} (regions: {', '.join(names)})",
                )
