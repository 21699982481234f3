"""The kernel builds a launched run's Result from the worker-written result.json: only as a Result class the
method's runs come back as, and a name in the file never chooses what the kernel imports."""
from __future__ import annotations

import json
import sys

import pytest
from IPython.core.error import UsageError


def _written(folder, path: str) -> None:
    from llm_magics.launch.result import RESULT
    (folder / RESULT).write_text(json.dumps({"class": path, "fields": {"method": "rlhf dpo", "status": "ok"}}))


@pytest.mark.parametrize("path", ["os.system", "this.Result", "llm_magics_no_such_module.Result",
                                  "llm_magics.finetune.FinetuneResult", "builtins.object", ""])
def test_a_class_the_method_does_not_return_is_refused_in_one_line_before_any_import(tmp_path, path):
    from llm_magics.launch.result import read_result
    from llm_magics.methods.rlhf import RlhfMethod
    _written(tmp_path, path)
    before = set(sys.modules)
    with pytest.raises(UsageError) as refused:
        read_result(RlhfMethod(), None, tmp_path, None, None)
    message = str(refused.value)
    assert "\n" not in message and repr(path) in message and "PreferenceResult" in message
    assert set(sys.modules) - before == set()   # nothing imported, `this` (which prints when imported) included


def test_each_result_class_of_the_method_is_built_from_the_file(tmp_path):
    from llm_magics.launch.result import read_result
    from llm_magics.methods.rlhf import RlhfMethod
    from llm_magics.method import Result
    from llm_magics.methods.rlhf.results import PreferenceResult
    from llm_magics.methods.rlhf.results import RewardResult
    for cls in (PreferenceResult, RewardResult, Result):
        _written(tmp_path, f"{cls.__module__}.{cls.__qualname__}")
        result = read_result(RlhfMethod(), None, tmp_path, None, None)
        assert type(result) is cls and result.method == "rlhf dpo" and result.status == "ok"


def test_a_training_method_returns_its_own_result_class(tmp_path):
    from llm_magics.launch.result import read_result
    from llm_magics.methods.finetune import FinetuneMethod, FinetuneResult
    _written(tmp_path, f"{FinetuneResult.__module__}.{FinetuneResult.__qualname__}")
    assert type(read_result(FinetuneMethod(), None, tmp_path, None, None)) is FinetuneResult
    _written(tmp_path, "llm_magics.methods.rlhf.results.PreferenceResult")
    with pytest.raises(UsageError, match="not a Result class of %finetune"):
        read_result(FinetuneMethod(), None, tmp_path, None, None)


def test_the_file_carries_public_fields_only_and_the_restore_hook_rebuilds_from_the_folders(tmp_path, monkeypatch):
    """One route back to the kernel: no private field travels (no whitelist), a Result whose model lives in its
    folders writes no second copy of the weights, and `restore` is what makes the kernel's Result usable."""
    import torch

    from llm_magics.launch.result import read_result, write_result
    from llm_magics.methods.rlhf import RlhfMethod
    from llm_magics.methods.rlhf.results import RewardResult
    reward = RewardResult(method="rlhf", command="reward", artifacts={"reward_model": str(tmp_path / "rm")},
                          _model=torch.nn.Linear(2, 1), _folder="/elsewhere", _max_length=7)
    payload = json.loads(write_result(reward, tmp_path).read_text())
    assert not [k for k in payload["fields"] if k.startswith("_")] and payload["weights"] is None
    restored = []
    monkeypatch.setattr(RewardResult, "restore", lambda self, options, rebuild: restored.append((options, rebuild)))
    back = read_result(RlhfMethod(), "the options", tmp_path, None, None)
    assert type(back) is RewardResult and back.folder == str(tmp_path / "rm") and back._model is None
    assert restored == [("the options", None)]   # no weights were written, so nothing to rebuild from them
