"""Topic and pattern syntax: validation with messages a person can act on, the reference matcher, and
the mapping of topics onto broker names.

The bottom layer of the package: it imports nothing of meshgate (and nothing outside the standard
library), so a broker adapter, the config loader and the router share one definition of a topic
without importing each other.

A topic is 1 to 16 levels separated by ``/``; a level is 1 to 64 characters of
``A-Z a-z 0-9 - _``. A pattern is the same, except that a level may be ``*`` (exactly one
level) and the last level may be ``>`` (one or more levels).
"""

from __future__ import annotations

import re

__all__ = [
    "LEVEL_CHARS",
    "MAX_LEVELS",
    "MAX_LEVEL_LENGTH",
    "TOPIC_RE",
    "SubjectMapper",
    "pattern_covers",
    "pattern_matches",
    "pattern_regex",
    "pattern_to_filter",
    "subject_to_topic",
    "topic_to_subject",
    "validate_pattern",
    "validate_topic",
]

MAX_LEVELS = 16
MAX_LEVEL_LENGTH = 64
LEVEL_CHARS = "A-Z a-z 0-9 - _"

_LEVEL_RULE = f"a level is 1 to {MAX_LEVEL_LENGTH} characters of {LEVEL_CHARS}"
_LEVEL = rf"[A-Za-z0-9_-]{{1,{MAX_LEVEL_LENGTH}}}"
_LEVEL_RE = re.compile(_LEVEL)
# The fast path: one regex call accepts every valid topic; only invalid input pays for the
# level-by-level diagnosis below.
TOPIC_RE = re.compile(rf"{_LEVEL}(?:/{_LEVEL}){{0,{MAX_LEVELS - 1}}}")
_PLEVEL = rf"(?:{_LEVEL}|\*)"
_PATTERN_RE = re.compile(rf"(?:{_PLEVEL}/){{0,{MAX_LEVELS - 1}}}(?:{_PLEVEL}|>)")
# Longer inputs are cut in messages so a megabyte of garbage does not become a megabyte of log.
_SHOWN = 80


def _shown(s: str) -> str:
    return repr(s if len(s) <= _SHOWN else s[: _SHOWN - 3] + "...")


def _diagnose(s: object, *, what: str) -> str | None:
    """The first problem of ``s`` as a topic (``what="topic"``) or pattern, or None."""
    if not isinstance(s, str):
        return f"{what} must be a string, got {type(s).__name__}"
    if not s:
        return f"{what} is empty; a {what} is 1 to {MAX_LEVELS} levels separated by '/', e.g. 'orders/created'"
    shown = _shown(s)
    levels = s.split("/")
    if len(levels) > MAX_LEVELS:
        return f"{what} {shown} has {len(levels)} levels; at most {MAX_LEVELS}"
    if s.startswith("/") or s.endswith("/"):
        edge = "starts" if s.startswith("/") else "ends"
        return f"{what} {shown} {edge} with '/'; remove it ('/' only separates levels)"
    last = len(levels)
    for n, level in enumerate(levels, start=1):
        if not level:
            return f"{what} {shown}: level {n} is empty; {_LEVEL_RULE}"
        if what == "pattern" and level == "*":
            continue
        if what == "pattern" and level == ">":
            if n != last:
                return (
                    f"pattern {shown}: '>' is level {n} of {last}; '>' (one or more levels) may only be the last level,"
                    " use '*' for exactly one level"
                )
            continue
        if len(level) > MAX_LEVEL_LENGTH:
            return f"{what} {shown}: level {n} has {len(level)} characters; at most {MAX_LEVEL_LENGTH}"
        if _LEVEL_RE.fullmatch(level):
            continue
        if what == "pattern" and ("*" in level or ">" in level):
            return (
                f"pattern {shown}: level {n} {_shown(level)} mixes a wildcard with other characters;"
                " a wildcard is a whole level, '*' or '>'"
            )
        if what == "topic" and level in ("*", ">"):
            return f"topic {shown}: level {n} is the wildcard {level!r}; wildcards are for patterns, a topic names one"
        bad = next(c for c in level if not _LEVEL_RE.fullmatch(c))
        pos = level.index(bad) + 1
        return f"{what} {shown}: level {n} has {bad!r} at position {pos}; {_LEVEL_RULE}"
    return None


def validate_topic(s: str) -> str | None:
    """None when ``s`` is a valid topic, else what is wrong with it and what to change.

    The one topic check of the package: callers that must refuse raise their own error with
    this message (the router's ``InvalidTopicError``, a broker adapter's ``ValueError``).
    """
    if isinstance(s, str) and TOPIC_RE.fullmatch(s):
        return None
    return _diagnose(s, what="topic")


def validate_pattern(s: str) -> str | None:
    """None when ``s`` is a valid topic pattern, else what is wrong with it and what to change."""
    if isinstance(s, str) and _PATTERN_RE.fullmatch(s):
        return None
    return _diagnose(s, what="pattern")


def pattern_matches(pattern: str, topic: str) -> bool:
    """Whether a valid ``pattern`` matches a valid ``topic``: the plain reference the router is tested against."""
    plevels = pattern.split("/")
    tlevels = topic.split("/")
    for i, plevel in enumerate(plevels):
        if plevel == ">":
            return len(tlevels) > i
        if i >= len(tlevels):
            return False
        if plevel not in ("*", tlevels[i]):
            return False
    return len(plevels) == len(tlevels)


def pattern_covers(outer: str, inner: str) -> bool:
    """Whether every topic the valid pattern ``inner`` matches is matched by the valid pattern ``outer``.

    ``orders/>`` covers ``orders/*`` and ``orders/eu/>``; ``orders/*`` does not cover ``orders/>``
    (which also matches ``orders/a/b``), and a literal level covers only itself, not ``*``.
    """
    olevels = outer.split("/")
    ilevels = inner.split("/")
    for i, olevel in enumerate(olevels):
        if olevel == ">":
            return len(ilevels) > i
        if i >= len(ilevels) or ilevels[i] == ">":
            return False
        if olevel != "*" and olevel != ilevels[i]:
            return False
    return len(olevels) == len(ilevels)


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """A regex whose ``fullmatch`` accepts the topics a valid ``pattern`` matches (for filters and Kafka)."""
    parts: list[str] = []
    for level in pattern.split("/"):
        if level == "*":
            parts.append(_LEVEL)
        elif level == ">":
            parts.append(rf"{_LEVEL}(?:/{_LEVEL})*")
        else:
            parts.append(re.escape(level))
    return re.compile("/".join(parts))


# -- topics as broker names ------------------------------------------------------------------
# A topic becomes a NATS subject or a Kafka topic name by swapping ``/`` for ``.`` behind a
# prefix; the mapping is one-to-one because a topic level never contains a dot.


def topic_to_subject(topic: str, prefix: str) -> str:
    """``orders/created`` -> ``<prefix>orders.created`` (the topic must be valid)."""
    return prefix + topic.replace("/", ".")


def subject_to_topic(subject: str, prefix: str) -> str:
    """``<prefix>orders.created`` -> ``orders/created``; ``ValueError`` outside the prefix."""
    if not subject.startswith(prefix) or len(subject) == len(prefix):
        raise ValueError(f"subject {subject!r} is not a mesh subject (prefix {prefix!r})")
    return subject[len(prefix) :].replace(".", "/")


def pattern_to_filter(pattern: str, prefix: str) -> str:
    """A topic pattern as a NATS filter subject: ``orders/*`` -> ``<prefix>orders.*``.

    NATS wildcards mean what mesh wildcards mean (``*`` one token, a final ``>`` one or more),
    so the mapping is the topic mapping; Kafka adapters translate the same pattern to a regex.
    ``ValueError`` with the reason for an invalid pattern.
    """
    problem = validate_pattern(pattern)
    if problem is not None:
        raise ValueError(problem)
    return prefix + pattern.replace("/", ".")


class SubjectMapper:
    """Topic -> subject with validation, cached: producers reuse a small set of topics.

    Validating here too (not only at admission) keeps a malformed topic from ever reaching a
    broker's wire protocol, where a space or a line break would corrupt the command: an invalid
    topic raises ``ValueError`` with the reason.
    """

    __slots__ = ("_cache", "_max_entries", "_topics", "prefix")

    def __init__(self, prefix: str, *, max_entries: int = 65_536) -> None:
        self.prefix = prefix
        self._max_entries = max_entries
        self._cache: dict[str, str] = {}
        self._topics: dict[str, str] = {}

    def subject(self, topic: str) -> str:
        subject = self._cache.get(topic)
        if subject is None:
            problem = validate_topic(topic)
            if problem is not None:
                raise ValueError(problem)
            subject = self.prefix + topic.replace("/", ".")
            if len(self._cache) >= self._max_entries:
                # Wholesale reset: cheaper than LRU bookkeeping on every hit, and rare.
                self._cache.clear()
            self._cache[topic] = subject
        return subject

    def topic(self, subject: str) -> str:
        """Subject (or Kafka topic) -> topic, cached: readers map every record they decode."""
        topic = self._topics.get(subject)
        if topic is None:
            topic = subject_to_topic(subject, self.prefix)
            if len(self._topics) >= self._max_entries:
                self._topics.clear()
            self._topics[subject] = topic
        return topic
