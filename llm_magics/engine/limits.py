"""How many tokens one row may hold for a model, checked before any work starts.

A `--max-length` beyond the model's position table would tokenize, batch and
then fail inside the first forward pass with a tensor-size RuntimeError (BERT's
512 positions, GPT-2's 1024). The rule, the same wherever a tokenizer and a
model are paired for a run (tasks/classify.py, tasks/causal_lm.py,
engine/features.py): **clamp to the model's limit, with a note saying so.**
A default that the model cannot reach is clamped the same way.

The limit is the smallest of the config's position count
(`max_position_embeddings`, `n_positions`, …) and the tokenizer's
`model_max_length` (RoBERTa-style models reserve positions for padding, which
only the tokenizer's figure accounts for). Without a model object the config is
read from the tokenizer's folder.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from ..errors import UsageError

POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")
_UNSET = 10 ** 9  # transformers' "no limit" for model_max_length is ~1e30


def _config_limit(config) -> int | None:
    """The smallest position count a config (an object or its JSON dict) declares, or None."""
    if config is None:
        return None
    get = config.get if isinstance(config, dict) else (lambda key: getattr(config, key, None))
    found = [get(key) for key in POSITION_KEYS]
    found = [int(v) for v in found if isinstance(v, int) and not isinstance(v, bool) and v > 0]
    return min(found) if found else None


def _config_of(model):
    """The config of a model or of a wrapper of one (SequenceClassifier and PEFT models carry it)."""
    config = getattr(model, "config", None)
    return None if config is None or isinstance(config, dict) else config


def config_position_limit(config) -> int | None:
    """The positions a model's config (an object or its JSON dict) declares, or None."""
    return _config_limit(config)


def folder_position_limit(folder: str | Path) -> int | None:
    """The positions a model folder's config.json declares, read before any weight loads (None for a hub
    id or a folder without one)."""
    return _config_limit(_read_config(Path(str(folder))))


def _folder_config(tokenizer) -> dict | None:
    return _read_config(Path(str(getattr(tokenizer, "name_or_path", "") or "")))


def _read_config(folder: Path) -> dict | None:
    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8")) if folder.is_dir() else None
    except (OSError, ValueError):
        return None


def position_limit(tokenizer, model=None) -> int | None:
    """The most tokens a row may hold for this model, or None when nothing says."""
    limits = []
    config_limit = _config_limit(_config_of(model)) if model is not None else None
    if config_limit is None:
        config_limit = _config_limit(_folder_config(tokenizer))
    if config_limit:
        limits.append(config_limit)
    tok = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok, int) and 0 < tok < _UNSET:
        limits.append(tok)
    return min(limits) if limits else None


def fit_max_length(max_length: int, tokenizer, model=None, *, notes: list[str] | None = None,
                   say: Callable[[str], None] | None = None, flag: str = "--max-length") -> int:
    """`max_length`, clamped to the model's limit; the note goes to `notes` (or `say`) when it was."""
    limit = position_limit(tokenizer, model)
    if limit is None or max_length <= limit:
        return max_length
    note = f"{flag} {max_length} is beyond what the model reads ({limit} tokens): rows are cut at {limit}"
    if notes is not None and note not in notes:
        notes.append(note)
    if say is not None:
        say(note)
    return limit


def check_generation(max_new_tokens: int, tokenizer, model=None, *, flag: str = "--max-new-tokens") -> None:
    """Refuse (one line naming both numbers) a generation length the model's context cannot hold: the prompt
    needs at least one position beside the new tokens. Nothing said when the model declares no limit."""
    limit = position_limit(tokenizer, model)
    if limit is not None and not max_new_tokens < limit:
        raise UsageError(f"{flag} {max_new_tokens} is not below the model's context of {limit} tokens "
                         f"(the prompt needs room too): use at most {limit - 1}, far fewer for long prompts")
