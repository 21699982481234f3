"""`%bitfit`: BitFit (Ben Zaken et al., 2022) — fine-tune only a model's bias terms.

A classifier head is added on top and trains too; every weight matrix stays frozen,
so about 0.1% of the parameters learn. Everything else (data, model loading,
progress, Stop, --resume, --bg, the Result, the run store) is the public training
base's: this file only says which parameters train and at what learning rate.
"""
from llm_magics.plugin import dataclass, option, positive
from llm_magics.training import ClassifierTrainingMethod, ClassifierTrainingOptions


@dataclass
class BitFitOptions(ClassifierTrainingOptions):
    norms: bool = option(False, "also train the LayerNorm weights (not only the biases)")
    head_lr: float = option(5e-3, "the new head's learning rate (the biases train at --lr)", check=positive)


class BitFitMethod(ClassifierTrainingMethod):
    name = "bitfit"
    summary = "BitFit: fine-tune only the bias terms (and the new classification head) of a model."
    Options = BitFitOptions
    default_lr = 2e-3  # for the biases; measured on SST-2 with MiniLM (docs/plugins.md)

    def select_trainable(self, model, options):
        def trains(name, param):
            return name.endswith("bias") or (options.norms and "norm" in name.lower())
        return trains

    def param_groups(self, model, options):
        return [("head", lambda name, param: name.startswith("head."), options.head_lr)]
