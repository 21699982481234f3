"""What every template of one `%%icl` run shares: the rows, the answer slot, the verbalizers and gold
values, the demonstrations chosen (and how), and any retrieved context."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ...data import load_frame
from ...data.columns import require_column
from ...engine.device import pick_dtype
from ...errors import UsageError
from .options import IclOptions
from .prompts import LabelMap, SimilarDemos, Template, as_text, check_fields, gold_answers, parse_labels, \
    row_values, select_fixed

DEFAULT_SLOT = "label"
MAX_LABEL_VALUES = 20    # a column with more distinct values is not a label column


@dataclass
class Inputs:
    data: pd.DataFrame
    rows: list[dict]
    demo_rows: list[dict]
    fixed: list[int] | None          # one demonstration set for all rows, or
    similar: list[list[int]] | None  # one per row
    labels: LabelMap | None
    gold: np.ndarray | None          # verbalizer index per row (scoring), -1 unknown
    answers: list[list[str]] | None  # gold answers per row (generation)
    slot: str
    fields: list[str]
    selection: str = ""              # how the demonstrations were chosen, in words
    notes: list[str] = field(default_factory=list)

    def labelled(self) -> int:
        """Rows of --data with a gold label or answer: the ones the metrics are over."""
        if self.gold is not None:
            return int((self.gold >= 0).sum())
        return sum(1 for a in self.answers if a) if self.answers is not None else 0


def load_inputs(o: IclOptions, templates: list[Template], ctx) -> Inputs:
    notes: list[str] = []
    shots = o.shots_used
    data = load_frame(o.data, ctx.namespace, "--data")
    if data.empty:
        raise UsageError("--data is empty; pass a table with at least one row")
    if o.limit and len(data) > o.limit:
        data = data.head(o.limit).reset_index(drop=True)
        notes.append(f"--limit {o.limit}: the first {o.limit} rows of --data")
    demos = load_frame(o.demos, ctx.namespace, "--demos") if o.demos is not None else None
    slot = answer_slot(o, templates, data, demos if shots else None, notes)
    if shots and demos is None:
        raise UsageError(f"--shots {shots} needs --demos: a table of demonstrations with the template's fields "
                         f"and {{{slot}}}")
    for t in templates:
        if (o.scoring or shots) and slot not in t.fields:
            where = f"template {t.number}" if len(templates) > 1 else "the template"
            raise UsageError(f"{where} has no answer slot {{{slot}}}: put it where the answer goes "
                             "(or name the slot with --label)")
    uses_context = any("context" in t.fields for t in templates)
    if o.index and not uses_context:
        raise UsageError("--index fills {context}: put {context} in the template where the chunks go")
    skip = {slot} | ({"context"} if o.index else set())
    hint = {} if o.index else {"context": "; pass --index NAME to fill {context} from an index"}
    check_fields(templates, data, "--data", skip, hint)
    if shots:
        check_fields(templates, demos, "--demos", skip - {slot}, hint)
        if len(demos) == 0:
            raise UsageError("--demos is empty")
    query_field = _query_field(o, templates, data, demos if shots else None, slot) \
        if (o.index or o.select == "similar") else None
    fields = sorted({f for t in templates for f in t.fields} | {slot} | ({query_field} if query_field else set()))
    rows = row_values(data, fields, answer=slot)
    demo_rows = row_values(demos, fields, answer=slot) if shots else []
    labels, gold, answers = _golds(o, data, demos if shots else None, slot, notes)
    inputs = Inputs(data, rows, demo_rows, None, None, labels, gold, answers, slot,
                    [f for t in templates for f in t.fields if f in data.columns], notes=notes)
    if shots:
        _choose(o, ctx, inputs, shots, query_field)
    if o.index:
        _retrieve(o, ctx, inputs, query_field)
    return inputs


def answer_slot(o: IclOptions, templates: list[Template], data: pd.DataFrame, demos: pd.DataFrame | None,
                notes: list[str]) -> str:
    """--label, else {label}, else (scoring) the one label column of the data that every template names:
    a column whose few distinct values --labels names."""
    if o.label:
        return o.label
    named = [f for f in templates[0].fields if all(f in t.fields for t in templates)]
    if DEFAULT_SLOT in named or not o.scoring:
        return DEFAULT_SLOT
    frames = [f for f in (demos, data) if f is not None]
    found = [f for f in named if f != "context" and any(f in x.columns for x in frames)
             and all(_is_label_column(x[f], o.labels) for x in frames if f in x.columns)]
    if len(found) == 1:
        notes.append(f"answer slot: {{{found[0]}}}, the template's one label column (--label names another)")
        return found[0]
    if len(found) > 1:
        raise UsageError(f"the template names several label columns ({', '.join(found)}); "
                         f"say which is the answer slot with --label, e.g. --label {found[-1]}")
    return DEFAULT_SLOT


def _is_label_column(column: pd.Series, labels: list[str]) -> bool:
    """Few distinct values, each named by --labels: a column of class labels."""
    values = {as_text(v).strip() for v in column.tolist()} - {""}
    if not values or len(values) > MAX_LABEL_VALUES:
        return False
    try:
        parsed = parse_labels(labels, list(values))
    except UsageError:
        return False
    if parsed.note.startswith("labels in sorted order"):
        return False   # any two distinct texts pair up with two words that way: not evidence of labels
    return all(parsed.code(v) >= 0 for v in values)


def _query_field(o: IclOptions, templates: list[Template], data: pd.DataFrame, demos: pd.DataFrame | None,
                 slot: str) -> str:
    """The column each row (and each demonstration) is looked up by; it need not be in the template."""
    if o.query_field:
        require_column(data, o.query_field, "--query-field")
        if demos is not None:
            require_column(demos, o.query_field, "--query-field", "--demos")
        return o.query_field
    for name in templates[0].fields:
        if name not in (slot, "context") and name in data.columns:
            return name
    raise UsageError("no template field can be the query for retrieval; name one with --query-field")


def _golds(o: IclOptions, data: pd.DataFrame, demos: pd.DataFrame | None, slot: str, notes: list[str]):
    """(verbalizers, gold codes, gold answers). Rows of --data without a gold value are run but
    left out of the metrics; all of them missing means no metrics at all (not NaN ones)."""
    if not o.scoring:
        answers = [gold_answers(v) for v in data[slot].tolist()] if slot in data.columns else []
        known = sum(1 for a in answers if a)
        _note_labelled(notes, known, len(data), "exact match", slot)
        return None, None, answers if known else None
    gold_values = (data[slot].tolist() if slot in data.columns else []) + \
                  (demos[slot].tolist() if demos is not None else [])
    labels = parse_labels(o.labels, gold_values)
    if labels.note:
        notes.append(labels.note)
    if demos is not None:
        _gold_codes(labels, demos, slot, "--demos")
    gold = _gold_codes(labels, data, slot, "--data", missing_ok=True)
    known = int((gold >= 0).sum()) if gold is not None else 0
    _note_labelled(notes, known, len(data), "accuracy", slot)
    return labels, (gold if known else None), None


def _gold_codes(labels: LabelMap, frame: pd.DataFrame, slot: str, role: str,
                missing_ok: bool = False) -> np.ndarray | None:
    """Verbalizer index per row; -1 where the row has no gold value (an error unless missing_ok)."""
    if slot not in frame.columns:
        return None
    values = frame[slot].tolist()
    codes = np.array([labels.code(v) for v in values])
    missing = np.array([as_text(v).strip() == "" for v in values])
    if not missing_ok and missing.any():
        raise UsageError(f"{role}: row {int(np.argmax(missing))} has no {slot!r}; every demonstration needs "
                         "its answer (drop the unlabelled rows)")
    unknown = [v for v, c, m in zip(values, codes, missing) if c < 0 and not m]
    if unknown:
        raise UsageError(f"{role}: label {unknown[0]!r} in column {slot!r} has no verbalizer in --labels "
                         f"({', '.join(labels.words)}); add it, or map values with value=word")
    return codes


def _note_labelled(notes: list[str], known: int, total: int, metric: str, slot: str) -> None:
    if 0 < known < total:
        notes.append(f"{metric} over the {known} of {total} rows of --data that have a {slot!r}; "
                     "the others are predicted but not scored")


def _choose(o: IclOptions, ctx, inputs: Inputs, shots: int, query_field: str | None) -> None:
    """Pick the demonstrations, and say how in `inputs.selection`."""
    how = o.select if o.select != "auto" else ("balanced" if o.scoring else "random")
    pool = inputs.demo_rows
    if how == "similar":
        from ...retrieval import load_embedder
        device = ctx.device(o.device)
        embedder = load_embedder(o.embed_model, device, pick_dtype(device))
        selector = SimilarDemos(embedder, [r[query_field] for r in pool])
        inputs.similar = selector.select([r[query_field] for r in inputs.rows], shots)
        inputs.selection = (f"{shots} demonstrations per query: its nearest of the {len(pool)} rows of --demos "
                            f"by {query_field!r} ({o.embed_model} embeddings, --select similar), the nearest last")
        return
    slot, labels = inputs.slot, inputs.labels
    classes = np.array([labels.code(r.get(slot, "")) for r in pool]) if labels else \
        np.array([r.get(slot, "") for r in pool], dtype=object)
    inputs.fixed, note = select_fixed(len(pool), shots, how, o.seed, classes if how == "balanced" else None)
    if note:
        inputs.notes.append(note)
    answers = [labels.words[labels.code(pool[i].get(slot, ""))] if labels else pool[i].get(slot, "")
               for i in inputs.fixed]
    counts = pd.Series(answers).value_counts(sort=False)
    shown = ", ".join(f"{k} ×{v}" for k, v in counts.items()) if len(counts) <= 8 else f"{len(counts)} answers"
    auto = " (--select auto)" if o.select == "auto" else ""
    inputs.selection = (f"{shots} demonstrations, {how}{auto}, seed {o.seed}, from the {len(pool)} rows of --demos: "
                        f"rows {', '.join(str(i) for i in inputs.fixed)} ({shown}); "
                        "result.tables['demonstrations'] lists them")


def _retrieve(o: IclOptions, ctx, inputs: Inputs, query_field: str) -> None:
    """Put each row's (and each used demonstration's) top chunks into its `context` value."""
    from ...retrieval import open_index
    index = open_index(o.index)
    embedder = index.embedder(ctx.device(o.device), o.trust_remote_code)  # queries embedded as the chunks were
    used = sorted(set(inputs.fixed or []) | {i for row in (inputs.similar or []) for i in row})
    targets = inputs.rows + [inputs.demo_rows[i] for i in used]
    queries = [r[query_field] for r in targets]
    found = index.search(queries, o.top_k, embedder)
    texts: list[list[str]] = [[] for _ in targets]
    for qid, text in zip(found["query_id"].tolist(), found["text"].tolist()):
        texts[qid].append(text)
    for target, chunks in zip(targets, texts):
        target["context"] = "\n\n".join(chunks)
