"""Topic validation, pattern matching and route decisions."""

from __future__ import annotations

from meshgate.router._diff import (
    PROBE_LEVEL,
    RegionChange,
    RoutingDiff,
    RuleChange,
    TopicChange,
    diff_routing,
    probe_topics,
)
from meshgate.router._router import (
    DEFAULT_CACHE_SIZE,
    Explanation,
    InvalidPatternError,
    InvalidTopicError,
    Router,
    UnknownRegionError,
)
from meshgate.topics import (
    MAX_LEVEL_LENGTH,
    MAX_LEVELS,
    pattern_covers,
    pattern_matches,
    pattern_regex,
    validate_pattern,
    validate_topic,
)

__all__ = [
    "DEFAULT_CACHE_SIZE",
    "MAX_LEVELS",
    "MAX_LEVEL_LENGTH",
    "PROBE_LEVEL",
    "Explanation",
    "InvalidPatternError",
    "InvalidTopicError",
    "RegionChange",
    "Router",
    "RoutingDiff",
    "RuleChange",
    "TopicChange",
    "UnknownRegionError",
    "diff_routing",
    "pattern_covers",
    "pattern_matches",
    "pattern_regex",
    "probe_topics",
    "validate_pattern",
    "validate_topic",
]
