"""Preference data in the shapes people have it, normalised to prompt / chosen / rejected texts.

Accepted row shapes (through the project's data layer, so any variable, file or dataset name):

1. `prompt`, `chosen`, `rejected` columns of text;
2. `chosen` / `rejected` as chat-message lists `[{role, content}]` (the shared leading messages
   become the prompt, the last message of each is the answer; a `prompt` column of text or
   messages goes in front);
3. whole transcripts where only the last turn differs (HH-RLHF: `chosen` / `rejected` text, no
   prompt): the shared prefix up to its last `Assistant:` becomes the prompt;
4. ShareGPT style: `conversations` [{from, value}] plus `chosen` / `rejected` {from, value} objects
   (LLaMA-Factory's dpo_en_demo);
5. a ranked list of k answers (`responses` / `completions` / `answers`, best first, or ordered by a
   `scores` / `ranks` column) expanded into all k(k-1)/2 pairs (ties give no pair).

Chat messages are rendered as `\\n\\nHuman: …\\n\\nAssistant: …` text, the HH-RLHF convention, so a
reward model that was never trained on a chat template reads every shape the same way; the prompt
always ends with `Assistant:` and the answers follow it. Every malformed row is named with the
columns that were found.
"""
from __future__ import annotations

import gzip
import math
import os
import zlib
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from ..data import fingerprint, load_given, split_off
from ..errors import UsageError

ROLE_NAMES = {"human": "Human", "user": "Human", "gpt": "Assistant", "assistant": "Assistant",
              "bot": "Assistant", "model": "Assistant", "system": "System", "observation": "Observation",
              "function_call": "Assistant", "tool": "Observation"}
RANKED_COLUMNS = ("responses", "completions", "answers", "ranked")
SCORE_COLUMNS = ("scores", "ratings", "rewards")
RANK_COLUMNS = ("ranks", "ranking")
ASSISTANT = "\n\nAssistant:"
COLUMNS = ["prompt", "chosen", "rejected"]


@dataclass
class PreferenceData:
    """Three splits of prompt / chosen / rejected texts."""
    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame
    fingerprint: str
    notes: list[str] = field(default_factory=list)

    def splits(self) -> dict[str, pd.DataFrame]:
        return {"train": self.train, "val": self.validation, "test": self.test}


# ---- one row -------------------------------------------------------------------------------

class RowError(Exception):
    """A malformed row: the message names what was wrong; the caller adds the row and columns."""


def _content(message: Any) -> str:
    content = message.get("content", message.get("value"))
    if isinstance(content, list):  # content parts: [{type: text, text|value}]
        parts = [p.get("text", p.get("value", "")) if isinstance(p, dict) else str(p) for p in content]
        content = "".join(str(p) for p in parts)
    if not isinstance(content, str):
        raise RowError(f"a message without text content ({message!r:.80})")
    return content


def _role(message: dict) -> str:
    role = str(message.get("role", message.get("from", ""))).lower()
    if role not in ROLE_NAMES:
        raise RowError(f"a message with an unknown role {role!r} (expected user/assistant/system, or human/gpt)")
    return ROLE_NAMES[role]


def _is_message(value: Any) -> bool:
    return isinstance(value, dict) and ("content" in value or "value" in value)


def _is_messages(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and len(value) > 0 and all(_is_message(m) for m in value)


def _as_list(value: Any) -> Any:
    """numpy arrays (from parquet / Arrow) behave as lists here."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return value.tolist()
    return value


def render(messages: list[dict], open_answer: bool = False) -> str:
    """`\\n\\nHuman: …\\n\\nAssistant: …`; with `open_answer`, ends on an empty `Assistant:` turn."""
    text = "".join(f"\n\n{_role(m)}: {_content(m)}" for m in messages)
    return text + ASSISTANT if open_answer else text


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def split_transcripts(chosen: str, rejected: str) -> tuple[str, str, str]:
    """HH-RLHF: (prompt, chosen answer, rejected answer) from two transcripts sharing all but the last turn."""
    shared = os.path.commonprefix([chosen, rejected])
    cut = shared.rfind(ASSISTANT)
    if cut < 0:
        cut = shared.rfind("Assistant:")
        if cut < 0:
            raise RowError("chosen and rejected are whole texts without a prompt column, and they share no "
                           "'Assistant:' turn to split a prompt off; add a prompt column")
        end = cut + len("Assistant:")
    else:
        end = cut + len(ASSISTANT)
    return chosen[:end], chosen[end:], rejected[end:]


def _answer(value: Any, which: str) -> tuple[list | None, str]:
    """(leading messages, answer text) of a chosen/rejected value."""
    value = _as_list(value)
    if isinstance(value, str):
        return None, value
    if _is_message(value):
        return [], _content(value)
    if _is_messages(value):
        if _role(value[-1]) != "Assistant":
            raise RowError(f"{which}'s last message is from {_role(value[-1])}, not the assistant")
        return list(value[:-1]), _content(value[-1])
    if _missing(value):
        raise RowError(f"{which} is empty")
    raise RowError(f"{which} is a {type(value).__name__}; expected text, a message or a list of messages")


def _prompt_text(value: Any) -> tuple[str | None, bool]:
    """(the prompt as text, whether it came from chat messages)."""
    value = _as_list(value)
    if _missing(value):
        return None, False
    if isinstance(value, str):
        return value, False
    if _is_messages(value):
        return render(value), True
    if _is_message(value):
        return render([value]), True
    raise RowError(f"the prompt is a {type(value).__name__}; expected text or chat messages")


def pair_row(prompt: Any, chosen: Any, rejected: Any, conversations: Any = None) -> tuple[str, str, str]:
    """One preference pair as (prompt, chosen, rejected) texts."""
    head_c, text_c = _answer(chosen, "chosen")
    head_r, text_r = _answer(rejected, "rejected")
    prefix, chat = _prompt_text(prompt)
    if conversations is not None:
        conversations = _as_list(conversations)
        if not _is_messages(conversations):
            raise RowError("conversations is not a list of {from, value} messages")
        prefix, chat = (prefix or "") + render(conversations), True
    if head_c is None and head_r is None and prefix is None:  # HH transcripts
        prompt_text, text_c, text_r = split_transcripts(text_c, text_r)
    elif (head_c is None) != (head_r is None):
        raise RowError("one of chosen/rejected is chat messages and the other plain text")
    elif head_c is None and not chat:   # prompt / chosen / rejected texts, used as they are
        prompt_text = prefix
    else:                               # chat: render the shared messages, open the assistant's turn
        head_c, head_r = head_c or [], head_r or []
        if [(_role(m), _content(m)) for m in head_c] != [(_role(m), _content(m)) for m in head_r]:
            raise RowError("chosen and rejected differ before their last message; only the answer may differ")
        prompt_text = (prefix or "") + render(head_c) + ASSISTANT
        text_c, text_r = " " + text_c.lstrip(), " " + text_r.lstrip()
    if text_c.strip() == text_r.strip():   # an empty answer is one (HH has preferred silences)
        raise RowError("chosen and rejected are identical")
    return prompt_text, text_c, text_r


def _ranked_pairs(prompt: Any, answers: Any, scores: Any, ranks: Any) -> list[tuple[str, str, str]]:
    answers = _as_list(answers)
    if not isinstance(answers, (list, tuple)) or len(answers) < 2:
        raise RowError("a ranked list needs at least two answers")
    texts = [_answer(a, "an answer")[1] for a in answers]
    if _missing(_as_list(scores)) and _missing(_as_list(ranks)):
        order = list(range(len(texts)))        # best first
        key = [-i for i in order]
    elif not _missing(_as_list(scores)):
        key = _numbers(scores, "scores")
    else:
        key = [-r for r in _numbers(ranks, "ranks")]  # rank 1 is the best
    if len(key) != len(texts):
        raise RowError(f"{len(texts)} answers but {len(key)} scores/ranks")
    prompt_text, chat = _prompt_text(prompt)
    if chat:
        prompt_text += ASSISTANT
        texts = [" " + t.lstrip() for t in texts]
    if prompt_text is None:
        raise RowError("a ranked list needs a prompt")
    pairs = []
    for i in range(len(texts)):
        for j in range(len(texts)):
            if key[i] > key[j] and texts[i].strip() != texts[j].strip():
                pairs.append((prompt_text, texts[i], texts[j]))
    if not pairs:
        raise RowError("every answer is tied or identical: no pair to learn from")
    return pairs


# ---- a table -------------------------------------------------------------------------------

def _numbers(values: Any, what: str) -> list[float]:
    """A ranked list's scores or ranks: a list of finite numbers, one per answer."""
    values = _as_list(values)
    if not isinstance(values, (list, tuple)):
        raise RowError(f"{what} is a single {type(values).__name__}; expected a list, one number per answer")
    try:
        numbers = [float(v) for v in values if not isinstance(v, bool)]
    except (TypeError, ValueError):
        numbers = []
    if len(numbers) != len(values) or not all(math.isfinite(n) for n in numbers):
        raise RowError(f"{what} {list(values)!r:.80} are not all numbers")
    return numbers


def _find(columns, names) -> str | None:
    lower = {str(c).lower(): c for c in columns}
    return next((lower[n] for n in names if n in lower), None)


def normalize_preferences(frame: pd.DataFrame, role: str = "--data", *, prompt: str | None = None,
                          chosen: str | None = None, rejected: str | None = None) -> pd.DataFrame:
    """Any supported shape → a DataFrame of prompt / chosen / rejected texts (ranked rows expand)."""
    if frame is None or len(frame) == 0:
        raise UsageError(f"{role} is empty: a preference set needs at least a few pairs")
    if "event" in frame.columns and "chosen" in frame.columns:   # %rlhf collect's ties and skips
        frame = frame[frame["event"].isna()].drop(columns="event").reset_index(drop=True)
        if frame.empty:
            raise UsageError(f"{role} holds only ties and skips: no preference pair yet")
    columns = list(frame.columns)
    found = ", ".join(map(str, columns))
    for flag, name in (("--prompt", prompt), ("--chosen", chosen), ("--rejected", rejected)):
        if name is not None and name not in columns:
            raise UsageError(f"{role}: {flag} {name!r} is not a column (columns: {found})")
    prompt_col = prompt or _find(columns, ("prompt", "question", "instruction", "input", "query"))
    chosen_col = chosen or _find(columns, ("chosen", "chosen_messages", "chosen_response"))
    rejected_col = rejected or _find(columns, ("rejected", "rejected_messages", "rejected_response"))
    ranked_col = _find(columns, RANKED_COLUMNS)
    conv_col = _find(columns, ("conversations", "conversation"))
    if chosen_col is None or rejected_col is None:
        if ranked_col is None:
            raise UsageError(f"{role}: no preference columns: expected chosen and rejected (with a prompt, or whole "
                             f"transcripts), conversations + chosen/rejected, or a ranked list "
                             f"({'/'.join(RANKED_COLUMNS)}) with a prompt; columns found: {found}")
        if prompt_col is None:
            raise UsageError(f"{role}: a ranked list ({ranked_col}) needs a prompt column; columns found: {found}")
    score_col, rank_col = _find(columns, SCORE_COLUMNS), _find(columns, RANK_COLUMNS)
    rows: list[tuple[str, str, str]] = []
    for i, record in enumerate(frame.to_dict("records")):
        try:
            if chosen_col is not None and rejected_col is not None:
                rows.append(pair_row(record.get(prompt_col) if prompt_col else None, record[chosen_col],
                                     record[rejected_col], record.get(conv_col) if conv_col else None))
            else:
                rows += _ranked_pairs(record[prompt_col], record[ranked_col],
                                      record.get(score_col) if score_col else None,
                                      record.get(rank_col) if rank_col else None)
        except RowError as exc:
            raise UsageError(f"{role} row {i}: {exc} (columns found: {found})") from None
    return pd.DataFrame(rows, columns=COLUMNS)


def _gunzipped(ref: Any) -> Any:
    """`x.jsonl.gz` (how HH-RLHF ships) read here; everything else goes to the data layer."""
    if isinstance(ref, str) and ref.endswith((".jsonl.gz", ".json.gz")):
        from pathlib import Path
        path = Path(ref).expanduser()
        if not path.is_file():
            raise UsageError(f"file {ref} does not exist")
        try:
            return pd.read_json(path, lines=ref.endswith(".jsonl.gz"), compression="gzip")
        except (gzip.BadGzipFile, EOFError, zlib.error):
            raise UsageError(f"could not read {ref}: it is not a whole gzip file (a plain .jsonl named .gz, or cut "
                             "off); rename or re-compress it") from None
        except ValueError as exc:
            raise UsageError(f"could not read {ref}: {str(exc).splitlines()[0]}") from None
    return ref


def prepare_preferences(data: Any, validation: Any = None, test: Any = None, *, seed: int = 0,
                        val_size: float = 0.1, test_size: float = 0.2, namespace: dict | None = None,
                        prompt: str | None = None, chosen: str | None = None, rejected: str | None = None,
                        need_test: bool = True) -> PreferenceData:
    """Load, normalise and split preference pairs; missing splits come off --data (seeded)."""
    if data is None:
        raise UsageError("--data is required: preference pairs as a variable, a file or a dataset name")
    given = load_given(*(_gunzipped(ref) for ref in (data, validation, test)), namespace)
    roles = {"train": "--data", "validation": "--validation", "test": "--test"}
    frames = {name: normalize_preferences(frame, roles[name], prompt=prompt, chosen=chosen, rejected=rejected)
              for name, frame in given.items()}
    notes: list[str] = []
    train = frames["train"]
    if "test" not in frames:
        if need_test:
            train, frames["test"] = split_off(train, test_size, seed)
            notes.append(f"test: {len(frames['test'])} pairs split off --data (seed {seed})")
        else:
            frames["test"] = train.iloc[:0]
    if "validation" not in frames:
        train, frames["validation"] = split_off(train, val_size, seed)
        notes.append(f"validation: {len(frames['validation'])} pairs split off --data (seed {seed})")
    return PreferenceData(train=train, validation=frames["validation"], test=frames["test"],
                          fingerprint=fingerprint(train, frames["validation"], frames["test"]), notes=notes)
