"""One `%%icl` run: its templates, backend, inputs and progress held together, scored or generated,
stopped cleanly on Stop or a kernel interrupt, and turned into a Result."""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd

from ...backends import GenerateSettings
from ...data import fingerprint, load_frame
from ...engine.loop import _InterruptToStop
from ...errors import UsageError
from ...runs import predictions as per_item
from ...runs.stats import item_id
from .inputs import Inputs
from .options import STREAM_ROWS, IclOptions, unescape
from .prompts import CONTENT_FREE, PromptFormat, Template, check_fields, row_values
from .result import IclResult, classification_metrics, demonstrations_table, generation_metrics, ranking
from .prompts import normalise_answer


class IclRun:
    def __init__(self, o: IclOptions, ctx, templates: list[Template], backend, inputs: Inputs, method: str = "icl"):
        self.o, self.ctx, self.templates, self.backend, self.inputs = o, ctx, templates, backend, inputs
        self.method = method
        self.shots = o.shots_used
        self.with_zero_shot = o.scoring and self.shots > 0 and o.zero_shot
        self.chat = backend.chat_text if o.chat else None
        self.progress = None
        self.stopped = False

    def format(self, template: Template) -> PromptFormat:
        return PromptFormat(template, self.inputs.slot, unescape(self.o.separator), self.chat)

    # ---- the run ------------------------------------------------------------------------------------
    def execute(self) -> IclResult:
        context = getattr(self.backend, "context", None)   # an API backend's context is not known here
        if not self.o.scoring and context and self.o.max_tokens >= context:
            raise UsageError(f"--max-tokens {self.o.max_tokens} is not below {self.backend.name}'s context of "
                             f"{context} tokens, which the prompt shares; ask for fewer (default 32)")
        self.progress = self.ctx.progress(f"icl · {self.backend.name}")
        self.progress.start(total=self.work(), unit="queries", model=self.backend.name, device=self.backend.device)
        started = time.perf_counter()
        with _InterruptToStop(self.progress):
            records = self.score_all() if self.o.scoring else self.generate_all()
        result = self.result(records, time.perf_counter() - started)
        self.progress.end(result.status,
                          **{k: v for k, v in result.metrics.items() if k in ("test_accuracy", "test_exact_match")})
        return result

    def work(self) -> int:
        """Prompts the run will score or generate, content-free calibration prompts included."""
        n = len(self.inputs.rows)
        if not self.o.scoring:
            return n * len(self.templates)
        calibration = (n if self.inputs.similar is not None else len(CONTENT_FREE)) if self.o.calibrate else 0
        per_template = n + calibration
        if self.with_zero_shot:
            per_template += n + (len(CONTENT_FREE) if self.o.calibrate else 0)
        return per_template * len(self.templates)

    def _stop_requested(self) -> bool:
        self.stopped = self.stopped or bool(self.progress and self.progress.should_stop)
        return self.stopped

    # ---- prompts ------------------------------------------------------------------------------------
    def requests(self, template: Template, rows: list[dict], with_demos: bool,
                 similar: list[list[int]] | None = None) -> tuple[list[tuple[str, str]], str]:
        """(prefix, query) per row, and the whitespace that opens the answer."""
        fmt = self.format(template)
        p = self.inputs

        def shown(indices: list[int]) -> list[dict]:
            return [{**p.demo_rows[i], p.slot: self._answer(p.demo_rows[i])} for i in indices]

        fixed = shown(p.fixed) if with_demos and p.fixed else []
        shared = fmt.prefix(fixed)
        out = []
        for i, row in enumerate(rows):
            if with_demos and similar is not None:
                demos = shown(similar[i])
                head = fmt.prefix(demos)
            else:
                demos, head = fixed, shared
            out.append((head, fmt.query(row, demos, head)))
        return out, fmt.opening

    def _answer(self, demo: dict) -> str:
        value, labels = demo.get(self.inputs.slot, ""), self.inputs.labels
        return labels.words[labels.code(value)] if labels else value

    # ---- scoring ------------------------------------------------------------------------------------
    def score_all(self) -> list[dict]:
        records = []
        for template in self.templates:
            record = {"template": template.number, "text": template.short()}
            record.update(self.score(template, with_demos=True, prefix=""))
            if self.with_zero_shot and not self._stop_requested():
                zero = self.score(template, with_demos=False, prefix="zero_shot_")
                if not self._stop_requested():   # a zero-shot pass cut short is not shown beside a whole one
                    record.update(zero)
            records.append(record)
            self.progress.eval(**{k: v for k, v in record.items() if k in ("accuracy", "zero_shot_accuracy")})
            if self._stop_requested():
                break
        return records

    def score(self, template: Template, with_demos: bool, prefix: str) -> dict:
        p = self.inputs
        requests, opening = self.requests(template, p.rows, with_demos, p.similar)
        logp, uncalibrated, done = self.classify(template, requests, opening)
        predicted = logp.argmax(axis=1)
        out: dict[str, Any] = {f"{prefix}predicted": predicted, f"{prefix}logp": logp, f"{prefix}done": done,
                               f"{prefix}rows": int(done.sum())}
        if self.o.calibrate:
            out[f"{prefix}uncalibrated_predicted"] = uncalibrated
        if p.gold is not None:
            gold = np.where(done, p.gold, -1)
            out.update(classification_metrics(gold, predicted, len(p.labels.words), prefix))
            if self.o.calibrate:
                uncal = classification_metrics(gold, uncalibrated, len(p.labels.words), "")
                if uncal:
                    out[f"{prefix}uncalibrated_accuracy"] = uncal["accuracy"]
        if not prefix:
            out["_prompt"] = requests[0][0] + requests[0][1]
        return out

    def classify(self, template: Template, requests, opening: str, progress=True):
        """Per request: the labels' log-probabilities (calibrated when the run calibrates), the choice
        made without calibration, and which requests were scored (all, unless stopped)."""
        progress = self.progress if progress else None
        words = [opening + w for w in self.inputs.labels.words]
        extra = self._content_free(template, requests) if self.o.calibrate else []
        per_row = bool(extra) and extra[0][1] >= 0
        prior = None
        if extra and not per_row:       # the shared prior first, so rows scored before a stop are calibrated
            table = self.backend.score([r for r, _ in extra], words, progress)
            prior = self._prior(np.nan_to_num(table.normalised(self.o.score)), extra, len(requests))
        table = self.backend.score(requests + ([r for r, _ in extra] if per_row else []), words, progress)
        scores = table.normalised(self.o.score)
        done = np.ones(len(scores), dtype=bool) if table.done is None else table.done.copy()
        scores = np.where(done[:, None], scores, 0.0)
        main = scores[:len(requests)]
        logp = main - _logsumexp(main)
        uncalibrated = logp.argmax(axis=1)
        if per_row:
            done = done[:len(requests)] & done[len(requests):]
            prior = self._prior(scores[len(requests):], extra, len(requests))
        if prior is not None:
            logp = logp - np.log(prior)
        return logp, uncalibrated, done[:len(requests)]

    def _content_free(self, template: Template, requests) -> list[tuple[tuple[str, str], int]]:
        """((prefix, content-free query), row it calibrates or -1 for all): one set per distinct prefix."""
        fmt = self.format(template)
        values_of = [{f: text for f in template.fields} for text in CONTENT_FREE]
        prefixes = sorted({prefix for prefix, _ in requests})
        if len(prefixes) > 1:
            return [((prefix, fmt.query(values_of[0], self._similar_demos(i), prefix)), i)
                    for i, (prefix, _) in enumerate(requests)]
        demos = self._fixed_demos() if prefixes[0] else []      # no prefix: the zero-shot pass
        return [((prefixes[0], fmt.query(values, demos, prefixes[0])), -1) for values in values_of]

    def _fixed_demos(self) -> list[dict]:
        p = self.inputs
        return [{**p.demo_rows[i], p.slot: self._answer(p.demo_rows[i])} for i in (p.fixed or [])]

    def _similar_demos(self, row: int) -> list[dict]:
        p = self.inputs
        return [{**p.demo_rows[i], p.slot: self._answer(p.demo_rows[i])} for i in p.similar[row]]

    @staticmethod
    def _prior(scores: np.ndarray, extra, rows: int) -> np.ndarray:
        """The label distribution each row's prompt induces without content: [rows, labels]."""
        probs = np.exp(scores - _logsumexp(scores))
        if extra and extra[0][1] == -1:
            return np.repeat(probs.mean(axis=0, keepdims=True), rows, axis=0)
        prior = np.zeros((rows, scores.shape[1]))
        for (_, row), p in zip(extra, probs):
            prior[row] = p
        return np.maximum(prior, 1e-12)

    # ---- generation ---------------------------------------------------------------------------------
    def settings(self) -> GenerateSettings:
        o = self.o
        stop = [] if o.stop and [s.lower() for s in o.stop] == ["none"] else \
            [unescape(s) for s in (o.stop if o.stop is not None else ["\\n"])]
        return GenerateSettings(o.max_tokens, o.temperature, o.top_p, stop, o.seed)

    def generate_all(self) -> list[dict]:
        settings, p = self.settings(), self.inputs
        records = []
        for template in self.templates:
            requests, _ = self.requests(template, p.rows, True, p.similar)
            writer = _StreamWriter(self.ctx, len(requests), template.number if len(self.templates) > 1 else None) \
                if self.o.stream else None
            outputs = self.backend.generate(requests, settings, writer, self.progress)
            if writer:
                writer.close()
            done = np.array([text is not None for text in outputs])
            outputs = [(text or "").strip() for text in outputs]
            record = {"template": template.number, "text": template.short(), "outputs": outputs, "done": done,
                      "rows": int(done.sum()), "_prompt": requests[0][0] + requests[0][1]}
            if p.answers is not None:
                answers = [a if d else [] for a, d in zip(p.answers, done)]
                record.update(generation_metrics(outputs, answers))
                self.progress.eval(exact_match=record["exact_match"])
            records.append(record)
            if self._stop_requested():
                break
        return records

    # ---- the Result ---------------------------------------------------------------------------------
    def result(self, records: list[dict], seconds: float) -> IclResult:
        o, p, backend = self.o, self.inputs, self.backend
        key = "accuracy" if o.scoring else "exact_match"
        values = [r.get(key, float("nan")) for r in records]
        best = int(np.nanargmax(values)) if not all(np.isnan(values)) else 0
        row = records[best]
        metrics: dict[str, Any] = {}
        if o.scoring:
            for k in ("accuracy", "f1", "uncalibrated_accuracy", "zero_shot_accuracy", "zero_shot_f1"):
                if k in row:
                    metrics[k if k.startswith("zero_shot") else f"test_{k}"] = float(row[k])
        elif "exact_match" in row and not np.isnan(row["exact_match"]):
            metrics["test_exact_match"] = float(row["exact_match"])
            metrics["test_contains"] = float(row["contains"])
        metrics.update(queries=int(row["done"].sum()), shots=self.shots, templates=len(self.templates))
        labelled = int(((p.gold >= 0) & row["done"]).sum()) if p.gold is not None else \
            sum(1 for a, d in zip(p.answers, row["done"]) if a and d) if p.answers is not None else 0
        if labelled and labelled < metrics["queries"]:
            metrics["labelled_rows"] = labelled
        if len(self.templates) > 1:
            metrics["best_template"] = int(row["template"])
        notes = list(p.notes)
        if p.selection:
            notes.insert(0, p.selection)
        if self.stopped:
            notes.append(f"stopped after {metrics['queries']} of {len(p.rows)} rows (template {row['template']}); "
                         "the metrics are over those rows" + ("" if len(records) == len(self.templates)
                                                              else f", {len(records)} of {len(self.templates)} "
                                                                   "templates run"))
        data_frames = [p.data.astype(str)] + ([pd.DataFrame(p.demo_rows).astype(str)] if p.demo_rows else [])
        result = IclResult(
            method=self.method, metrics=metrics, model=backend.name, device=backend.device, dtype=backend.dtype,
            data_fingerprint=fingerprint(*data_frames), total_params=backend.total_params,
            label_names=list(p.labels.words) if p.labels else None, predictions=self.predictions(row),
            prompt=str(row["_prompt"]), notes=notes, status="stopped" if self.stopped else "ok",
        )
        scored = sum(int(r["done"].sum()) + int(r.get("zero_shot_done", np.zeros(0)).sum()) for r in records)
        busy = backend.usage.seconds or seconds
        result.rows_per_s = scored / busy if busy else None
        used = backend.usage.tokens + backend.usage.generated
        result.tokens_per_s = used / busy if busy and used else None
        if len(self.templates) > 1 or self.with_zero_shot:
            result.tables["templates"] = ranking(records)
        if p.fixed:
            result.tables["demonstrations"] = demonstrations_table(p.demo_rows, p.fixed, p.slot, p.fields,
                                                                 [d[p.slot] for d in self._fixed_demos()])
        result._predictor = self.predictor(self.templates[int(row["template"]) - 1])
        if p.gold is not None or p.answers is not None:   # a scored test set: kept so that runs pair up
            result.artifacts[per_item.FILE_KEY] = str(per_item.save(result.predictions, self.ctx.run_dir))
        return result

    def predictions(self, row: dict) -> pd.DataFrame:
        p = self.inputs
        frame = pd.DataFrame({"row": np.arange(len(p.rows))})
        for name in dict.fromkeys(f for f in p.fields if f != p.slot):   # what each row asked
            frame[name] = [r.get(name, "") for r in p.rows]
        if self.o.scoring:
            frame["prediction"] = [p.labels.words[i] for i in row["predicted"]]
            if p.gold is not None:
                frame["gold"] = [p.labels.words[i] if i >= 0 else None for i in p.gold]
            for j, word in enumerate(p.labels.words):
                frame[f"logp_{word}"] = row["logp"][:, j]
        else:
            frame["output"] = row["outputs"]
            if p.answers is not None:
                frame["gold"] = [" | ".join(a) for a in p.answers]
        standard = self.per_item_columns(row)
        for i, name in enumerate(standard.columns):   # first; a column the frame has (prediction) stays
            if name not in frame:
                frame.insert(i, name, standard[name])
        return frame[row["done"]].reset_index(drop=True)

    def per_item_columns(self, row: dict) -> pd.DataFrame:
        """The columns every method's per-item predictions share (runs/predictions.py). An item is the text
        of the data fields the templates fill (one field: its text, so a %probe on that column pairs up);
        the score is the chosen label's probability after calibration; rows without gold are not scored."""
        p = self.inputs
        asked = [f for f in dict.fromkeys(p.fields) if f != p.slot]
        texts = ["\n".join(r.get(f, "") for f in asked) for r in p.rows]
        if self.o.scoring:
            logp = row["logp"]
            chosen = np.exp(logp - _logsumexp(logp))[np.arange(len(logp)), row["predicted"]]
            gold = p.gold if p.gold is not None else np.full(len(p.rows), -1)
            labels = [p.labels.words[i] if i >= 0 else None for i in gold]
            guesses = [p.labels.words[i] for i in row["predicted"]]
            correct = [float(g == a) if g is not None else np.nan for g, a in zip(labels, guesses)]
        else:
            chosen = np.full(len(p.rows), np.nan)
            answers = p.answers if p.answers is not None else [[] for _ in p.rows]
            labels = [" | ".join(a) if a else None for a in answers]
            guesses = list(row["outputs"])
            correct = [float(any(normalise_answer(out) == normalise_answer(g) for g in golds)) if golds else np.nan
                       for out, golds in zip(guesses, answers)]
        return pd.DataFrame({"item_id": [item_id(t) for t in texts], "text": texts, "label": labels,
                             "prediction": guesses, "score": chosen, "correct": correct})

    def predictor(self, template: Template):
        """Runs new rows as the run did: the best template, the same fixed demonstrations, and either
        the labels scored (calibrated when the run was) or the answers generated."""
        p = self.inputs

        def predict(rows) -> list[str]:
            if p.similar is not None or self.o.index:
                raise UsageError("predict() reuses one fixed set of demonstrations, so it cannot follow "
                                 "--select similar or --index; run %%icl on the new rows instead")
            frame = load_frame(rows, None, "rows")
            if frame.empty:
                return []
            check_fields([template], frame, "the rows", {p.slot})
            values = row_values(frame, sorted(set(template.fields) | {p.slot}), answer=p.slot)
            requests, opening = self.requests(template, values, True)
            if p.labels is None:
                return [(text or "").strip() for text in self.backend.generate(requests, self.settings())]
            logp, _, _ = self.classify(template, requests, opening, progress=False)
            return [p.labels.words[i] for i in logp.argmax(axis=1)]
        predict.query_fields = [f for f in dict.fromkeys(template.fields) if f != p.slot]   # plain strings fill these
        return predict


class _StreamWriter:
    """Streams answers into the cell, one line per row, the first STREAM_ROWS of them."""

    def __init__(self, ctx, total: int, template: int | None):
        self.ctx, self.total, self.template = ctx, total, template
        self.current = -1

    def __call__(self, row: int, text: str) -> None:
        if row >= STREAM_ROWS:
            return
        if row != self.current:
            if self.current >= 0:
                self.ctx.write("\n")
            self.ctx.write(f"[t{self.template} · {row}] " if self.template else f"[{row}] ")
            self.current = row
            text = text.lstrip()
        self.ctx.write(text)

    def close(self) -> None:
        if self.current >= 0:
            more = self.total - STREAM_ROWS
            self.ctx.write("\n" + (f"… {more} more answers in result.predictions\n" if more > 0 else ""))


def _logsumexp(x: np.ndarray) -> np.ndarray:
    top = x.max(axis=1, keepdims=True)
    return top + np.log(np.exp(x - top).sum(axis=1, keepdims=True))
