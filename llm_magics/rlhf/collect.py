"""`%rlhf collect`: people rank completions in a widget; every choice lands in a JSONL file at once.

A prompt and k completions (k samples from one model, or one from each of several models,
adapters or tuned runs — `--models`) are shown side by side with a button each ("1 is better",
…), tie, skip and undo, and a counter. With several models the order is shuffled per prompt and
the names hidden (a blind comparison: position and name bias out); each pair line records which
model wrote which answer (`chosen_by`, `rejected_by`) and `session.tally()` counts the wins.
Each click appends its lines in one write and fsyncs the file: a dead kernel loses nothing but, at worst, a
last line cut off mid-write, which the next open moves aside (`<file>.torn-<n>`, with a note).
Ties and skips are written as `{"prompt", "event"}` lines (so resuming knows the prompt was
answered; the preference loader skips them). Undo truncates the file back to
before the last choice and shows that prompt again. Reopening the same file resumes after the
last prompt answered.

The widget is driven by its own buttons, so a test can click them with comm messages in a
real kernel; `choose(i)`, `tie()`, `skip()`, `undo()` do the same from Python.
"""
from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Callable, Sequence

from ..errors import UsageError

EVENTS = ("tie", "skip")


def read_records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    records = []
    for number, line in enumerate(_text(path).splitlines()):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                raise UsageError(f"{path}: line {number + 1} is not JSON; it is not a file %rlhf collect wrote") from None
    return records


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{path} is not UTF-8 text, so not a file %rlhf collect wrote; name a new .jsonl file") from None


def check_file(path: Path) -> None:
    """What `%rlhf collect FILE` can append to: a new file, or a UTF-8 JSONL file (checked before a model loads)."""
    if path.is_dir():
        raise UsageError(f"{path} is a folder; name a .jsonl file for the choices")
    if path.exists():
        _text(path)


def repair_torn_line(path: Path) -> str | None:
    """A kill mid-write can leave the last line cut off: it is moved aside to `<file>.torn-<n>` and every whole
    line kept, so resuming and `%rlhf reward --data` read the file. A note saying so, or None."""
    if not path.is_file():
        return None
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    tail = data[end:]
    if not tail:
        return None
    if _whole_record(tail):   # cut off just before its newline: the record is whole
        append_bytes(path, b"\n")
        return None
    aside = _free_name(path)
    aside.write_bytes(tail)
    with open(path, "r+b") as f:
        f.truncate(end)
        os.fsync(f.fileno())
    whole = data.count(b"\n")
    return f"{path.name}: its last line was cut off mid-write (a killed kernel); moved to {aside.name}, the {whole} " \
           "whole lines kept"


def _whole_record(tail: bytes) -> bool:
    try:
        return isinstance(json.loads(tail.decode("utf-8")), dict)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False


def _free_name(path: Path) -> Path:
    n = 1
    while path.with_name(f"{path.name}.torn-{n}").exists():
        n += 1
    return path.with_name(f"{path.name}.torn-{n}")


def append_lines(path: Path, records: list[dict]) -> None:
    """The records as whole lines in one write, fsynced: a kill leaves at most one torn last line (repaired on
    open), never a half-written line between whole ones."""
    append_bytes(path, "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records).encode("utf-8"))


def append_bytes(path: Path, blob: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        view = memoryview(blob)
        while view:   # a regular file takes it whole; a signal may cut a write short
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


class CollectSession:
    def __init__(self, path: Path, prompts: Sequence[str], generate: Callable[[str], list[str]], labels=None):
        self.path = Path(path)
        self.prompts = list(prompts)
        self.generate = generate
        self.labels = labels
        self.path.parent.mkdir(parents=True, exist_ok=True)
        check_file(self.path)
        note = repair_torn_line(self.path)
        self.notes = [note] if note else []
        answered = {r.get("prompt") for r in read_records(self.path)}
        last = max((i for i, p in enumerate(self.prompts) if p in answered), default=-1)
        self.index = last + 1
        self.answered = sum(1 for p in self.prompts if p in answered)
        self.resumed_at = self.index
        self.history: list[tuple[int, int, list[str], list | None]] = []  # (prompt, file size before, texts, by)
        self.completions: list[str] = []
        self.sources: list[str] | None = None   # which model wrote each completion (several models only)
        self._widget = None
        self._load()

    # ---- state ------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.index >= len(self.prompts)

    @property
    def prompt(self) -> str | None:
        return None if self.done else self.prompts[self.index]

    def _load(self) -> None:
        drawn = [] if self.done else list(self.generate(self.prompts[self.index]))
        if drawn and isinstance(drawn[0], tuple):   # (text, model) from several models
            self.completions, self.sources = [text for text, _ in drawn], [by for _, by in drawn]
        else:
            self.completions, self.sources = drawn, None
        self._render()

    def _append(self, records: list[dict]) -> None:
        size = self.path.stat().st_size if self.path.exists() else 0
        append_lines(self.path, records)
        self.history.append((self.index, size, self.completions, self.sources))
        self.answered += 1
        self.index += 1
        self._load()

    # ---- actions ----------------------------------------------------------------------
    def choose(self, best: int) -> None:
        if self.done:
            return
        prompt, texts = self.prompts[self.index], self.completions
        records = [{"prompt": prompt, "chosen": texts[best], "rejected": other, **self._by(best, j)}
                   for j, other in enumerate(texts) if j != best and other.strip() != texts[best].strip()]
        if not records:   # every completion is the same text: no preference to record
            records = [{"prompt": prompt, "event": "tie"}]
        self._append(records)

    def _by(self, best: int, other: int) -> dict:
        return {} if self.sources is None else {"chosen_by": self.sources[best], "rejected_by": self.sources[other]}

    def tally(self):
        """Wins per model over the pairs in the file (several models only): a DataFrame."""
        import pandas as pd
        pairs = [r for r in read_records(self.path) if "chosen_by" in r]
        names = sorted({r["chosen_by"] for r in pairs} | {r["rejected_by"] for r in pairs})
        rows = [{"model": n, "wins": sum(r["chosen_by"] == n for r in pairs),
                 "losses": sum(r["rejected_by"] == n for r in pairs)} for n in names]
        frame = pd.DataFrame(rows, columns=["model", "wins", "losses"])
        frame["win_rate"] = frame["wins"] / (frame["wins"] + frame["losses"]).clip(lower=1)
        return frame.sort_values("win_rate", ascending=False, ignore_index=True)

    def tie(self) -> None:
        if not self.done:
            self._append([{"prompt": self.prompts[self.index], "event": "tie"}])

    def skip(self) -> None:
        if not self.done:
            self._append([{"prompt": self.prompts[self.index], "event": "skip"}])

    def undo(self) -> None:
        if not self.history:
            return
        index, size, completions, sources = self.history.pop()
        with open(self.path, "r+", encoding="utf-8") as f:
            f.truncate(size)
            f.flush()
            os.fsync(f.fileno())
        self.index, self.answered = index, self.answered - 1
        self.completions, self.sources = completions, sources   # the same completions as before, not new samples
        self._render()

    # ---- the widget -------------------------------------------------------------------
    @property
    def widget(self):
        if self._widget is None:
            import ipywidgets as w
            self._prompt = w.HTML()
            self._answers = w.HBox()
            self._counter = w.Label()
            self._tie, self._skip, self._undo = w.Button(description="Tie"), w.Button(description="Skip"), \
                w.Button(description="Undo")
            self._tie.on_click(lambda _: self.tie())
            self._skip.on_click(lambda _: self.skip())
            self._undo.on_click(lambda _: self.undo())
            self._widget = w.VBox([self._prompt, self._answers,
                                   w.HBox([self._tie, self._skip, self._undo, self._counter])])
            self._render()
        return self._widget

    def _render(self) -> None:
        if self._widget is None:
            return
        import ipywidgets as w
        self._counter.value = f"{self.answered} answered · prompt {min(self.index + 1, len(self.prompts))} of " \
                              f"{len(self.prompts)} · {self.path.name}"
        if self.done:
            self._prompt.value = "<b>All prompts answered.</b> Undo goes back one."
            self._answers.children = ()
            return
        self._prompt.value = f"<div style='white-space:pre-wrap'><b>Prompt</b><br>{html.escape(self.prompt)}</div>"
        boxes = []
        for i, text in enumerate(self.completions):
            label = self.labels[i] if self.labels else (chr(ord("A") + i) if self.sources else str(i + 1))
            button = w.Button(description=f"{label} is better")
            button.on_click(lambda _, i=i: self.choose(i))
            boxes.append(w.VBox([w.HTML(f"<div style='white-space:pre-wrap;border:1px solid #ccc;padding:6px;"
                                        f"min-width:240px'>{html.escape(text)}</div>"), button],
                                layout=w.Layout(flex="1")))
        self._answers.children = boxes

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    def __repr__(self) -> str:
        return (f"<CollectSession {self.path}: {self.answered} answered, prompt {self.index + 1} of "
                f"{len(self.prompts)}>")


def _prompt_seed(seed: int, prompt: str) -> int:
    """A per-prompt seed: a prompt shows the same samples (and order) after a restart."""
    import zlib
    return (seed * 1_000_003 + zlib.crc32(prompt.encode("utf-8"))) % (2 ** 31)


def sampler(model, tokenizer, k: int, max_new_tokens: int, temperature: float, seed: int):
    """k sampled completions of one prompt, from one model (drawn from the run's seed, not the global RNG)."""
    from ..engine.rng import seeded

    def generate(prompt: str) -> list[str]:
        with seeded(_prompt_seed(seed, prompt)):
            return _generate_one(model, tokenizer, prompt, k, max_new_tokens, temperature)
    return generate


def _generate_one(model, tokenizer, prompt: str, k: int, max_new_tokens: int, temperature: float) -> list[str]:
    import torch

    from ..engine.device import eval_mode
    device = next(model.parameters()).device
    enc = tokenizer([prompt] * k, return_tensors="pt").to(device)
    with torch.no_grad(), eval_mode(model):
        out = model.generate(**enc, do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
                             max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id)
    return tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)


def blind_sampler(writers: dict[str, Callable[[], object]], max_new_tokens: int, temperature: float, seed: int):
    """One completion of a prompt from each writer (name → a context manager factory yielding
    (model, tokenizer)), in an order shuffled per prompt from the seed: the same after a restart."""
    import random

    from ..engine.rng import seeded
    names = list(writers)

    def generate(prompt: str) -> list[tuple[str, str]]:
        key = _prompt_seed(seed, prompt)
        order = names[:]
        random.Random(key).shuffle(order)
        drawn = []
        for name in order:
            with writers[name]() as (model, tokenizer), seeded(key + names.index(name)):
                drawn.append((_generate_one(model, tokenizer, prompt, 1, max_new_tokens, temperature)[0], name))
        return drawn
    return generate
