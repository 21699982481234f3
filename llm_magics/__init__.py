"""llm-magics: adapt a language model to your task from notebook cells.

    %load_ext llm_magics
    %llm
    %probe --model minilm --data train_df --test test_df

Everything a magic does is also plain Python: `llm_magics.api`.
"""
from __future__ import annotations

from .version import __version__ as __version__


def load_ipython_extension(ipython) -> None:
    """`%load_ext llm_magics`: registers `%llm` and one magic per method (methods import on first use)."""
    from .magics import load
    load(ipython)


def unload_ipython_extension(ipython) -> None:
    from .magics import unload
    unload(ipython)


def __getattr__(name: str):
    if name == "api":  # lazy, so `%load_ext` does not import the engine
        import importlib
        return importlib.import_module(".api", __name__)
    raise AttributeError(name)
