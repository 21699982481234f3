"""accelerate's launcher config (`accelerate launch --config_file FILE`) for a launched run.

`%llm export` writes one beside the job (`accelerate.yaml`), for whoever launches with
accelerate rather than torchrun: the number of processes (all machines together, as
accelerate counts them), the multi-node fields, and for FSDP its `fsdp_config` (FSDP2,
full shard, the transformer block class as the wrap unit, the full state dict); for
DeepSpeed its `deepspeed_config` (ZeRO stage 2 or 3). The job's own engine does the
sharding (engine/distributed.py; DeepSpeed: engine/deepspeed_loop.py, which calls
`deepspeed.initialize` itself, with the same stage); the file makes accelerate start it the same way.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

ACCELERATE_FILE = "accelerate.yaml"
DISTRIBUTED_TYPE = {"ddp": "MULTI_GPU", "fsdp": "FSDP", "deepspeed": "DEEPSPEED", "deepspeed-zero2": "DEEPSPEED"}
ZERO_STAGE = {"deepspeed": 3, "deepspeed-zero2": 2}


def accelerate_config(strategy: str, devices: int, nodes: int = 1, node_rank: int = 0,
                      master_addr: str | None = None, master_port: int = 29500, wrap: list[str] | tuple = (),
                      grad_accum: int = 1, max_grad_norm: float | None = None,
                      mixed_precision: str = "no") -> dict[str, Any]:
    """The config as a dict (the YAML file's content)."""
    config: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": DISTRIBUTED_TYPE.get(strategy, "MULTI_GPU"),
        "num_processes": int(devices) * int(nodes),
        "num_machines": int(nodes),
        "machine_rank": int(node_rank),
        "main_process_ip": master_addr if nodes > 1 else None,
        "main_process_port": int(master_port) if nodes > 1 else None,
        "rdzv_backend": "static",
        "same_network": True,
        "mixed_precision": mixed_precision,
        "use_cpu": False,
    }
    if strategy == "fsdp":
        config["fsdp_config"] = {
            "fsdp_version": 2,
            "fsdp_reshard_after_forward": True,
            "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "fsdp_transformer_layer_cls_to_wrap": ",".join(wrap) if wrap else None,
            "fsdp_state_dict_type": "FULL_STATE_DICT",
            "fsdp_cpu_ram_efficient_loading": False,
            "fsdp_offload_params": False,
        }
    elif strategy in ZERO_STAGE:
        config["deepspeed_config"] = {
            "zero_stage": ZERO_STAGE[strategy],
            "gradient_accumulation_steps": int(grad_accum),
            "gradient_clipping": 1.0 if max_grad_norm is None else float(max_grad_norm),   # 0: none, as the loop
            "offload_optimizer_device": "none",
            "offload_param_device": "none",
            "zero3_init_flag": False,
            **({"zero3_save_16bit_model": True} if ZERO_STAGE[strategy] == 3 else {}),
        }
    return config


def write_accelerate_config(path: Path, **kwargs) -> Path:
    import yaml
    path = Path(path)
    path.write_text(yaml.safe_dump(accelerate_config(**kwargs), sort_keys=False))
    return path


def wrap_classes(model_path: str | None) -> list[str]:
    """The transformer block class of a model, from its config alone (nothing loaded): the classes its
    transformers class names as not to be split, embeddings left out."""
    import json
    if not model_path:
        return []
    config = Path(model_path) / "config.json"
    try:
        architectures = json.loads(config.read_text()).get("architectures") or []
    except (OSError, ValueError):
        return []
    import transformers
    for arch in architectures:
        cls = getattr(transformers, arch, None)
        names = list(getattr(cls, "_no_split_modules", None) or [])
        blocks = [n for n in names if "Embedding" not in n]
        if blocks:
            return blocks
    return []
