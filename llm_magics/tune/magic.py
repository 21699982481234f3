"""The `%llm tune` and `%llm sweep` commands (magics.py hands them their tokens)."""
from __future__ import annotations

from ..errors import UsageError
from ..progress import in_kernel


def tune_magic(shell, tokens: list[str]):
    """`%llm tune [METHOD]`: the panel, opened on METHOD."""
    if len(tokens) > 1:
        raise UsageError(f"%llm tune takes at most a method name, got {' '.join(tokens)!r}")
    from .panel import TunePanel
    return TunePanel(shell.user_ns if shell else {}, tokens[0] if tokens else None)


def sweep_magic(shell, tokens: list[str]):
    """`%llm sweep METHOD <options> --grid SPEC [--metric M] [--random N] [--out NAME]`: started at once,
    shown as a live leaderboard (widgets) or one line per point (text)."""
    from . import sweep as sweep_mod
    from .view import SweepView, TextSweepView
    widgets = in_kernel() and _widgets_available()
    sweep, options = sweep_mod.from_line(tokens, shell.user_ns if shell else {},
                                         progress_mode="none" if widgets else None)
    view = SweepView(sweep) if widgets else TextSweepView(sweep)
    sweep.start()
    if options.out:
        shell.user_ns[options.out] = sweep
    return view if widgets else (None if options.out else sweep)


def _widgets_available() -> bool:
    try:
        import ipywidgets  # noqa: F401
        return True
    except ImportError:
        return False
