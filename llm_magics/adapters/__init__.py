"""PEFT adapters: which config each `--method` means, and the adapters held in the session."""
from .hub import AdapterInfo, AdapterSet, Hub, hub, merged_copy, read_info
from .methods import METHODS, PROMPT_LEARNING, TUNERS, build_config, smoke_test, targets

__all__ = ["AdapterInfo", "AdapterSet", "Hub", "hub", "merged_copy", "read_info", "METHODS", "PROMPT_LEARNING",
           "TUNERS", "build_config", "smoke_test", "targets"]

import warnings as _warnings

# Deprecation chatter from inside PEFT's calls into transformers 5, not actionable by users.
for _message in (".*`past_key_values` is deprecated.*", ".*Both `past_key_values` and `cache` are set.*",
                 ".*`is_gradient_checkpointing` is deprecated.*", ".*Position ids are not supported for parameter.*",
                 # A reloaded AdaLoRA adapter's pruned ranks are restored from its weights' shapes anyway.
                 ".*rank_pattern keys did not match.*"):
    _warnings.filterwarnings("ignore", message=_message)
