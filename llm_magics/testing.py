"""For a plugin's own tests (and ours): tiny models and an isolated llm-magics home.

    from llm_magics.testing import build_bert, isolated_home, shell_with_extension

    def test_my_method(tmp_path):
        model = build_bert(tmp_path / "bert")            # a 2-layer BERT folder, random weights
        with isolated_home(tmp_path / "home"), shell_with_extension() as sh:
            r = sh.run_line_magic("mymethod", f"--model {model} --data df")

With pytest, `pytest_plugins = ["llm_magics.testing"]` in a conftest.py gives the
fixtures `llm_home` (an isolated home per test), `llm_shell` (a real IPython shell
with the extension loaded), `tiny_bert` and `tiny_llama` (folders, built once).

Each builder writes a folder that `from_pretrained` loads, tokenizer included,
exactly like a real model folder a user would pass with `--model PATH`; random
weights, so right for fast tests of the plumbing, not for quality.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

from .demo import NEGATIVE, POSITIVE, SUBJECTS, TAILS

__all__ = ["build_bert", "build_llama", "isolated_home", "shell_with_extension", "CHAT_TEMPLATE"]

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _corpus() -> list[str]:
    words = " ".join(SUBJECTS + POSITIVE + NEGATIVE + TAILS)
    extra = ("Review: Sentiment: positive negative Question: Answer: Text: context the a of to and is "
             "in it you that he was for on are with as I his they be at one have this from")
    return [words, extra, "0123456789 .,;:!?'\"-()[]{}"]


def build_bert(folder: Path, layers: int = 2, hidden: int = 32) -> Path:
    from transformers import BertConfig, BertModel, BertTokenizerFast
    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    for text in _corpus():
        for word in text.lower().replace(".", " . ").replace("'", " ' ").split():
            if word not in vocab:
                vocab.append(word)
    vocab += [c for c in "abcdefghijklmnopqrstuvwxyz0123456789.,;:!?'\"-()" if c not in vocab]
    vocab += ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"]
    tokenizer = BertTokenizerFast(vocab={token: i for i, token in enumerate(vocab)}, do_lower_case=True)
    tokenizer.save_pretrained(folder)
    config = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                        intermediate_size=2 * hidden, max_position_embeddings=128, pad_token_id=0)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    _write_architecture(folder, "BertModel")
    return folder


def build_llama(folder: Path, layers: int = 2, hidden: int = 32) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    folder.mkdir(parents=True, exist_ok=True)
    specials = ["<unk>", "<s>", "<|im_end|>", "<pad>", "<|im_start|>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus() * 20, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                        eos_token="<|im_end|>", pad_token="<pad>")
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         tie_word_embeddings=True)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def _write_architecture(folder: Path, name: str) -> None:
    import json
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config["architectures"] = [name]
    path.write_text(json.dumps(config, indent=2))


# Environment an isolated home sets: its own cache and run store, plain-text progress, no hub.
HOME_ENV = ("LLM_MAGICS_HOME", "LLM_MAGICS_PROGRESS", "HF_HUB_OFFLINE", "LLM_MAGICS_RUNS", "LLM_MAGICS_DEVICE",
            "LLM_MAGICS_MODEL")


@contextlib.contextmanager
def isolated_home(folder: str | Path, progress: str = "text"):
    """llm-magics settings, caches and run store under `folder` for the block; restored after."""
    from . import settings
    saved = {name: os.environ.get(name) for name in HOME_ENV}
    os.environ.update(LLM_MAGICS_HOME=str(folder), LLM_MAGICS_PROGRESS=progress, HF_HUB_OFFLINE="1")
    for name in ("LLM_MAGICS_RUNS", "LLM_MAGICS_DEVICE", "LLM_MAGICS_MODEL"):
        os.environ.pop(name, None)
    try:
        yield settings.reset()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        settings.reset()


@contextlib.contextmanager
def shell_with_extension():
    """A real IPython shell with `%load_ext llm_magics` (unloaded after, its %config forgotten)."""
    from IPython.core.interactiveshell import InteractiveShell
    sh = InteractiveShell.instance()
    sh.run_line_magic("load_ext", "llm_magics")
    try:
        yield sh
    finally:
        sh.run_line_magic("unload_ext", "llm_magics")
        sh.config.pop("LLMMagics", None)


try:
    import pytest
except ImportError:  # the builders and context managers work without pytest
    pytest = None

if pytest is not None:
    @pytest.fixture
    def llm_home(tmp_path):
        with isolated_home(tmp_path / "llm-home") as current:
            yield current

    @pytest.fixture
    def llm_shell(llm_home):
        with shell_with_extension() as sh:
            yield sh

    @pytest.fixture(scope="session")
    def tiny_bert(tmp_path_factory) -> Path:
        return build_bert(tmp_path_factory.mktemp("tiny-bert"))

    @pytest.fixture(scope="session")
    def tiny_llama(tmp_path_factory) -> Path:
        return build_llama(tmp_path_factory.mktemp("tiny-llama"))
