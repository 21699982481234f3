"""`%%icl`'s options and the checks made before anything loads."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...backends.openai import key_env_problem, url_problem
from ...common_options import ModelOptions, RunOptions, SeedOptions
from ...errors import UsageError
from ...options import new_tokens, non_negative, option, positive
from ...retrieval.store import name_problem

STREAM_ROWS = 20   # answers streamed into the cell; the rest are in result.predictions


def unescape(text: str) -> str:
    """`\\n` and `\\t` typed on a magic line mean a newline and a tab."""
    return text.replace("\\n", "\n").replace("\\t", "\t")


def top_p_check(value) -> str | None:
    return None if value is None or 0 < value <= 1 else f"must be in (0, 1], got {value}"


@dataclass(kw_only=True)
class IclOptions(RunOptions, ModelOptions, SeedOptions):
    template: str | None = option(None, "the prompt template (the cell body): {field} placeholders filled from "
                                        "the data; templates separated by '---' lines are compared", metavar="TEXT")
    model: str | None = option("smollm2", "a causal LM: alias, local folder or hub id; with --api-base, the model "
                                          "name the endpoint serves")
    data: Any = option(None, "the rows to run the prompt on: a variable, a file or a dataset name", metavar="DATA")
    demos: Any = option(None, "the demonstration pool (same kinds as --data)", metavar="DATA")
    shots: int | None = option(None, "demonstrations per prompt (default: 4 with --demos, else 0)",
                               check=non_negative)
    select: str = option("auto", "how demonstrations are picked: random (seeded), balanced per label, similar "
                                 "(the query's nearest neighbours); auto: balanced with --labels, else random",
                         choices=("auto", "random", "balanced", "similar"))
    labels: list[str] | None = option(None, "verbalizers: score each label instead of generating, e.g. "
                                            "negative,positive (or 0=negative,1=positive)", metavar="A,B,...")
    label: str | None = option(None, "the template's answer slot and the column of gold answers (default: "
                                     "{label}, or the one label column of the data that the template names)",
                               metavar="FIELD")
    calibrate: bool = option(True, "contextual calibration of label scores: divide out the label prior the prompt "
                                   "induces with content-free queries (SST-2, smollm2, 8 shots: 0.750 vs 0.715 raw; "
                                   "benchmarks/icl_defaults.py); --no-calibrate for raw log-likelihoods")
    chat: bool = option(False, "lay the prompt out in the model's chat template: each demonstration a user turn and "
                               "its answer an assistant turn, the query the last user turn (SST-2, smollm2: scored "
                               "below plain prompts, and better with --no-calibrate)")
    score: str = option("sum", "a label's log-likelihood: sum over its tokens, or mean per token",
                        choices=("sum", "mean"))
    zero_shot: bool = option(True, "with --labels and --shots > 0, also score without demonstrations (beside)")
    separator: str = option("\\n\\n", "text between demonstrations (\\n and \\t are understood)")
    limit: int | None = option(None, "only the first N rows of --data", check=positive)
    seed: int = option(0, "seed for picking demonstrations and for sampling")
    max_tokens: int = option(32, "generation: most tokens per answer", check=new_tokens)
    temperature: float = option(0.0, "generation: 0 is greedy, above 0 samples", check=non_negative)
    top_p: float = option(1.0, "generation: nucleus sampling mass", check=top_p_check)
    stop: list[str] | None = option(None, "generation: stop strings (default: a newline; 'none' for none)",
                                    metavar="S,S")
    stream: bool = option(True, f"stream generated answers into the cell (the first {STREAM_ROWS})")
    index: str | None = option(None, "fill {context} with the top chunks of this index (%index build)",
                               check=name_problem, metavar="NAME")
    top_k: int = option(4, "chunks retrieved into {context}", check=positive)
    query_field: str | None = option(None, "the field that is the query for --index and --select similar "
                                           "(default: the first template field that is a data column)",
                                     metavar="FIELD")
    embed_model: str = option("minilm", "encoder for --select similar")
    api_base: str | None = option(None, "an OpenAI-compatible endpoint (http://host:port/v1) instead of a local "
                                        "model", check=url_problem, metavar="URL")
    api_key_env: str = option("OPENAI_API_KEY", "the environment variable holding the API key (read, never stored)",
                              check=key_env_problem, metavar="NAME")
    api_style: str = option("completions", "the endpoint to use: completions (scores and generates) or chat "
                                           "(generates)", choices=("completions", "chat"))
    api_timeout: float = option(10.0, "seconds to wait for the API before giving up", check=positive)
    batch_tokens: int | None = option(None, "new tokens per forward batch (default: 1024 on CPU)", check=positive)

    def validate(self):
        if self.template is None or not self.template.strip():
            raise UsageError("%%icl needs a prompt template in the cell body, e.g. "
                             "'Review: {text}\\nSentiment: {label}'")
        if self.data is None:
            raise UsageError("--data is required: the rows to run the prompt on (a variable, a file or a dataset)")
        if self.api_base and self.api_style == "chat" and self.labels:
            raise UsageError("--labels scores log-likelihoods, which chat endpoints do not return; "
                             "use --api-style completions, or drop --labels to generate")
        if self.api_base and self.chat:
            raise UsageError("--chat applies a local model's chat template; with --api-base, use --api-style chat")

    @property
    def shots_used(self) -> int:
        return self.shots if self.shots is not None else (4 if self.demos is not None else 0)

    @property
    def scoring(self) -> bool:
        return self.labels is not None

    @property
    def calibrating(self) -> bool:
        return self.calibrate and self.scoring
