"""YAML to plain data, keeping where every value and key sits in the file, with ``${VAR}`` substitution.

``yaml.compose`` gives nodes with marks; this module builds the data from them itself, so it can
record positions, refuse duplicate keys (which ``safe_load`` silently resolves to the last one)
and substitute environment variables in scalar values after parsing, where no text from a
variable can ever become YAML structure.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import yaml

from meshgate.config._errors import ConfigIssue

__all__ = ["MAX_NODES", "Document", "Path", "format_path", "parse_yaml", "position_of_index"]

Path = tuple[str | int, ...]

_MERGE_TAG = "tag:yaml.org,2002:merge"
# Scalar tags a substituted unquoted value may take, as if its text had been written in the file.
_RETYPED_TAGS = frozenset(f"tag:yaml.org,2002:{t}" for t in ("int", "float", "bool", "null"))
# YAML nodes (keys, values, lists, mappings) a file may have, and values its aliases may expand
# it to ("billion laughs": an alias of a list of aliases multiplies). A rule is about 7 nodes, so
# a mesh of the loader's limit of 20,000 rules has about 150,000; composing 500,000 takes seconds.
MAX_NODES = 500_000
# PyYAML composes nested collections by recursion, so "[[[[..." thousands deep would end in a
# RecursionError; a mesh file nests about 6 deep.
_MAX_DEPTH = 64

_ENV_TOKEN = re.compile(r"\$\$\{|\$\{(?P<body>[^}]*)\}|\$\{")
_ENV_BODY = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>.*))?", re.DOTALL)

# PyYAML problems and the advice that turns them into something to change.
_YAML_HINTS = (
    ("found character '\\t'", "YAML indents with spaces only; replace the tab with spaces"),
    ("mapping values are not allowed here", "check the indentation, or quote a value that contains ': '"),
    ("expected <block end>", "check the indentation: keys of one mapping start in the same column"),
    ("found undefined alias", "define the anchor (&name) before using *name"),
    ("could not find expected ':'", "a key needs ':' after it, or quote the value"),
)


@dataclass(slots=True, kw_only=True)
class Document:
    data: object
    # Position (1-based line, column) of the node of each value, and of the key naming it.
    positions: dict[Path, tuple[int, int]] = field(default_factory=dict)
    key_positions: dict[Path, tuple[int, int]] = field(default_factory=dict)
    # Paths whose value already has an issue (e.g. an unset variable), so later checks stay quiet there.
    broken: set[Path] = field(default_factory=set)
    # Values that held ``${...}``: (the text as written, after substitution), for checks that care
    # where a value came from (a client token must be exactly one variable reference).
    substituted: dict[Path, tuple[str, str]] = field(default_factory=dict)

    def position(self, path: Path, *, key: bool = False) -> tuple[int, int]:
        """Where ``path`` is (its key when ``key``), else where its nearest ancestor is."""
        if key and path in self.key_positions:
            return self.key_positions[path]
        while path:
            if path in self.positions:
                return self.positions[path]
            path = path[:-1]
        return self.positions.get((), (1, 1))


def format_path(path: Path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def position_of_index(text: str, index: int) -> tuple[int, int]:
    """1-based line and column of the character at ``index``."""
    line = text.count("\n", 0, index) + 1
    column = index - (text.rfind("\n", 0, index) + 1) + 1
    return line, column


class _Lines:
    """Line and column of a character index, with lines ending at '\\n' as grep -n and editors count them.

    PyYAML's own marks also end a line at a lone '\\r', NEL, LS and PS (YAML 1.1), so a file with
    one of those in a comment would be given places past its last line.
    """

    __slots__ = ("_starts",)

    def __init__(self, text: str) -> None:
        self._starts = [0, *(m.end() for m in re.finditer("\n", text))]

    def at(self, index: int) -> tuple[int, int]:
        line = bisect.bisect_right(self._starts, index)
        return line, index - self._starts[line - 1] + 1

    def of(self, mark: yaml.Mark) -> tuple[int, int]:
        return self.at(mark.index)


class _TooManyNodesError(Exception):
    """More than MAX_NODES values built: what aliases (or merges) expand to; ``anchor`` the
    outermost collection being expanded again, the one to copy rather than alias."""

    def __init__(self, anchor: yaml.Node | None) -> None:
        super().__init__("too many values")
        self.anchor = anchor


class _FileTooLargeError(Exception):
    """More than MAX_NODES nodes in the file itself; ``mark`` where the count went past it."""

    def __init__(self, mark: yaml.Mark) -> None:
        super().__init__("too many nodes")
        self.mark = mark


class _Builder:
    def __init__(self, *, text: str, lines: _Lines, source: str, env: Mapping[str, str]) -> None:
        self.text = text
        self.lines = lines
        self.source = source
        self.env = env
        self.doc = Document(data=None)
        self.issues: list[ConfigIssue] = []
        self.constructor = yaml.constructor.SafeConstructor()
        self.resolver = yaml.resolver.Resolver()
        self.nodes = 0
        # The collections being built, from the root down to the current one.
        self.open: set[yaml.Node] = set()
        # Collections built so far, and those on the way down that are built again (aliased).
        self.built: set[yaml.Node] = set()
        self.again: list[yaml.Node] = []

    def issue(self, where: tuple[int, int], message: str, *, path: Path | None = None) -> None:
        self.issues.append(ConfigIssue(file=self.source, line=where[0], column=where[1], message=message))
        if path is not None:
            self.doc.broken.add(path)

    def mark(self, node: yaml.Node) -> tuple[int, int]:
        return self.lines.of(node.start_mark)

    def count(self, n: int = 1) -> None:
        self.nodes += n
        if self.nodes > MAX_NODES:
            raise _TooManyNodesError(self.again[0] if self.again else None)

    def recursive(self, node: yaml.Node, path: Path) -> None:
        self.issue(
            self.mark(node),
            f"{format_path(path) or 'the file'}: an alias refers to the collection it is in (&anchor inside"
            " itself), which has no end; copy the values instead",
            path=path,
        )

    def build(self, node: yaml.Node, path: Path) -> object:
        self.count()
        self.doc.positions[path] = self.mark(node)
        if isinstance(node, yaml.ScalarNode):
            return self.scalar(node, path)
        # An alias is the node itself, so a collection met again on its own way down is recursive.
        if node in self.open:
            self.recursive(node, path)
            return None
        self.open.add(node)
        again = node in self.built
        if again:
            self.again.append(node)
        self.built.add(node)
        try:
            if isinstance(node, yaml.MappingNode):
                return self.mapping(node, path)
            assert isinstance(node, yaml.SequenceNode)
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        finally:
            self.open.discard(node)
            if again:
                self.again.pop()

    def merged_pairs(
        self, node: yaml.MappingNode, path: Path, merging: frozenset[yaml.Node] = frozenset()
    ) -> list[tuple[yaml.Node, yaml.Node, bool]]:
        """The (key, value, explicit) pairs of a mapping with ``<<`` merges expanded; later pairs win."""
        merged: list[tuple[yaml.Node, yaml.Node, bool]] = []
        explicit: list[tuple[yaml.Node, yaml.Node, bool]] = []
        merging = merging | {node}
        for key_node, value_node in node.value:
            if key_node.tag != _MERGE_TAG:
                explicit.append((key_node, value_node, True))
                continue
            sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
            # In a list of merged mappings the first one wins, so apply them last to first.
            for source in reversed(sources):
                if not isinstance(source, yaml.MappingNode):
                    self.issue(self.mark(source), f"{format_path(path) or 'the file'}: '<<' merges only mappings")
                    continue
                if source in merging or source in self.open:
                    self.recursive(source, path)
                    continue
                pairs = self.merged_pairs(source, path, merging)
                # Merges of merges multiply like aliases of aliases: counted before they are built.
                self.count(len(pairs))
                merged.extend((k, v, False) for k, v, _ in pairs)
        return merged + explicit

    def mapping(self, node: yaml.MappingNode, path: Path) -> dict[str, object]:
        result: dict[str, object] = {}
        first: dict[str, tuple[int, int]] = {}
        for key_node, value_node, explicit in self.merged_pairs(node, path):
            where = self.mark(key_node)
            if not isinstance(key_node, yaml.ScalarNode):
                self.issue(
                    where, f"{format_path(path) or 'the file'}: a key must be a plain name, not a list or mapping"
                )
                continue
            key = str(key_node.value)
            child = (*path, key)
            if explicit and key in first:
                line = first[key][0]
                self.issue(where, f"{format_path(child)}: duplicate key '{key}' (first at line {line}); keep one")
            if explicit:
                first[key] = where
            self.doc.key_positions[child] = where
            result[key] = self.build(value_node, child)
        return result

    def scalar(self, node: yaml.ScalarNode, path: Path) -> object:
        try:
            value = self.constructor.construct_object(node)
        except yaml.constructor.ConstructorError as exc:
            self.issue(self.mark(node), f"{format_path(path) or 'the file'}: {exc.problem}; remove the tag", path=path)
            return None
        except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError):
            # SafeConstructor trusts an explicit tag: '!!int x', '!!bool', '!!timestamp' fail in
            # int(), a dict lookup, a regex match that is None...
            tag = node.tag.replace("tag:yaml.org,2002:", "!!")
            self.issue(
                self.mark(node),
                f"{format_path(path) or 'the file'}: {node.value[:40]!r} is not a valid {tag}; fix the value"
                " or remove the tag",
                path=path,
            )
            return None
        if isinstance(value, str):
            if "$" in value:
                return self.substitute(node, value, path)
            return value
        if value is None or isinstance(value, bool | int | float):
            return value
        # Timestamps, binary and sets have no use in a mesh file: keep the text as written.
        return str(node.value)

    def token_position(self, node: yaml.ScalarNode, token: str, start: int) -> tuple[tuple[int, int], int]:
        """Where ``token`` is in the file, searching the node's source text from ``start``."""
        raw_start = node.start_mark.index
        raw = self.text[raw_start : node.end_mark.index]
        at = raw.find(token, start)
        if at < 0:
            # An escaped quoted scalar does not hold the token verbatim: point at the value.
            return self.mark(node), start
        return self.lines.at(raw_start + at), at + len(token)

    def substitute(self, node: yaml.ScalarNode, value: str, path: Path) -> object:
        out: list[str] = []
        pos = 0
        search = 0
        failed = False
        for m in _ENV_TOKEN.finditer(value):
            out.append(value[pos : m.start()])
            pos = m.end()
            token = m.group(0)
            where, search = self.token_position(node, token, search)
            if token == "$${":
                out.append("${")
                continue
            body = m.group("body")
            at = f"{format_path(path)}: "
            if body is None:
                self.issue(where, f"{at}'${{' is not closed by '}}'; write ${{NAME}}, or $${{ for a literal ${{")
                failed = True
                continue
            parsed = _ENV_BODY.fullmatch(body)
            if parsed is None:
                self.issue(
                    where,
                    f"{at}'{token}' is not a variable reference; write ${{NAME}} or ${{NAME:-default}}"
                    " (NAME of A-Z a-z 0-9 _), or $${ for a literal ${",
                )
                failed = True
                continue
            name, default = parsed.group("name"), parsed.group("default")
            if default is not None and "${" in default:
                self.issue(where, f"{at}'{token}...': a default cannot hold another ${{...}}; use a plain default")
                failed = True
                continue
            current = self.env.get(name)
            if default is not None:
                # Shell semantics: ':-' also replaces a variable that is set but empty.
                out.append(current if current else default)
            elif current is not None:
                out.append(current)
            else:
                self.issue(
                    where,
                    f"{at}environment variable {name} is not set; set it, or give a default: ${{{name}:-value}}",
                )
                failed = True
        out.append(value[pos:])
        if failed:
            self.doc.broken.add(path)
            return value
        text = "".join(out)
        self.doc.substituted[path] = (value, text)
        if node.style is None and text == value:
            return text
        if node.style is None:
            # An unquoted value takes the type its text would have in place (6 -> int, true -> bool),
            # but only a scalar type: "{x: 1}" or "a\nb: c" stay plain strings.
            tag = self.resolver.resolve(yaml.ScalarNode, text, (True, False))  # type: ignore[no-untyped-call]
            if tag in _RETYPED_TAGS:
                return self.constructor.construct_object(yaml.ScalarNode(tag, text))
        return text


class _Loader(yaml.SafeLoader):
    """The safe loader with a bound on nesting, refused as a YAML error at the collection too deep."""

    _depth = 0
    _nodes = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        # Counted as composed, aliases aside (the builder bounds what they expand to): a file of
        # millions of tiny values is refused at the place it passes the limit, not after.
        if not self.check_event(yaml.AliasEvent):
            self._nodes += 1
            if self._nodes > MAX_NODES:
                raise _FileTooLargeError(self.peek_event().start_mark)  # type: ignore[no-untyped-call]
        if self._depth >= _MAX_DEPTH and self.check_event(yaml.CollectionStartEvent):
            mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
            raise yaml.composer.ComposerError(
                None,
                None,
                f"lists and mappings nest more than {_MAX_DEPTH} deep here; a mesh file needs far fewer",
                mark,
            )
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _yaml_error_message(exc: yaml.MarkedYAMLError, lines: _Lines) -> str:
    problem = exc.problem or "invalid YAML"
    if "another document" in problem:
        return "invalid YAML: a second document starts here ('---'); a mesh file is one document"
    message = f"invalid YAML: {problem}"
    if exc.context and exc.context_mark is not None and exc.context_mark is not exc.problem_mark:
        line, column = lines.of(exc.context_mark)
        message += f" ({exc.context} at line {line}, column {column})"
    for needle, hint in _YAML_HINTS:
        if needle in problem:
            message += f"; {hint}"
            break
    return message


def parse_yaml(text: str, *, source: str, env: Mapping[str, str]) -> tuple[Document | None, list[ConfigIssue]]:
    """The document of ``text`` and its issues; None when the text is not YAML at all."""
    lines = _Lines(text)
    try:
        root = yaml.compose(text, Loader=_Loader)
    except _FileTooLargeError as exc:
        line, column = lines.of(exc.mark)
        message = (
            f"the file has more than {MAX_NODES} YAML nodes (keys, values, lists and mappings) by here;"
            " a mesh file of 20000 rules has about 150000: look for a generated or pasted block"
        )
        return None, [ConfigIssue(file=source, line=line, column=column, message=message)]
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = lines.of(mark) if mark is not None else (0, 0)
        return None, [ConfigIssue(file=source, line=line, column=column, message=_yaml_error_message(exc, lines))]
    except yaml.reader.ReaderError as exc:
        line, column = lines.at(exc.position)
        char = chr(exc.character) if isinstance(exc.character, int) else exc.character
        message = (
            f"invalid character {char!r} (U+{ord(char):04X}) in YAML; remove it or write it escaped in a quoted string"
        )
        return None, [ConfigIssue(file=source, line=line, column=column, message=message)]
    builder = _Builder(text=text, lines=lines, source=source, env=env)
    if root is None:
        return builder.doc, []
    try:
        builder.doc.data = builder.build(root, ())
    except _TooManyNodesError as exc:
        # The file itself has at most MAX_NODES nodes (see _Loader), so aliases made the rest.
        message = f"aliases (*name) and merges (<<) expand the file to more than {MAX_NODES} values"
        line, column = 1, 1
        if exc.anchor is not None:
            line, column = builder.mark(exc.anchor)
            message += (
                ": the anchored collection here is used again and again, with aliases inside it multiplying"
                ' ("billion laughs"); write the values out, or alias fewer levels'
            )
        else:
            message += "; write the values out, or use fewer aliases"
        return None, [ConfigIssue(file=source, line=line, column=column, message=message)]
    return builder.doc, builder.issues
