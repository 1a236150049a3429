"""Config errors: every problem of a file, each with its place in the file."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["ConfigError", "ConfigIssue"]


@dataclass(frozen=True, slots=True, kw_only=True, order=True)
class ConfigIssue:
    file: str
    # 1-based; 0 when the problem has no place in the file (it cannot be read at all).
    line: int
    column: int
    message: str

    def __str__(self) -> str:
        if self.line <= 0:
            return f"{self.file}: {self.message}"
        return f"{self.file}:{self.line}:{self.column}: {self.message}"


class ConfigError(Exception):
    """A mesh file that cannot be used; ``errors`` lists every problem found, in file order."""

    def __init__(self, errors: Iterable[ConfigIssue]) -> None:
        self.errors: tuple[ConfigIssue, ...] = tuple(errors)
        super().__init__("\n".join(str(issue) for issue in self.errors) or "invalid mesh config")

    @property
    def lines(self) -> tuple[str, ...]:
        """One ``FILE:LINE:COL: message`` line per problem."""
        return tuple(str(issue) for issue in self.errors)
