"""The first use of a GGUF model (smollm2) prints nothing into the cell but real errors."""
import subprocess
import sys

FIRST_USE = """
import logging, sys
from llm_magics.models.quiet import quiet, quiet_gguf_reader
from transformers import LlamaConfig, LlamaForCausalLM
import transformers.modeling_gguf_pytorch_utils as reader
bar = reader.tqdm
with quiet(), quiet_gguf_reader():
    for _ in reader.tqdm(range(3), desc="Converting and de-quantizing GGUF tensors..."):   # the reader's own bar
        pass
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2)
    LlamaForCausalLM(config).save_pretrained(sys.argv[1])   # as the converter saves: accelerate imports DeepSpeed
    logging.getLogger("DeepSpeed").error("a real DeepSpeed error")
assert reader.tqdm is bar and "deepspeed" in sys.modules
"""


def test_a_first_conversion_prints_only_real_errors(tmp_path):
    """In a fresh process (DeepSpeed not yet imported, as on a first use): the converter's steps inside
    `quiet()` leave neither DeepSpeed's 'Setting accelerator to CPU' warning nor the reader's bar."""
    done = subprocess.run([sys.executable, "-c", FIRST_USE, str(tmp_path / "model")], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "" and done.stdout.endswith("a real DeepSpeed error\n"), (done.stdout, done.stderr)
    assert done.stdout.count("\n") == 1, done.stdout
