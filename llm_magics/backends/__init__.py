"""Where `%%icl` gets its log-likelihoods and generations from.

Both backends take text, not token ids: a request is (prefix, query), where
the prefix is the demonstrations shared by many queries and the query is one
row rendered up to its answer slot. `score` returns the summed log-probability
of each continuation (a label's verbalizer) after prefix + query; `generate`
continues prefix + query.

- `LocalBackend`: a transformers causal LM; the prefix's KV cache is computed
  once and reused (engine/scoring.py).
- `OpenAIBackend`: any OpenAI-compatible HTTP endpoint (completions with
  echo + logprobs for scoring; completions or chat completions to generate).
"""
from .base import Backend, GenerateSettings, ScoreTable
from .local import LocalBackend
from .openai import OpenAIBackend

__all__ = ["Backend", "GenerateSettings", "ScoreTable", "LocalBackend", "OpenAIBackend"]
