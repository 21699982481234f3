"""PEFT adapters: which config each `--method` means (`configs`) and which ones work (`checks`), adapted models
built (`build`), a saved adapter's folder (`folder`), and the adapters loaded now (`session`)."""
from .checks import smoke_test
from .configs import METHODS, PROMPT_LEARNING, TUNERS, build_config, targets
from .folder import AdapterInfo, read_info
from .session import AdapterSet, Hub, hub, merged_copy

__all__ = ["AdapterInfo", "AdapterSet", "Hub", "hub", "merged_copy", "read_info", "METHODS", "PROMPT_LEARNING",
           "TUNERS", "build_config", "smoke_test", "targets"]

import warnings as _warnings

# Deprecation chatter from inside PEFT's calls into transformers 5, not actionable by users.
for _message in (".*`past_key_values` is deprecated.*", ".*Both `past_key_values` and `cache` are set.*",
                 ".*`is_gradient_checkpointing` is deprecated.*", ".*Position ids are not supported for parameter.*",
                 # A reloaded AdaLoRA adapter's pruned ranks are restored from its weights' shapes anyway.
                 ".*rank_pattern keys did not match.*"):
    _warnings.filterwarnings("ignore", message=_message)
