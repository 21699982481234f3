"""User mistakes versus internal bugs.

A user mistake raises `UsageError`: IPython prints its one line without a
traceback, yet the cell still fails, so papermill and CI notice. Everything
else keeps its traceback.
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable

try:
    # IPython shows its own UsageError (exactly that class, not a subclass) as
    # one line; the engine raises it without needing a running shell.
    from IPython.core.error import UsageError
except ImportError:  # pragma: no cover - IPython is a dependency
    class UsageError(Exception):
        """What was wrong and what would be right, in one line."""


def closest(word: str, choices: Iterable[str]) -> str | None:
    """The choice nearest to `word`, or None when none is near."""
    matches = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return matches[0] if matches else None


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean X?)' when a choice is near, else the valid choices."""
    choices = sorted(choices)
    near = closest(word, choices)
    if near:
        return f"; did you mean {near}?"
    return f"; valid: {', '.join(choices)}" if choices else ""
