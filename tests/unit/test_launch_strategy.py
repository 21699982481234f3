"""`--strategy`: the automatic choice (fake sizes), the refusals, FSDP's wrap unit, and the
accelerate config `%llm export` writes. No worker starts here
(tests/integration/multiprocess/test_launch_fsdp.py runs them)."""
import json
from dataclasses import dataclass

import pytest
import yaml

from llm_magics import api
from llm_magics.errors import UsageError
from llm_magics.jobs.accelerate import accelerate_config, wrap_classes
from llm_magics.launch.strategy import BYTES_PER_PARAM, choose_strategy, count_params, decide

GIB = 2**30


def test_auto_picks_ddp_when_training_fits_one_device_and_fsdp_when_it_does_not():
    strategy, note = decide(params=100_000_000, device_memory=80 * GIB, devices=4)   # 1.6 GB of 80
    assert strategy == "ddp" and note.startswith("strategy ddp (auto:") and "fits one device" in note
    strategy, note = decide(params=7_000_000_000, device_memory=80 * GIB, devices=4)   # 112 GB of 80
    assert strategy == "fsdp" and "more than one device's 80.0 GiB" in note and "sharded over 4" in note
    edge = 80 * GIB // BYTES_PER_PARAM
    assert decide(edge, 80 * GIB, 2)[0] == "ddp" and decide(edge + 1, 80 * GIB, 2)[0] == "fsdp"
    assert decide(7_000_000_000, None, 2)[0] == "ddp"     # a CPU: no device memory to outgrow
    strategy, note = decide(None, 80 * GIB, 2)            # size unknown (a hub id): ddp, and say so
    assert strategy == "ddp" and "unknown" in note and "\n" not in note


@dataclass
class Opts:
    strategy: str = "auto"
    devices: int = 2
    device: str = "auto"


@dataclass
class Source:
    path: str
    local: bool = True


def test_auto_reads_the_models_size_from_its_files_and_the_gpus_memory(tiny_bert):
    params = count_params(tiny_bert)
    from transformers import AutoModel
    assert params == sum(p.numel() for p in AutoModel.from_pretrained(str(tiny_bert)).parameters())
    small, big = params * BYTES_PER_PARAM + 1, params * BYTES_PER_PARAM - 1
    assert choose_strategy(Opts(), Source(str(tiny_bert)), memory=lambda: small)[0] == "ddp"
    assert choose_strategy(Opts(), Source(str(tiny_bert)), memory=lambda: big)[0] == "fsdp"
    asked = []
    assert choose_strategy(Opts(device="cpu"), Source(str(tiny_bert)), memory=lambda: asked.append(1) or big)[0] \
        == "ddp" and not asked                            # --device cpu: no GPU is asked about
    assert choose_strategy(Opts(), lambda: Source(str(tiny_bert)), memory=lambda: big)[0] == "fsdp"   # resolved late
    assert choose_strategy(Opts(strategy="ddp"), Source(str(tiny_bert)), memory=lambda: big)[0] == "ddp"
    strategy, note = choose_strategy(Opts(strategy="fsdp"), None)
    assert strategy == "fsdp" and "asked for" in note


@pytest.mark.parametrize("strategy", ["deepspeed", "deepspeed-zero2"])
def test_deepspeed_without_it_installed_is_one_line_naming_the_extra_before_anything_is_written(
        tiny_bert, demo, home, strategy, monkeypatch):
    from llm_magics.engine import deepspeed_loop
    monkeypatch.setattr(deepspeed_loop, "available", lambda: False)
    with pytest.raises(UsageError, match=r"needs DeepSpeed, which is not installed: pip install "
                                         r"'llm-magics\[deepspeed\]'") as caught:
        api.finetune(model=str(tiny_bert), data=demo[0], devices=2, strategy=strategy)
    assert "\n" not in str(caught.value) and "--strategy fsdp" in str(caught.value)
    assert not list((home.cache_dir / "runs").glob("*/launch"))


def test_deepspeed_installed_is_taken_with_its_zero_stage_in_the_note(monkeypatch):
    from llm_magics.engine import deepspeed_loop
    from llm_magics.engine.parallel import loop_for
    monkeypatch.setattr(deepspeed_loop, "available", lambda: True)
    strategy, note = choose_strategy(Opts(strategy="deepspeed"), None)
    assert strategy == "deepspeed" and "ZeRO stage 3 partitions weights, gradients" in note
    strategy, note = choose_strategy(Opts(strategy="deepspeed-zero2"), None)
    assert strategy == "deepspeed-zero2" and "ZeRO stage 2" in note and "whole weights" in note
    assert loop_for("deepspeed").stage == 3 and loop_for("deepspeed-zero2").stage == 2
    assert loop_for("fsdp").strategy == "fsdp" and loop_for("ddp").strategy == "ddp"
    assert loop_for("auto").strategy == "ddp"   # an exported job under torchrun: auto was never resolved
    config = deepspeed_loop.zero_config(3, grad_accum=4, max_grad_norm=None, micro_batch=8)
    # the loop accumulates (it marks DeepSpeed's boundary); no clipping asked: none
    assert config["gradient_accumulation_steps"] == 1 and config["gradient_clipping"] == 0.0
    assert config["zero_optimization"]["stage"] == 3


def test_deepspeed_refuses_adalora_and_fp16_before_touching_a_process_group(tmp_path):
    import torch
    from llm_magics.engine.deepspeed_loop import DeepSpeedTrainLoop
    from llm_magics.engine.loop import TrainConfig
    with pytest.raises(UsageError, match="--strategy ddp") as caught:
        DeepSpeedTrainLoop(torch.nn.Linear(2, 2), None, TrainConfig(), None, tmp_path, torch.device("cpu"),
                           before_zero_grad=lambda step: None)
    assert "AdaLoRA" in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(UsageError, match="fp16") as caught:
        DeepSpeedTrainLoop(torch.nn.Linear(2, 2), None, TrainConfig(autocast=torch.float16), None, tmp_path,
                           torch.device("cpu"))
    assert "\n" not in str(caught.value)


def test_fsdp_wraps_each_transformer_block_not_the_embeddings(tiny_bert, tiny_llama):
    from transformers import AutoModel, AutoModelForCausalLM
    from llm_magics.engine.distributed import transformer_blocks
    bert = AutoModel.from_pretrained(str(tiny_bert))
    assert [type(b).__name__ for b in transformer_blocks(bert)] == ["BertLayer", "BertLayer"]
    llama = AutoModelForCausalLM.from_pretrained(str(tiny_llama))
    assert [type(b).__name__ for b in transformer_blocks(llama)] == ["LlamaDecoderLayer"] * 2
    import torch
    plain = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ModuleList([torch.nn.Linear(2, 2) for _ in range(3)]))
    assert len(transformer_blocks(plain)) == 3                    # no transformers name: the longest ModuleList
    assert wrap_classes(str(tiny_bert)) == ["BertLayer"] and wrap_classes(str(tiny_llama)) == ["LlamaDecoderLayer"]


def test_accelerate_config_for_each_strategy(tmp_path):
    fsdp = accelerate_config("fsdp", devices=4, nodes=2, node_rank=1, master_addr="10.0.0.1",
                             wrap=["LlamaDecoderLayer"])
    assert fsdp["distributed_type"] == "FSDP" and fsdp["num_processes"] == 8 and fsdp["num_machines"] == 2
    assert fsdp["machine_rank"] == 1 and fsdp["main_process_ip"] == "10.0.0.1" and fsdp["main_process_port"] == 29500
    assert fsdp["fsdp_config"]["fsdp_transformer_layer_cls_to_wrap"] == "LlamaDecoderLayer"
    assert fsdp["fsdp_config"]["fsdp_version"] == 2 and fsdp["fsdp_config"]["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    ddp = accelerate_config("ddp", devices=2)
    assert ddp["distributed_type"] == "MULTI_GPU" and "fsdp_config" not in ddp and ddp["main_process_ip"] is None
    zero3, zero2 = accelerate_config("deepspeed", devices=2), accelerate_config("deepspeed-zero2", devices=2)
    assert zero3["distributed_type"] == "DEEPSPEED" and zero3["deepspeed_config"]["zero_stage"] == 3
    assert zero3["deepspeed_config"]["zero3_save_16bit_model"] is True   # a ZeRO-3 save gathers the weights whole
    assert zero2["deepspeed_config"]["zero_stage"] == 2
    assert zero3["deepspeed_config"]["gradient_clipping"] == 1.0   # the option's default
    assert accelerate_config("deepspeed", 2, max_grad_norm=0)["deepspeed_config"]["gradient_clipping"] == 0.0
    from accelerate.commands.config.config_args import ClusterConfig
    from llm_magics.jobs.accelerate import write_accelerate_config
    for strategy in ("fsdp", "ddp", "deepspeed"):   # accelerate itself reads the file
        path = write_accelerate_config(tmp_path / f"{strategy}.yaml", strategy=strategy, devices=2, wrap=["BertLayer"])
        read = ClusterConfig.from_yaml_file(str(path))
        assert read.num_processes == 2 and read.distributed_type.value == accelerate_config(strategy, 2)[
            "distributed_type"]


def test_export_writes_an_accelerate_config_beside_the_job(shell, tiny_bert, demo, tmp_path):
    shell.user_ns["train_df"] = demo[0]
    shell.run_line_magic("finetune", f"--model {tiny_bert} --data train_df --train head --epochs 1 "
                                     "--dtype float32 --out r")
    shell.run_line_magic("llm", f"export {shell.user_ns['r'].run_id} {tmp_path / 'job'}")
    config = yaml.safe_load((tmp_path / "job" / "accelerate.yaml").read_text())
    assert config["distributed_type"] == "MULTI_GPU" and config["num_processes"] == 1
    assert config["num_machines"] == 1 and "fsdp_config" not in config
    readme = (tmp_path / "job" / "README.md").read_text()
    assert "accelerate launch --config_file accelerate.yaml train.py" in readme
    assert "--num_machines M --machine_rank R" in readme and "torchrun --standalone" in readme
    assert json.loads((tmp_path / "job" / "job.json").read_text())["options"]["strategy"] == "auto"


def test_fsdp_refuses_a_method_that_edits_the_model_from_whole_gradients(tmp_path):
    """AdaLoRA reallocates its ranks from the gradients after each step (`before_zero_grad`); under FSDP
    each worker holds a shard of them (measured: PEFT's rank allocator fails on the DTensors). One line,
    before any process group is touched."""
    import torch
    from llm_magics.engine.distributed import FSDPTrainLoop
    with pytest.raises(UsageError, match="--strategy ddp") as caught:
        FSDPTrainLoop(torch.nn.Linear(2, 2), None, None, None, tmp_path, torch.device("cpu"),
                      before_zero_grad=lambda step: None)
    assert "AdaLoRA" in str(caught.value) and "\n" not in str(caught.value)
