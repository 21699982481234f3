"""Figures as PNG bytes, made without pyplot so the user's backend is untouched."""
from __future__ import annotations

import base64
import io


def new_figure(width: float = 6.0, height: float = 3.6):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def to_png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def png_html(png: bytes, alt: str = "") -> str:
    data = base64.b64encode(png).decode()
    return f'<img alt="{alt}" src="data:image/png;base64,{data}"/>'
