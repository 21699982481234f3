"""The public base of training methods: `%finetune`, `%lora` and plugins build on it.

A training method subclasses `ClassifierTrainingMethod` (a pooled classifier on an
encoder or a decoder), `CausalLMTrainingMethod` (instruction tuning of a causal LM,
loss on responses only) or `TrainingMethod` (either, chosen by the `--task` option),
and overrides only what makes it itself:

    class BitFit(ClassifierTrainingMethod):
        name = "bitfit"
        default_lr = 1e-3
        Options = ClassifierTrainingOptions

        def select_trainable(self, model, options):
            return lambda name, param: name.endswith("bias")

`run()` does the whole set-up: the data (the shared `--data/--validation/--test`
options), the model (fp32, a fresh copy the run may change), which parameters
train, `hold()` (so `%llm free` releases it), the live progress and its end,
`--resume`, the engine (`engine.loop.TrainLoop`), and the Result — a
`TrainedResult` that predicts or generates with the trained model.

Hooks, each optional:

- `select_trainable(model, options)` → a predicate `(name, param) → bool`, or None
  to keep what the model says. A classifier's new head always trains.
- `default_lr` (class attribute) or `peak_lr(options)`: the learning rate when
  the user gives no `--lr`.
- `param_groups(model, options)` → `[(name, predicate, lr), ...]`: per-group
  peak learning rates (the rest trains at the peak lr).
- `resume_keys`: the options that must match for `--resume` to continue a run; `resume_values(options)`: their
  values as saved and checked (default: the `resume_keys` options and the peak lr).
- `phases(options)` → `[Phase(name, options={...}, head_only=...), ...]`: train in phases, one after another,
  each from the weights the ones before it trained (LP-FT: a head-only phase, then all layers). One live view,
  one Stop (a stopped phase ends the run), `--resume` continues the phase it stopped in, then the rest. A method
  of several phases runs in one process: `--devices` is refused in one line.
- `title(options, source)`, `plan_label(options)`: what the live view says.
- `prepare_data(run)`: the data (default: the shared data options).
- `prepare(run)`: build the model, tokenizer and engine task yourself (`%lora`
  wraps the base with an adapter here); `finish(run, result)`: after training.
- `train(run) -> Outcome`: the trainer (default: the engine's loop).
- `build_result(run, outcome)`: the Result (default: `training_result`); `end_metrics(result)`: what the
  live view shows as it ends (default: the test metrics).
- `run_class`: a `TrainingRun` subclass holding the state the method's hooks share; `prepare` may set
  `run.answer` to return a Result without training.

The package, one module per concern: `options` (the bundles and option classes), `steps` (`TrainingRun`
and the pieces `run()` is made of), `run` (`TrainingMethod` and its hooks), `result` (`TrainedResult` and
how it is built), `weights` (a Result's model rebuilt from disk), `resume` (`--resume`),
`head` (the head-only fast path on `%probe`'s feature cache), `phases` (weights handed from one phase to the next).
The dtype rules: `train_dtype(device, option)` (what a run computes in under autocast, one rule for every trainer)
and `pick_dtype(device, option)` (the inference dtype `%probe` and the head-only path read a frozen base in).
Import from `llm_magics.training`: these names are the public surface.
"""
from __future__ import annotations

from ..engine.device import pick_dtype, train_dtype
from ..engine.loop import Outcome, TrainConfig
from .head import head_features, prepare_head_only
from .options import (TRAINING_RESUME_KEYS, CausalLMTrainingOptions, ClassificationOptions,
                      ClassifierTrainingOptions, ParamGroup, Phase, Predicate, SftOptions, TaskOptions)
from .result import TrainedResult, close_run, plot_history, result_fields, training_result
from .resume import check_resumable, find_checkpoint, save_run_options
from .run import CausalLMTrainingMethod, ClassifierTrainingMethod, TrainingMethod
from .steps import TrainingRun, classifier, describe_run, prepare_data, train_config
from .weights import KEEP_LOADED, TrainedWeights

__all__ = ["TrainingMethod", "ClassifierTrainingMethod", "CausalLMTrainingMethod", "TrainingRun",
           "ClassificationOptions", "SftOptions", "TaskOptions", "ClassifierTrainingOptions",
           "CausalLMTrainingOptions", "TrainedResult", "TrainConfig", "Outcome", "TRAINING_RESUME_KEYS",
           "training_result", "result_fields", "prepare_data", "train_config", "describe_run", "close_run",
           "plot_history", "classifier", "TrainedWeights", "KEEP_LOADED",
           "find_checkpoint", "check_resumable", "save_run_options", "Predicate", "ParamGroup",
           "Phase", "prepare_head_only", "head_features", "pick_dtype", "train_dtype"]
