"""Topic validation, pattern matching and route decisions."""

from __future__ import annotations

from meshgate.router._router import (
    DEFAULT_CACHE_SIZE,
    Explanation,
    InvalidPatternError,
    InvalidTopicError,
    Router,
    RoutingConfig,
    Rule,
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
    "Explanation",
    "InvalidPatternError",
    "InvalidTopicError",
    "Router",
    "RoutingConfig",
    "Rule",
    "UnknownRegionError",
    "pattern_covers",
    "pattern_matches",
    "pattern_regex",
    "validate_pattern",
    "validate_topic",
]
