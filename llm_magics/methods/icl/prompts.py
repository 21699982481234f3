"""The pieces of an in-context prompt: templates, verbalizers, demonstrations.

A template is text with `{field}` placeholders filled from data columns.
Only `{identifier}` is a field, so JSON or code braces in a prompt survive;
`{{` and `}}` write a literal brace. The answer slot (`{label}` unless
`--label` names another) is where a demonstration shows its answer and where
the model's answer goes for the query.
"""
from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ...errors import UsageError, did_you_mean

FIELD = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")
SEPARATOR = re.compile(r"^[ \t]*---[ \t]*$", re.MULTILINE)
CONTENT_FREE = ("N/A", "", "[MASK]")     # Zhao et al. 2021, contextual calibration


@dataclass(frozen=True)
class Template:
    text: str
    number: int = 1

    @property
    def fields(self) -> list[str]:
        seen: dict[str, None] = {}
        for match in FIELD.finditer(self.text):
            if match.group(1):
                seen.setdefault(match.group(1))
        return list(seen)

    def render(self, values: Mapping[str, str], until: str | None = None) -> str:
        """Fill the fields; with `until`, stop where that field's placeholder is."""
        out, pos = [], 0
        for match in FIELD.finditer(self.text):
            out.append(self.text[pos:match.start()])
            token, name = match.group(0), match.group(1)
            if name is None:
                out.append(token[0])
            elif name == until:
                return "".join(out)
            else:
                out.append(values[name])
            pos = match.end()
        out.append(self.text[pos:])
        return "".join(out)

    def opening(self, slot: str | None) -> str:
        """The spaces right before the answer slot ('Sentiment: {label}' → ' '). They belong to the
        answer's first token for the tokenizer (' positive', not ' ' + 'positive')."""
        for match in FIELD.finditer(self.text):
            if match.group(1) == slot:
                before = self.text[:match.start()]
                return before[len(before.rstrip(" \t")):]
        return ""

    def query(self, values: Mapping[str, str], slot: str | None) -> str:
        """The prompt for a row: rendered up to the answer slot, without the slot's opening spaces."""
        if slot not in self.fields:
            return self.render(values)
        text, opening = self.render(values, until=slot), self.opening(slot)
        return text[:len(text) - len(opening)] if opening and text.endswith(opening) else text

    def short(self, width: int = 60) -> str:
        flat = " ⏎ ".join(line.strip() for line in self.text.strip().splitlines() if line.strip())
        return flat if len(flat) <= width else flat[:width - 1] + "…"


def split_templates(body: str | None) -> list[Template]:
    """The cell's templates, separated by lines holding only `---`."""
    if body is None or not body.strip():
        raise UsageError("the prompt template is empty: write it in the cell body, e.g. "
                         "'Review: {text}\\nSentiment: {label}'")
    parts = [part.strip("\n") for part in SEPARATOR.split(body)]
    if any(not part.strip() for part in parts):
        raise UsageError("a template between '---' lines is empty; remove the extra '---'")
    return [Template(part.rstrip(), i + 1) for i, part in enumerate(parts)]


def check_fields(templates: Sequence[Template], frame: pd.DataFrame, role: str, skip: set[str],
                 hint: dict[str, str] | None = None) -> None:
    """Every field a template names must be a column of `frame` (except those in `skip`)."""
    columns = [str(c) for c in frame.columns]
    for template in templates:
        for name in template.fields:
            if name in skip or name in columns:
                continue
            where = f"template {template.number}: " if len(templates) > 1 else ""
            extra = (hint or {}).get(name, "")
            raise UsageError(f"{where}{{{name}}} is not a column of {role}" + did_you_mean(name, columns)
                             + f" (columns: {', '.join(columns)})" + extra)


def as_text(value) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def row_values(frame: pd.DataFrame, names: Sequence[str], answer: str | None = None) -> list[dict[str, str]]:
    """Each row's fields as prompt text; the `answer` column as one answer (see answer_text)."""
    present = [n for n in names if n in frame.columns]
    columns = {n: [(answer_text if n == answer else as_text)(v) for v in frame[n].tolist()] for n in present}
    return [{n: columns[n][i] for n in present} for i in range(len(frame))]


# ---- verbalizers -------------------------------------------------------------------------

@dataclass
class LabelMap:
    """Verbalizers (what the model is scored on) and which gold value each stands for."""
    words: list[str]
    index: dict[str, int] = field(default_factory=dict)   # gold value (as text) → verbalizer index
    note: str = ""

    def code(self, value) -> int:
        """The verbalizer index of a gold value; -1 when unknown."""
        return self.index.get(as_text(value).strip(), -1)


def parse_labels(labels: Sequence[str], gold: Sequence) -> LabelMap:
    """Match `--labels` to the gold values: by name, by position (0, 1, …) or sorted order, or
    explicit `value=word` pairs."""
    entries = [str(x) for x in labels]
    if len(entries) < 2:
        raise UsageError(f"--labels needs at least two verbalizers, got {', '.join(entries) or 'none'}")
    if all("=" in e for e in entries):
        pairs = [e.split("=", 1) for e in entries]
        words = [w for _, w in pairs]
        _check_words(words)
        return LabelMap(words, {v.strip(): i for i, (v, _) in enumerate(pairs)})
    _check_words(entries)
    values = sorted({as_text(v).strip() for v in gold if as_text(v).strip() != ""})
    if not values or set(values) <= set(entries):
        return LabelMap(entries, {w: i for i, w in enumerate(entries)})
    if all(v.lstrip("-").isdigit() for v in values) and {int(v) for v in values} <= set(range(len(entries))):
        mapping = {str(i): i for i in range(len(entries))}
        note = "labels by position: " + ", ".join(f"{i} → {w}" for i, w in enumerate(entries))
        return LabelMap(entries, mapping, note)
    if len(values) == len(entries):
        note = "labels in sorted order: " + ", ".join(f"{v} → {w}" for v, w in zip(values, entries))
        return LabelMap(entries, {v: i for i, v in enumerate(values)}, note)
    raise UsageError(f"--labels {','.join(entries)} do not match the gold labels ({', '.join(values[:6])}); "
                     f"map them, e.g. --labels {values[0]}={entries[0]},{values[-1]}={entries[-1]}")


def _check_words(words: Sequence[str]) -> None:
    for word in words:
        if not word.strip():
            raise UsageError("a label in --labels is empty: it tokenizes to nothing; pick verbalizers that are words")
    if len(set(words)) != len(words):
        raise UsageError(f"--labels repeats a verbalizer ({', '.join(words)}); each label needs its own")


# ---- demonstrations -------------------------------------------------------------------------

def select_fixed(n_pool: int, shots: int, how: str, seed: int, classes: np.ndarray | None) -> tuple[list[int], str]:
    """Pool rows for one demonstration set shared by every query: (indices, note)."""
    if shots > n_pool:
        raise UsageError(f"--shots {shots} is more than the {n_pool} demonstrations in --demos; "
                         f"use --shots {n_pool} or fewer")
    rng = np.random.default_rng(seed)
    if how == "random" or classes is None:
        return rng.permutation(n_pool)[:shots].tolist(), ""
    # balanced: round-robin over classes, each class's rows shuffled; a short class is topped up from others
    kinds = sorted(set(classes.tolist()))
    queues = {c: rng.permutation(np.flatnonzero(classes == c)).tolist() for c in kinds}
    chosen: list[int] = []
    note = ""
    while len(chosen) < shots:
        progressed = False
        for c in kinds:
            if queues[c] and len(chosen) < shots:
                chosen.append(queues[c].pop(0))
                progressed = True
        if not progressed:
            break
    counts = {c: int(np.sum(classes[chosen] == c)) for c in kinds}
    if len(set(counts.values())) > 1 and shots % len(kinds) == 0:
        note = "balanced demonstrations topped up from other labels: " + \
               ", ".join(f"{c}: {n}" for c, n in counts.items())
    order = rng.permutation(len(chosen))
    return [chosen[i] for i in order], note


class SimilarDemos:
    """Per query, the pool rows nearest to it (sentence-embedding cosine, FAISS flat index).

    The nearest goes last, next to the query. A pool row identical to the query
    is skipped, so a query never sees its own answer."""

    def __init__(self, embedder, pool_texts: Sequence[str]):
        import faiss
        self.embedder = embedder
        self.pool_texts = list(pool_texts)
        vectors, _ = embedder.encode(self.pool_texts)
        self.index = faiss.IndexFlatIP(vectors.shape[1])
        self.index.add(vectors)

    def select(self, queries: Sequence[str], shots: int) -> list[list[int]]:
        if shots > len(self.pool_texts):
            raise UsageError(f"--shots {shots} is more than the {len(self.pool_texts)} demonstrations in --demos; "
                             f"use --shots {len(self.pool_texts)} or fewer")
        vectors, _ = self.embedder.encode(list(queries))
        _, found = self.index.search(vectors, min(shots + 1, len(self.pool_texts)))
        out = []
        for query, row in zip(queries, found):
            picked = [int(i) for i in row if i >= 0 and self.pool_texts[i] != query][:shots]
            out.append(picked[::-1])
        return out


# ---- answers -------------------------------------------------------------------------------

def normalise_answer(text: str) -> str:
    """SQuAD's answer normalisation: lower case, no punctuation, no articles, single spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in string.punctuation)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def gold_answers(value) -> list[str]:
    """A gold answer cell: a string, a list of strings, or SQuAD's [{'text': ...}] list."""
    if isinstance(value, (list, tuple, np.ndarray)):
        out = []
        for item in value:
            out += gold_answers(item)
        return out
    if isinstance(value, dict):
        return gold_answers(value.get("text", ""))
    text = as_text(value)
    return [text] if text.strip() else []


def answer_text(value) -> str:
    """The answer a demonstration shows. Answer columns often hold every acceptable answer (a list,
    or SQuAD's {'text': [...], 'answer_start': [...]}); a demonstration shows the first, not a repr."""
    answers = gold_answers(value)
    return answers[0] if answers else ""


# ---- how a prompt is laid out ----------------------------------------------------------------

class PromptFormat:
    """Demonstrations and the query as text, in one of two layouts.

    plain: each demonstration rendered with the template, joined by the separator, then the
    query rendered up to its answer slot; an answer opens with the template's space before the slot.
    chat: the model's chat template — each demonstration a user turn (the template up to the slot)
    and an assistant turn (its answer), the query the last user turn; the answer opens the
    assistant's turn. Text after the slot is left out of chat turns.

    A prompt is (prefix, query): the prefix is what many rows share (the demonstrations), so
    its KV cache is computed once."""

    def __init__(self, template: Template, slot: str, separator: str = "\n\n", chat=None):
        self.template, self.slot, self.separator, self.chat = template, slot, separator, chat

    @property
    def opening(self) -> str:
        return "" if self.chat else self.template.opening(self.slot)

    def _user(self, values: Mapping[str, str]) -> str:
        return self.template.query(values, self.slot).strip()

    def _turns(self, demos: Sequence[Mapping[str, str]]) -> list[dict]:
        turns: list[dict] = []
        for d in demos:
            turns += [{"role": "user", "content": self._user(d)}, {"role": "assistant", "content": d[self.slot]}]
        return turns

    def prefix(self, demos: Sequence[Mapping[str, str]]) -> str:
        """The demonstrations, each holding its answer under the slot."""
        if not demos:
            return ""
        if self.chat:
            return self.chat(self._turns(demos), False)
        return "".join(self.template.render(d) + self.separator for d in demos)

    def query(self, values: Mapping[str, str], demos: Sequence[Mapping[str, str]] = (),
              prefix: str | None = None) -> str:
        """The row's part of the prompt, to follow `prefix(demos)`."""
        if not self.chat:
            return self.template.query(values, self.slot)
        head = self.prefix(demos) if prefix is None else prefix
        whole = self.chat(self._turns(demos) + [{"role": "user", "content": self._user(values)}], True)
        if not whole.startswith(head):
            raise UsageError("the model's chat template renders earlier turns differently once a turn follows; "
                             "drop --chat for this model")
        return whole[len(head):]
