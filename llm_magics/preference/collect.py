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

Nothing is recorded for a pair that was not on screen: each click carries its pair's id and one on
any other pair is ignored with a note; the next pair is generated on a worker thread while the
widget says "generating the next pair…" with its buttons disabled (a double click, or a click on
the old prompt's buttons, records nothing).

The widget is driven by its own buttons, so a test can click them with comm messages in a
real kernel; `choose(i)`, `tie()`, `skip()`, `undo()` do the same from Python (waiting for a
pair being generated, then acting on the pair shown).
"""
from __future__ import annotations

import html
import json
import os
import threading
from pathlib import Path
from typing import Callable, Sequence

from ..errors import UsageError
from ..progress.theme import BORDER, MUTED, WARN
from ..progress.widget import Snapshot

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
    """`pair` is the id of the pair on screen; a click carries the id of the pair its buttons were shown with,
    so a click on a pair that is no longer (or not yet) shown is ignored with a note, never recorded against
    another prompt. Once the widget exists, the next pair is generated on a worker thread (the comm thread
    stays free; its buttons are disabled and it says "generating the next pair…" meanwhile)."""

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
        self.pair = 0
        self.generating = False
        self._failure: BaseException | None = None
        self._worker: threading.Thread | None = None
        self._lock = threading.RLock()   # clicks (comm thread) against the worker's new pair
        self._widget = None
        self.snapshot = Snapshot(self.snapshot_html)   # what the saved notebook keeps once the widget is gone
        self._show(self._draw())

    # ---- state ------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.index >= len(self.prompts)

    @property
    def prompt(self) -> str | None:
        return None if self.done else self.prompts[self.index]

    def _draw(self) -> tuple[list[str], list[str] | None]:
        drawn = [] if self.done else list(self.generate(self.prompts[self.index]))
        if drawn and isinstance(drawn[0], tuple):   # (text, model) from several models
            return [text for text, _ in drawn], [by for _, by in drawn]
        return drawn, None

    def _show(self, drawn: tuple[list[str], list[str] | None]) -> None:
        with self._lock:
            self.completions, self.sources = drawn
            self.pair += 1
            self.generating = False
        self._render()

    def _next(self) -> None:
        """The next prompt's pair: at once from Python (no widget), else on a worker thread."""
        if self._widget is None:
            self._show(self._draw())
            return
        self.generating = True
        self._render()
        self._worker = threading.Thread(target=self._generate_in_background, name="llm-magics-collect", daemon=True)
        self._worker.start()

    def _generate_in_background(self) -> None:
        try:
            drawn = self._draw()
        except Exception as error:  # noqa: BLE001 - shown in the widget; re-raised by wait() for a Python caller
            self._failure = error
            self.notes.append(f"generating the pair for prompt {self.index + 1} failed: "
                              f"{type(error).__name__}: {error}")
            drawn = ([], None)
        self._show(drawn)

    def wait(self) -> None:
        """Until the pair being generated is shown (a Python call acts on the pair on screen)."""
        worker = self._worker
        if worker is not None and worker is not threading.current_thread():
            worker.join()
        failure, self._failure = self._failure, None
        if failure is not None:
            raise failure

    def _accepts(self, pair: int | None) -> bool:
        if self.generating:
            note = "a click while the next pair was being generated was ignored"
        elif pair is not None and pair != self.pair:
            note = f"a click on pair {pair} was ignored: pair {self.pair} is on screen"
        else:
            return True
        self.notes.append(note)
        if self._widget is not None:
            self._status.value = self._status_html()
        return False

    def _record(self, records_of: Callable[[], list[dict]], pair: int | None) -> bool:
        """Append a choice about the pair on screen. `pair` None is a call from Python: it waits for a pair being
        generated first and for the next one after; a click (with the id of its pair) returns at once."""
        if pair is None:
            self.wait()
        with self._lock:
            if self.done or not self._accepts(pair):
                return False
            records = records_of()
            size = self.path.stat().st_size if self.path.exists() else 0
            append_lines(self.path, records)
            self.history.append((self.index, size, self.completions, self.sources))
            self.answered += 1
            self.index += 1
            self._next()
        if pair is None:
            self.wait()
        return True

    # ---- actions ----------------------------------------------------------------------
    def choose(self, best: int, pair: int | None = None) -> bool:
        return self._record(lambda: self._choice(best), pair)

    def _choice(self, best: int) -> list[dict]:
        prompt, texts = self.prompts[self.index], self.completions
        records = [{"prompt": prompt, "chosen": texts[best], "rejected": other, **self._by(best, j)}
                   for j, other in enumerate(texts) if j != best and other.strip() != texts[best].strip()]
        return records or [{"prompt": prompt, "event": "tie"}]   # every completion the same text: no preference

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

    def tie(self, pair: int | None = None) -> bool:
        return self._record(lambda: [{"prompt": self.prompts[self.index], "event": "tie"}], pair)

    def skip(self, pair: int | None = None) -> bool:
        return self._record(lambda: [{"prompt": self.prompts[self.index], "event": "skip"}], pair)

    def undo(self, pair: int | None = None) -> bool:
        if pair is None:
            self.wait()
        with self._lock:
            if not self.history or not self._accepts(pair):
                return False
            index, size, completions, sources = self.history.pop()
            with open(self.path, "r+", encoding="utf-8") as f:
                f.truncate(size)
                f.flush()
                os.fsync(f.fileno())
            self.index, self.answered = index, self.answered - 1
            # the same completions as before, not new samples
            self._show((completions, sources))
        return True

    # ---- the widget -------------------------------------------------------------------
    @property
    def widget(self):
        if self._widget is None:
            import ipywidgets as w
            self._prompt = w.HTML()
            self._answers = w.HBox()
            self._actions = w.HBox()
            self._status = w.HTML()
            self._buttons: list = []
            self._widget = w.VBox([self._prompt, self._answers, self._actions, self._status])
            self._render()
        return self._widget

    def _render(self) -> None:
        if self._widget is None:
            return
        with self._lock:
            for button in self._buttons:   # a pair's buttons stay disabled once it is answered
                button.disabled = True
            self._prompt.value = self._prompt_html()
            self._answers.children = self._answer_boxes()
            self._actions.children = self._action_row()
            self._status.value = self._status_html()
        self.snapshot.refresh(now=True)   # a click or a new pair: rare enough to send each at once

    def _prompt_html(self) -> str:
        if self.done:
            return "<b>All prompts answered.</b> Undo goes back one."
        return f"<div style='white-space:pre-wrap'><b>Prompt</b><br>{html.escape(self.prompt)}</div>"

    def _button(self, description: str, action: Callable[..., bool], *args):
        """A button of the pair on screen: its click carries that pair's id."""
        import ipywidgets as w
        button = w.Button(description=description, disabled=self.generating)
        button.on_click(lambda _, pair=self.pair: action(*args, pair=pair))
        self._buttons.append(button)
        return button

    def _answer_boxes(self) -> tuple:
        import ipywidgets as w
        if self.done or self.generating:
            return ()
        self._buttons = []
        boxes = []
        for i, text in enumerate(self.completions):
            label = self.labels[i] if self.labels else (chr(ord("A") + i) if self.sources else str(i + 1))
            boxes.append(w.VBox([w.HTML(f"<div style='white-space:pre-wrap;border:1px solid {BORDER};padding:6px;"
                                        f"min-width:240px'>{html.escape(text)}</div>"),
                                 self._button(f"{label} is better", self.choose, i)],
                                layout=w.Layout(flex="1")))
        return tuple(boxes)

    def _action_row(self) -> tuple:
        import ipywidgets as w
        if self.generating:
            buttons = []
        elif self.done:
            self._buttons = []
            buttons = [self._button("Undo", self.undo)]
        else:
            tie = [self._button("Tie", self.tie)] if self.completions else []   # none when generating failed
            buttons = [*tie, self._button("Skip", self.skip), self._button("Undo", self.undo)]
        counter = w.Label(f"{self.answered} answered · prompt {min(self.index + 1, len(self.prompts))} of "
                          f"{len(self.prompts)} · {self.path.name}")
        return (*buttons, counter)

    def _status_html(self) -> str:
        if self.generating:
            return f"<i style='color:{MUTED}'>generating the next pair…</i>"
        return f"<span style='color:{WARN}'>{html.escape(self.notes[-1])}</span>" if self.notes else ""

    def counts(self) -> dict[str, int]:
        """What the file holds: prompts with a choice, ties and skips."""
        records = read_records(self.path)
        return {"chosen": len({r.get("prompt") for r in records if "chosen" in r}),
                **{word: sum(r.get("event") == event for r in records) for event, word in
                   (("tie", "ties"), ("skip", "skipped"))}}

    def snapshot_html(self) -> str:
        """The session's state as static HTML: the prompt and answers on screen, the counts, the file."""
        answers = "" if self.done or self.generating else "".join(
            f"<div style='white-space:pre-wrap;border:1px solid {BORDER};padding:6px;margin:4px 0'>"
            f"{html.escape(text)}</div>" for text in self.completions)
        counts = " · ".join(f"{n} {word}" for word, n in self.counts().items())
        return (f"{self._prompt_html()}{answers}<div>{counts} · prompt {min(self.index + 1, len(self.prompts))} of "
                f"{len(self.prompts)} · <code>{html.escape(str(self.path))}</code></div>{self._status_html()}")

    def _ipython_display_(self) -> None:
        self.snapshot.display(self.widget)

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
    from ..engine.generation import complete
    return complete(model, tokenizer, [prompt] * k, max_new_tokens, do_sample=True, temperature=temperature,
                    top_k=0, top_p=1.0)


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
