"""Instruction data for causal-LM fine-tuning: prompt/response pairs or chat messages.

Loss is on response tokens only. With a chat template the conversation is
rendered by it; EOS ends every response (the template's end-of-turn token
when it is the EOS, else EOS appended). Labels are masked by position, not
by token id, and the pad token is kept distinct from EOS, so the model
learns to stop.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from ..errors import UsageError
from . import fingerprint, split_off
from .columns import require_column
from .load import load_given

PROMPT_NAMES = ("prompt", "instruction", "question", "input", "query", "source")
RESPONSE_NAMES = ("response", "output", "answer", "completion", "target", "chosen")
MESSAGE_NAMES = ("messages", "conversations", "conversation", "chat")
IGNORE = -100


@dataclass
class SftData:
    train: pd.DataFrame          # columns: prompt/response, or messages
    validation: pd.DataFrame
    test: pd.DataFrame | None
    mode: str                    # "pairs" | "messages"
    fingerprint: str
    notes: list[str] = field(default_factory=list)

    def splits(self) -> dict[str, pd.DataFrame]:
        out = {"train": self.train, "val": self.validation}
        if self.test is not None:
            out["test"] = self.test
        return out


def _pick(frame: pd.DataFrame, requested: str | None, names: tuple, flag: str, what: str, role: str) -> str:
    if requested:
        return require_column(frame, requested, flag, role)
    found = [c for c in frame.columns if str(c).lower() in names]
    if len(found) == 1:
        return found[0]
    columns = ", ".join(map(str, frame.columns))
    if not found:
        raise UsageError(f"--task sft needs a {what} column in {role}; name it with {flag} (columns: {columns})")
    raise UsageError(f"{role} has several possible {what} columns ({', '.join(found)}); pick one with {flag}")


def normalise(frame: pd.DataFrame, role: str, prompt: str | None, response: str | None,
              messages: str | None) -> tuple[pd.DataFrame, str]:
    if frame.empty:
        raise UsageError(f"{role} is empty; pass prompt/response rows or chat messages")
    chat_column = messages or next((c for c in frame.columns if str(c).lower() in MESSAGE_NAMES
                                    and isinstance(frame[c].iloc[0], (list, tuple))), None)
    if chat_column is not None and not (prompt or response):
        require_column(frame, chat_column, "--messages", role)
        rows = [_messages(value, role) for value in frame[chat_column]]
        return pd.DataFrame({"messages": rows}), "messages"
    p = _pick(frame, prompt, PROMPT_NAMES, "--prompt", "prompt", role)
    r = _pick(frame, response, RESPONSE_NAMES, "--response", "response", role)
    if p == r:
        raise UsageError(f"--prompt and --response both name column {p!r} of {role}; "
                         "the response must be another column")
    kept = frame[[p, r]].dropna()
    kept = pd.DataFrame({"prompt": kept[p].astype(str), "response": kept[r].astype(str)})
    kept = kept[kept["response"].str.strip() != ""]
    if kept.empty:
        raise UsageError(f"{role} has no row with both a prompt ({p!r}) and a response ({r!r})")
    return kept.reset_index(drop=True), "pairs"


def _messages(value: Any, role: str) -> list[dict[str, str]]:
    """Chat turns as [{role, content}]; ShareGPT's {from, value} is accepted too."""
    if not isinstance(value, (list, tuple)) or not value:
        raise UsageError(f"{role}: a messages cell must be a non-empty list of {{role, content}} turns")
    roles = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
    turns = []
    for turn in value:
        speaker = turn.get("role", turn.get("from")) if isinstance(turn, dict) else None
        content = turn.get("content", turn.get("value")) if isinstance(turn, dict) else None
        if speaker not in roles or content is None:
            raise UsageError(f"{role}: a chat turn needs role (user/assistant/system) and content, got {turn!r}")
        turns.append({"role": roles[speaker], "content": str(content)})
    if not any(t["role"] == "assistant" for t in turns):
        raise UsageError(f"{role}: a conversation has no assistant turn to learn from")
    return turns


def prepare_sft(data: Any, validation: Any = None, test: Any = None, *, prompt: str | None = None,
                response: str | None = None, messages: str | None = None, seed: int = 0, val_size: float = 0.1,
                namespace: dict | None = None) -> SftData:
    """Load, normalise, split off a validation set when none is given. Test is optional."""
    if data is None:
        raise UsageError("--data is required: prompt/response rows or chat messages")
    given = load_given(data, validation, test, namespace)
    roles = {"train": "--data", "validation": "--validation", "test": "--test"}
    frames, modes, notes = {}, set(), []
    for name, frame in given.items():
        frames[name], mode = normalise(frame, roles[name], prompt, response, messages)
        modes.add(mode)
    if len(modes) > 1:
        raise UsageError("--data and the other splits mix prompt/response rows with chat messages; use one shape")
    train = frames["train"]
    if "validation" not in frames:
        train, frames["validation"] = split_off(train, val_size, seed)
        notes.append(f"validation: {len(frames['validation'])} rows split off --data (seed {seed})")
    parts = [train, frames["validation"]] + ([frames["test"]] if "test" in frames else [])
    flat = [p.astype(str) for p in parts]
    return SftData(train, frames["validation"], frames.get("test"), modes.pop(), fingerprint(*flat), notes)


# ---- tokenisation ------------------------------------------------------------------

def chat_prompt(tokenizer, prompt: str) -> str:
    """The text a model sees before its answer: the chat template's, when it has one."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
    return prompt


def _render(tokenizer, turns: list[dict], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=generation_prompt)


def segments(tokenizer, example: dict) -> list[tuple[str, bool]]:
    """The example as (text, learn) pieces: learn=True for what the model must produce."""
    if "messages" in example:
        turns = example["messages"]
        if not getattr(tokenizer, "chat_template", None):
            raise UsageError("chat messages need a tokenizer with a chat template; use prompt/response columns")
        pieces, done = [], ""
        for i, turn in enumerate(turns):
            if turn["role"] != "assistant":
                continue
            before = _render(tokenizer, turns[:i], generation_prompt=True)
            after = _render(tokenizer, turns[:i + 1], generation_prompt=False)
            if not (before.startswith(done) and after.startswith(before)):
                raise UsageError("the chat template does not render conversations prefix by prefix; "
                                 "use prompt/response columns")
            pieces += [(before[len(done):], False), (after[len(before):], True)]
            done = after
        return pieces
    if getattr(tokenizer, "chat_template", None):
        turns = [{"role": "user", "content": example["prompt"]}]
        before = _render(tokenizer, turns, generation_prompt=True)
        after = _render(tokenizer, turns + [{"role": "assistant", "content": example["response"]}], False)
        if after.startswith(before):
            return [(before, False), (after[len(before):], True)]
    return [(example["prompt"], False), (example["response"], True)]


def encode(tokenizer, example: dict, max_length: int) -> tuple[list[int], list[int]]:
    """(input_ids, labels): labels are IGNORE outside the pieces to learn; EOS closes each answer."""
    ids, labels = [], []
    if tokenizer.bos_token_id is not None and not getattr(tokenizer, "chat_template", None):
        ids.append(tokenizer.bos_token_id)
        labels.append(IGNORE)
    eos = tokenizer.eos_token_id
    for text, learn in segments(tokenizer, example):
        if not text:
            continue
        piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        # The template's end-of-turn may be the EOS already; else end the answer with EOS.
        if learn and eos is not None and eos not in piece[-3:]:
            piece = piece + [eos]
        ids += piece
        labels += piece if learn else [IGNORE] * len(piece)
    return ids[:max_length], labels[:max_length]


def distinct_pad_id(tokenizer) -> int:
    """A pad id that is not EOS (SmolLM2 ships pad = EOS); padding is masked by position anyway."""
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return tokenizer.pad_token_id
    for candidate in (tokenizer.unk_token_id, tokenizer.bos_token_id, 0):
        if candidate is not None and candidate != tokenizer.eos_token_id:
            return candidate
    return 0
