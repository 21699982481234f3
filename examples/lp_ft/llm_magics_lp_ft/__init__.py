"""`%lp_ft`: LP-FT (Kumar et al., 2022) — a linear probe first (only the new head trains, on the frozen model's
cached features), then full fine-tuning from that head, so the features are not distorted by a random head.

The training base runs the two phases as one run: one live view, one Stop, `--resume` in either phase.
"""
from llm_magics.plugin import dataclass, option, positive
from llm_magics.training import ClassifierTrainingMethod, ClassifierTrainingOptions, Phase


@dataclass
class LpFtOptions(ClassifierTrainingOptions):
    probe_epochs: int = option(5, "epochs of the linear probe (the head alone, on cached features)", check=positive)
    probe_lr: float = option(5e-3, "the linear probe's learning rate (then --lr for every layer)", check=positive)


class LpFtMethod(ClassifierTrainingMethod):
    name = "lp_ft"
    summary = "LP-FT: train the new classification head alone (a linear probe), then every layer from that head."
    Options = LpFtOptions
    default_lr = 5e-5   # the fine-tuning phase's, as %finetune --train all
    resume_keys = ClassifierTrainingMethod.resume_keys + ("probe_epochs", "probe_lr")

    def phases(self, options):
        return [Phase("probe", {"epochs": options.probe_epochs, "lr": options.probe_lr}, head_only=True),
                Phase("finetune")]
