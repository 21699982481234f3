"""`%%icl`: in-context learning — a prompt template plus k demonstrations, scored or generated.

    %%icl --model smollm2 --data test_df --demos train_df --shots 8 --labels negative,positive
    Review: {sentence}
    Sentiment: {label}

With `--labels`, each label's log-likelihood after the prompt comes from
batched forward passes (no generation); the demonstrations' KV cache is
computed once and reused by every query, and the scores are calibrated
against content-free queries (`--no-calibrate` for raw ones). Without labels
the model generates, streamed into the cell. Templates separated by `---`
lines are all run on the same rows and demonstrations and ranked (hard-prompt
tuning). `--index NAME` fills `{context}` with the query's top chunks
(retrieval-augmented prompts); `--chat` lays the prompt out in the model's
chat template.

    options.py  the options        inputs.py  rows, answer slot, labels, demonstrations
    prompts.py  templates, layout  run.py     one run: score / generate, stop, Result
    result.py   Result and metrics method.py  the Method the registry finds
"""
from .method import IclMethod
from .options import IclOptions
from .result import IclResult, classification_metrics, generation_metrics

__all__ = ["IclMethod", "IclOptions", "IclResult", "classification_metrics", "generation_metrics"]
