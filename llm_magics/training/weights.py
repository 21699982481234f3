"""Trained weights stay on disk: a kept Result does not pin a model. `TrainedWeights` says how a Result
builds its model again; the newest KEEP_LOADED Results keep theirs in memory, older ones release it."""
from __future__ import annotations

import ctypes
import gc
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..engine import checkpoint
from ..engine.loop import Outcome
from ..models import cached, load_model
from ..models.classifier import SequenceClassifier
from .phases import load_phase_weights
from .steps import TrainingRun

KEEP_LOADED = 2   # trained models kept in memory across Results; older ones are built again from disk on use
_LOADED: "OrderedDict[int, weakref.ref]" = OrderedDict()
LOADED_LOCK = threading.RLock()   # held while a Result builds its model again, and while the kept set changes


@dataclass
class TrainedWeights:
    """How a training Result builds its model again: the base as the run loaded it (the session's
    shared copy when the run trained on it frozen), the classification head around it, then the
    trained weights from `folder` (checkpoint-best, or trained/), checked as every checkpoint is."""
    source: Any
    head: str
    device: str
    dtype: torch.dtype
    shared: bool
    folder: Path
    classifier: tuple[int, str, float] | None = None   # labels, pooling, dropout
    trust_remote_code: bool = False
    earlier: tuple[Path, ...] = ()   # a run of several phases: what the earlier phases trained, loaded first

    def build(self):
        loaded = load_model(self.source, self.head, torch.device(self.device), self.dtype, fresh=not self.shared,
                            trust_remote_code=self.trust_remote_code)
        model = loaded.model
        if self.classifier is not None:
            labels, pooling, dropout = self.classifier
            model = SequenceClassifier(loaded.model, labels, pooling, dropout).to(loaded.device)
            model.head.float()
        for path in self.earlier:
            load_phase_weights(model, path)
        checkpoint.load_weights(model, self.folder, todo="the trained weights cannot be loaded again; train the "
                                                          "run again")
        model.eval()
        return model


def keep_loaded(result) -> None:
    """`result` (a TrainedResult) was just used: keep its model; release the least recently used beyond
    KEEP_LOADED."""
    evicted = False
    with LOADED_LOCK:
        _LOADED.pop(id(result), None)
        _LOADED[id(result)] = weakref.ref(result)
        while len(_LOADED) > KEEP_LOADED:
            _, ref = _LOADED.popitem(last=False)
            old = ref()
            if old is not None and old._weights is not None and old._model is not None:
                old._model, evicted = None, True
    if evicted:
        _return_memory()


def _return_memory() -> None:
    gc.collect()
    try:   # glibc keeps freed heap pages; give them back so the process's memory falls
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def trained_weights(run: TrainingRun, outcome: Outcome, model) -> TrainedWeights | None:
    """Where the trained model can be rebuilt from, writing its trainable weights when no checkpoint
    holds them; None when this model cannot be rebuilt that way (the Result keeps it in memory)."""
    loaded = run.loaded
    if loaded is None or run.loop_hooks.get("weights_state") is not None \
            or getattr(loaded.model, "hf_quantizer", None) is not None:
        return None
    if isinstance(model, SequenceClassifier) and model.base is loaded.model:
        head = (model.head.out_features, model.pooling, float(model.dropout.p))
    elif model is loaded.model:
        head = None
    else:
        return None
    folder = outcome.weights
    if folder is None:
        folder = checkpoint.save_weights(model, run.ctx.run_dir / "trained").parent
    return TrainedWeights(loaded.source, loaded.head, str(loaded.device), loaded.dtype,
                          shared=any(c is loaded for c in cached()), folder=Path(folder), classifier=head,
                          trust_remote_code=bool(getattr(run.options, "trust_remote_code", False)),
                          earlier=tuple(run.carried))
