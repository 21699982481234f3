"""The colours our HTML views use: JupyterLab's theme variables, today's colours as fallbacks.

Inside JupyterLab the variables follow the theme (light, dark, high contrast); elsewhere
(nbconvert, classic Notebook, a browser without them) the fallback is used. A highlight is a
tint of the theme's colour over whatever background the theme has, so its text stays readable.
"""
from __future__ import annotations

MUTED = "var(--jp-content-font-color2, #555)"        # secondary text
FAINT = "var(--jp-content-font-color3, #888)"        # ids, hints, captions
CODE_BACKGROUND = "var(--jp-layout-color2, #f6f6f6)"  # a line to copy; text keeps the theme's colour
BORDER = "var(--jp-border-color2, #ddd)"
OK = "var(--jp-success-color1, #2a7)"
ERROR = "var(--jp-error-color1, #c33)"
WARN = "var(--jp-warn-color0, #a60)"                 # notes and warnings
STOPPED = "var(--jp-warn-color1, #c80)"
RUNNING = "var(--jp-brand-color1, #37c)"
# The best row: a translucent tint (readable under light and dark text); where color-mix is not
# understood the plain fallback applies.
BEST_ROW = ("background:#e3f4e6;background:color-mix(in srgb, var(--jp-success-color1, #2a7) 22%, transparent);"
            "font-weight:bold")

STATUS = {"ok": OK, "done": OK, "failed": ERROR, "error": ERROR, "stopped": STOPPED, "running": RUNNING,
          "skipped": FAINT, "waiting": FAINT}


def status_colour(status: str) -> str:
    return STATUS.get(status, MUTED)


def scroll_box(inner: str, extra_style: str = "") -> str:
    """A table that scrolls sideways inside its own box instead of being cut by a narrow page."""
    return f"<div class='llm-magics-scroll' style='overflow-x:auto;max-width:100%;{extra_style}'>{inner}</div>"
