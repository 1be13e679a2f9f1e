"""The error hierarchy of :mod:`registry`."""

from __future__ import annotations


class RegistryError(Exception):
    """Root of every error raised by :mod:`registry`."""


class QuestionError(RegistryError):
    """A recognition question names an unknown code, type or mode, or a malformed date."""


class DatasetError(RegistryError):
    """A registry dataset is invalid. ``problems`` lists every problem with its JSON path."""

    def __init__(self, problems: list[str], source: str = "dataset") -> None:
        self.problems = list(problems)
        self.source = source
        shown = "; ".join(self.problems[:5])
        more = f" (and {len(self.problems) - 5} more)" if len(self.problems) > 5 else ""
        super().__init__(f"invalid registry {source}: {shown}{more}")
