"""A sequence classifier: a transformer base, a pooling, a linear head.

Why not `AutoModelForSequenceClassification`: for BERT-like encoders it
classifies from the pooler over [CLS], which sentence encoders such as
MiniLM were never trained for (their embedding is the mean of token states).
Pooling here is the same as `%probe`'s (mean for encoders, last token for
decoders), so a head-only fine-tune trains on exactly the features the probe
caches, and the frozen base runs once.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from ..engine.features import pool

HEAD_FILE = "classifier_head.safetensors"
META_FILE = "llm_magics_classifier.json"


class SequenceClassifier(nn.Module):
    def __init__(self, base: nn.Module, num_labels: int, pooling: str, dropout: float = 0.1):
        super().__init__()
        self.base = base
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(base.config.hidden_size, num_labels)
        self.config = base.config

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.base(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        # Prompt-learning adapters prepend virtual tokens: pool over the real ones only.
        hidden = hidden[:, hidden.shape[1] - input_ids.shape[1]:]
        return pool(hidden, attention_mask, self.pooling)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor | None = None,
                **_) -> SequenceClassifierOutput:
        pooled = self.features(input_ids, attention_mask)
        logits = self.head(self.dropout(pooled.to(self.head.weight.dtype)))
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)

    def save(self, folder: Path, tokenizer=None, label_names: list[str] | None = None) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.base.save_pretrained(folder, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()},
                  str(folder / HEAD_FILE))
        (folder / META_FILE).write_text(json.dumps({"pooling": self.pooling, "num_labels": self.head.out_features,
                                                    "label_names": label_names}, indent=2))
        return folder

    @classmethod
    def load(cls, folder: Path, dtype: torch.dtype = torch.float32) -> tuple["SequenceClassifier", dict]:
        from transformers import AutoModel
        folder = Path(folder)
        meta = json.loads((folder / META_FILE).read_text())
        base = AutoModel.from_pretrained(folder, dtype=dtype)
        model = cls(base, meta["num_labels"], meta["pooling"])
        model.head.load_state_dict(load_file(str(folder / HEAD_FILE)))
        return model.eval(), meta


def is_saved_classifier(folder: Path) -> bool:
    return (Path(folder) / META_FILE).exists()
