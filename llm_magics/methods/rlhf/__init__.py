"""`%rlhf`: preference data → a reward model → policy optimisation (PPO of our own).

    %rlhf reward --model minilm --data prefs.jsonl --test held_out --out rm
    rm.score(["\\n\\nHuman: hi\\n\\nAssistant: hello!"])
    %rlhf ppo --policy smollm2 --reward rm --prompts prompts_df --steps 200 --method lora --kl 0.05
    %rlhf ppo --policy smollm2 --reward my_python_fn --prompts prompts_df

`%rlhf` alone lists the recorded %rlhf runs. Every command records its run like `%finetune`.
"""
from __future__ import annotations

import pandas as pd

from ...method import Command, Method, Result
from ...models import resolve
from .common import preference_data
from .judge import run_collect, run_eval
from .launch import launch_reward
from .options import (CollectOptions, DpoOptions, EvalOptions, ListOptions, OnlineOptions, PpoOptions,
                      RewardOptions)
from .online import OnlineTraining
from .ppo import PpoTraining
from .results import PreferenceResult, RewardResult
from .reward import RewardTraining
from .offline import OfflineTraining, launch_offline


class RlhfMethod(Method):
    name = "rlhf"
    summary = ("RLHF: a reward model from preference pairs (Bradley–Terry, full, head or LoRA) and policy "
               "optimisation against it or any Python reward (PPO of our own, on the training engine).")
    Options = ListOptions
    seed_controls = ("data split", "data order", "head or adapter init", "sampling")
    result_classes = (RewardResult, PreferenceResult, Result)   # what `--devices` runs of reward, dpo, kto, orpo
    commands = {
        "collect": Command(CollectOptions, "collect", "a widget to rank completions; choices go to a JSONL file",
                           records_run=False),
        "reward": Command(RewardOptions, "reward", "train a reward model on preference pairs", launchable=True),
        "ppo": Command(PpoOptions, "ppo", "optimise a policy against a reward with PPO (ours, on the engine)"),
        "dpo": Command(DpoOptions, "dpo", "direct preference optimisation through TRL's DPOTrainer",
                       launchable=True),
        "kto": Command(DpoOptions, "kto", "KTO through TRL (each pair gives a desirable and an undesirable answer)",
                       launchable=True),
        "grpo": Command(OnlineOptions, "grpo", "GRPO through TRL, against our reward (a Result or a callable)"),
        "rloo": Command(OnlineOptions, "rloo", "RLOO through TRL, against our reward (a Result or a callable)"),
        "eval": Command(EvalOptions, "eval", "win rate of a tuned policy over its reference under a reward, and "
                                            "the KL between them, on held-out prompts"),
        "orpo": Command(DpoOptions, "orpo", "ORPO through TRL (no reference model; --beta is its λ)",
                        launchable=True),
    }

    def run(self, o: ListOptions, ctx) -> pd.DataFrame:
        frame = ctx.store.frame(limit=None)
        if len(frame) and "method" in frame:
            frame = frame[frame["method"].astype(str).str.startswith("rlhf")]
        return frame.head(o.limit) if o.limit else frame


    def data_fingerprint(self, o, ctx) -> str:
        """The fingerprint of the pairs reward/dpo/kto/orpo read (`%llm export` checks a run's data against it)."""
        return preference_data(o, ctx)[0].fingerprint

    def reward(self, o: RewardOptions, ctx):
        return RewardTraining().run(o, ctx)

    # --devices/--nodes above 1: the runner calls these instead (torchrun workers run the command itself)
    def launch_reward(self, o: RewardOptions, ctx):
        return launch_reward(self, o, ctx, RewardTraining().title(o, resolve(o.model)))

    def launch_dpo(self, o: DpoOptions, ctx):
        return launch_offline(self, "dpo", o, ctx)

    def launch_kto(self, o: DpoOptions, ctx):
        return launch_offline(self, "kto", o, ctx)

    def launch_orpo(self, o: DpoOptions, ctx):
        return launch_offline(self, "orpo", o, ctx)

    def ppo(self, o: PpoOptions, ctx):
        return PpoTraining().run(o, ctx)

    def dpo(self, o: DpoOptions, ctx):
        return OfflineTraining("dpo").run(o, ctx)

    def kto(self, o: DpoOptions, ctx):
        return OfflineTraining("kto").run(o, ctx)

    def orpo(self, o: DpoOptions, ctx):
        return OfflineTraining("orpo").run(o, ctx)

    def grpo(self, o: OnlineOptions, ctx):
        return OnlineTraining("grpo").run(o, ctx)

    def rloo(self, o: OnlineOptions, ctx):
        return OnlineTraining("rloo").run(o, ctx)

    def eval(self, o: EvalOptions, ctx):
        return run_eval(o, ctx)

    def collect(self, o: CollectOptions, ctx):
        return run_collect(o, ctx)
