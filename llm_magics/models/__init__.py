"""Resolve `--model` names and load models once per session."""
from .loader import (Loaded, architecture_kind, cached, count_parameters, free, hold, load_model,
                     load_tokenizer, quiet)
from .sources import EMBEDDED, ModelSource, installed, resolve, where

__all__ = ["Loaded", "ModelSource", "EMBEDDED", "resolve", "load_model", "load_tokenizer", "cached",
           "free", "hold", "quiet", "architecture_kind", "count_parameters", "installed", "where"]
