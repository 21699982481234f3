"""Widget-driven tuning: `%llm tune` (a form for every method) and `%llm sweep` (grids, leaderboards)."""
from __future__ import annotations

from .form import Field, fields, magic_line, parse
from .sweep import Sweep, from_line as sweep_from_line
from . import search as _search   # noqa: F401 - joins --search tpe (Optuna is imported only when used)

__all__ = ["Field", "fields", "magic_line", "parse", "Sweep", "sweep_from_line", "TunePanel"]


def __getattr__(name):
    if name == "TunePanel":  # ipywidgets is imported only when a panel is made
        from .panel import TunePanel
        return TunePanel
    raise AttributeError(name)
