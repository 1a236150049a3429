"""Route decisions: which regions an event of a topic must reach from its origin.

Patterns are compiled once into a trie of levels, so a decision costs the walk of the topic's
levels through the branches that can still match, whatever the number of rules. Region sets
are bit masks while walking; a mask becomes a sorted tuple of names once, then is reused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from meshgate.topics import TOPIC_RE, validate_pattern, validate_topic

__all__ = [
    "DEFAULT_CACHE_SIZE",
    "Explanation",
    "InvalidPatternError",
    "InvalidTopicError",
    "Router",
    "RoutingConfig",
    "Rule",
    "UnknownRegionError",
]

DEFAULT_CACHE_SIZE = 65_536


# The router reads a mesh config's rules by their shape, not by importing `meshgate.config`:
# config and router are siblings of one layer and neither imports the other
# (`meshgate.config.Rule` and `MeshConfig` are what is passed in).
class Rule(Protocol):
    """One routing rule: events of topics matching ``topic`` (a pattern) go to ``regions``."""

    @property
    def index(self) -> int:
        """Zero-based position in the config's routing list: the rule's identity in explanations."""

    @property
    def topic(self) -> str: ...

    @property
    def regions(self) -> tuple[str, ...]: ...

    @property
    def line(self) -> int: ...

    @property
    def column(self) -> int: ...


class RoutingConfig(Protocol):
    """What ``Router.from_config`` reads of a mesh config."""

    @property
    def region_names(self) -> tuple[str, ...]: ...

    @property
    def routing(self) -> tuple[Rule, ...]: ...


class InvalidTopicError(ValueError):
    def __init__(self, topic: str, reason: str) -> None:
        super().__init__(reason)
        self.topic = topic
        self.reason = reason


class InvalidPatternError(ValueError):
    def __init__(self, rule: Rule, reason: str) -> None:
        super().__init__(f"rule {rule.index}: {reason}")
        self.rule = rule
        self.reason = reason


class UnknownRegionError(ValueError):
    def __init__(self, region: str, known: Sequence[str]) -> None:
        super().__init__(f"unknown region {region!r}; regions: {', '.join(known)}")
        self.region = region
        self.known = tuple(known)


@dataclass(frozen=True, slots=True, kw_only=True)
class Explanation:
    topic: str
    origin: str
    destinations: tuple[str, ...]
    # The rules whose pattern matches the topic, in file order.
    rules: tuple[Rule, ...]


class _Node:
    __slots__ = ("literal", "star", "tail_mask", "tail_rules", "term_mask", "term_rules")

    def __init__(self) -> None:
        self.literal: dict[str, _Node] = {}
        self.star: _Node | None = None
        # Rules whose pattern ends at this node.
        self.term_mask = 0
        self.term_rules: list[int] = []
        # Rules whose pattern has '>' right after this node: they match one or more further levels.
        self.tail_mask = 0
        self.tail_rules: list[int] = []


class Router:
    """Immutable routing table of one mesh config; safe to share between tasks and threads."""

    __slots__ = (
        "_bits",
        "_cache",
        "_cache_size",
        "_masks",
        "_origin_bits",
        "_region_names",
        "_root",
        "_rules",
    )

    def __init__(self, *, regions: Sequence[str], rules: Sequence[Rule], cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        """``regions`` are the possible origins; ``cache_size`` 0 turns the decision cache off."""
        if cache_size < 0:
            raise ValueError(f"cache_size must be 0 (off) or more, got {cache_size}")
        self._rules = tuple(rules)
        self._region_names = tuple(regions)
        names = list(dict.fromkeys([*regions, *(r for rule in self._rules for r in rule.regions)]))
        self._bits = {name: 1 << i for i, name in enumerate(names)}
        self._origin_bits = {name: self._bits[name] for name in self._region_names}
        self._root = _Node()
        for position, rule in enumerate(self._rules):
            reason = validate_pattern(rule.topic)
            if reason is not None:
                raise InvalidPatternError(rule, reason)
            self._insert(position, rule)
        # Mask -> sorted names: a cache bounded by the subsets of regions the rules can produce.
        self._masks: dict[int, tuple[str, ...]] = {}
        self._cache: dict[tuple[str, str], tuple[str, ...]] = {}
        self._cache_size = cache_size

    @classmethod
    def from_config(cls, config: RoutingConfig, *, cache_size: int = DEFAULT_CACHE_SIZE) -> Router:
        return cls(regions=config.region_names, rules=config.routing, cache_size=cache_size)

    @property
    def rules(self) -> tuple[Rule, ...]:
        return self._rules

    @property
    def regions(self) -> tuple[str, ...]:
        return self._region_names

    def _insert(self, position: int, rule: Rule) -> None:
        mask = 0
        for region in rule.regions:
            mask |= self._bits[region]
        node = self._root
        levels = rule.topic.split("/")
        for level in levels:
            if level == ">":
                node.tail_mask |= mask
                node.tail_rules.append(position)
                return
            if level == "*":
                if node.star is None:
                    node.star = _Node()
                node = node.star
            else:
                child = node.literal.get(level)
                if child is None:
                    child = node.literal[level] = _Node()
                node = child
        node.term_mask |= mask
        node.term_rules.append(position)

    def _names(self, mask: int) -> tuple[str, ...]:
        names = self._masks.get(mask)
        if names is None:
            names = tuple(sorted(name for name, bit in self._bits.items() if mask & bit))
            # The rules fix the possible masks, times the origins: small, but bounded all the same.
            if len(self._masks) >= DEFAULT_CACHE_SIZE:
                self._masks.clear()
            self._masks[mask] = names
        return names

    def _origin_bit(self, origin: str) -> int:
        bit = self._origin_bits.get(origin)
        if bit is None:
            raise UnknownRegionError(origin, self._region_names)
        return bit

    def _decide(self, topic: str, origin: str) -> tuple[str, ...]:
        if TOPIC_RE.fullmatch(topic) is None:
            raise InvalidTopicError(topic, validate_topic(topic) or f"invalid topic {topic!r}")
        mask = self._origin_bit(origin)
        # Most walks follow one branch; only a literal child next to a '*' child forks them.
        node = self._root
        forks: list[_Node] | None = None
        for level in topic.split("/"):
            if forks is None:
                # This level is not the last consumed, so a '>' here has one or more levels to take.
                mask |= node.tail_mask
                child = node.literal.get(level)
                star = node.star
                if star is None:
                    if child is None:
                        return self._names(mask)
                    node = child
                elif child is None:
                    node = star
                else:
                    forks = [child, star]
                continue
            after: list[_Node] = []
            for fork in forks:
                mask |= fork.tail_mask
                child = fork.literal.get(level)
                if child is not None:
                    after.append(child)
                if fork.star is not None:
                    after.append(fork.star)
            if not after:
                return self._names(mask)
            forks = after
        if forks is None:
            return self._names(mask | node.term_mask)
        for fork in forks:
            mask |= fork.term_mask
        return self._names(mask)

    def route(self, topic: str, origin: str) -> tuple[str, ...]:
        """Sorted destination regions of an event of ``topic`` admitted in ``origin`` (origin included).

        Raises InvalidTopicError for an invalid topic and UnknownRegionError for an unknown origin.
        """
        if not self._cache_size:
            return self._decide(topic, origin)
        key = (topic, origin)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        result = self._decide(topic, origin)
        # Clearing beats per-entry LRU bookkeeping: hot topics come back within a few decisions.
        if len(self._cache) >= self._cache_size:
            self._cache.clear()
        self._cache[key] = result
        return result

    def matching_rules(self, topic: str) -> tuple[Rule, ...]:
        """The rules whose pattern matches ``topic``, in file order."""
        reason = validate_topic(topic)
        if reason is not None:
            raise InvalidTopicError(topic, reason)
        positions: list[int] = []
        nodes = [self._root]
        for level in topic.split("/"):
            after: list[_Node] = []
            for node in nodes:
                positions.extend(node.tail_rules)
                child = node.literal.get(level)
                if child is not None:
                    after.append(child)
                if node.star is not None:
                    after.append(node.star)
            if not after:
                break
            nodes = after
        else:
            for node in nodes:
                positions.extend(node.term_rules)
        return tuple(self._rules[p] for p in sorted(set(positions)))

    def explain(self, topic: str, origin: str) -> Explanation:
        """The route of ``topic`` from ``origin`` and the rules that chose it."""
        rules = self.matching_rules(topic)
        mask = self._origin_bit(origin)
        for rule in rules:
            for region in rule.regions:
                mask |= self._bits[region]
        return Explanation(topic=topic, origin=origin, destinations=self._names(mask), rules=rules)

    def links(self) -> frozenset[tuple[str, str]]:
        """Every (origin, destination) pair some event can travel: each rule reaches from every region."""
        destinations = dict.fromkeys(r for rule in self._rules for r in rule.regions)
        return frozenset((o, d) for o in self._region_names for d in destinations if d != o)
