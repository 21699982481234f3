"""Tiny models built from configs (random weights) for fast unit tests.

Each builder writes a folder that `from_pretrained` loads, tokenizer included,
exactly like a real model folder a user would pass with `--model PATH`.
"""
from __future__ import annotations

from pathlib import Path

import torch

from llm_magics.demo import NEGATIVE, POSITIVE, SUBJECTS, TAILS

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
