"""What a tuned policy reads and becomes: its prompts, and the trained adapter joining the session."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..data import infer_text_column, load_frame
from ..engine.device import dtype_name
from ..errors import UsageError


def load_prompts(ref: Any, column: str | None, namespace: dict | None) -> list[str]:
    if ref is None:
        raise UsageError("--prompts is required: a variable, a file or a list of prompt strings")
    frame = load_frame(ref, namespace, "--prompts")
    if frame.empty:
        raise UsageError("--prompts is empty; pass at least one prompt")
    if column is None and "prompt" in frame.columns:
        column = "prompt"
    column = infer_text_column(frame, column, flag="--prompt-column", role="--prompts")
    prompts = [str(p) for p in frame[column].dropna().tolist() if str(p).strip()]
    if not prompts:
        raise UsageError(f"--prompts: column {column!r} holds no non-empty prompt")
    return prompts


def adopt_adapter(peft_model, name: str, method: str, source, loaded, plan, ctx, trained_as: str = "default") -> Path:
    """The trained adapter joins the session's adapter hub under `name`: a normal `%lora` adapter.
    TRL trains it as 'default': it is saved, reloaded under its name, and 'default' dropped."""
    import tempfile

    from ..adapters import AdapterInfo, AdapterSet, hub
    if trained_as != name:
        with tempfile.TemporaryDirectory() as tmp:
            peft_model.save_pretrained(tmp, selected_adapters=[trained_as], safe_serialization=True)
            written = Path(tmp) / trained_as if (Path(tmp) / trained_as).is_dir() else Path(tmp)
            peft_model.load_adapter(str(written), adapter_name=name)
        peft_model.set_adapter(name)
        peft_model.delete_adapter(trained_as)
    for param in peft_model.parameters():
        param.requires_grad = False
    peft_model.eval()
    info = AdapterInfo(name=name, method=method, peft_type=str(peft_model.peft_config[name].peft_type.value),
                       task="sft", model=source.name, model_fingerprint=loaded.fingerprint,
                       dtype=dtype_name(loaded.dtype), trainable_params=plan.trainable, origin=ctx.run_id)
    adapter_set = AdapterSet(peft_model, peft_model, loaded.tokenizer, info.key, {name: info}, active=name)
    folder = adapter_set.save(name, ctx.run_dir / "adapter")
    hub().adopt(info, folder, lambda: adapter_set)
    return folder
