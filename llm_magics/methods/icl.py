"""`%%icl`: in-context learning — a prompt template plus k demonstrations, scored or generated.

    %%icl --model smollm2 --data test_df --demos train_df --shots 8 --labels negative,positive
    Review: {sentence}
    Sentiment: {label}

With `--labels`, each label's log-likelihood after the prompt comes from
batched forward passes (no generation); the demonstrations' KV cache is
computed once and reused by every query. Without labels the model generates,
streamed into the cell. Templates separated by `---` lines are all run on the
same rows and demonstrations and ranked (hard-prompt tuning). `--index NAME`
fills `{context}` with the query's top chunks (retrieval-augmented prompts).
"""
from __future__ import annotations

import html
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..backends import GenerateSettings, LocalBackend, OpenAIBackend
from ..backends.openai import key_env_problem, url_problem
from ..common_options import ModelOptions, RunOptions
from ..data import fingerprint, load_frame
from ..data.columns import require_column
from ..engine.device import pick_dtype
from ..errors import UsageError
from ..method import Method, Result
from ..models import hold, load_model, resolve
from ..options import non_negative, option, positive
from ..retrieval.store import name_problem
from .icl_prompts import (CONTENT_FREE, LabelMap, SimilarDemos, Template, as_text, check_fields, gold_answers,
                          normalise_answer, parse_labels, row_values, select_fixed, split_templates)

STREAM_ROWS = 20   # answers streamed into the cell; the rest are in result.predictions


def unescape(text: str) -> str:
    """`\\n` and `\\t` typed on a magic line mean a newline and a tab."""
    return text.replace("\\n", "\n").replace("\\t", "\t")


def top_p_check(value) -> str | None:
    return None if value is None or 0 < value <= 1 else f"must be in (0, 1], got {value}"


@dataclass(kw_only=True)
class IclOptions(RunOptions, ModelOptions):
    template: str | None = option(None, "the prompt template (the cell body): {field} placeholders filled from "
                                        "the data; templates separated by '---' lines are compared", metavar="TEXT")
    model: str | None = option("smollm2", "a causal LM: alias, local folder or hub id; with --api-base, the model "
                                          "name the endpoint serves")
    data: Any = option(None, "the rows to run the prompt on: a variable, a file or a dataset name", metavar="DATA")
    demos: Any = option(None, "the demonstration pool (same kinds as --data)", metavar="DATA")
    shots: int | None = option(None, "demonstrations per prompt (default: 4 with --demos, else 0)",
                               check=non_negative)
    select: str = option("auto", "how demonstrations are picked: random (seeded), balanced per label, similar "
                                 "(the query's nearest neighbours); auto: balanced with --labels, else random",
                         choices=("auto", "random", "balanced", "similar"))
    labels: list[str] | None = option(None, "verbalizers: score each label instead of generating, e.g. "
                                            "negative,positive (or 0=negative,1=positive)", metavar="A,B,...")
    label: str = option("label", "the template's answer slot and the column of gold answers", metavar="FIELD")
    calibrate: bool = option(False, "contextual calibration: divide out the label prior the prompt alone induces")
    score: str = option("sum", "a label's log-likelihood: sum over its tokens, or mean per token",
                        choices=("sum", "mean"))
    zero_shot: bool = option(True, "with --labels and --shots > 0, also score without demonstrations (beside)")
    separator: str = option("\\n\\n", "text between demonstrations (\\n and \\t are understood)")
    limit: int | None = option(None, "only the first N rows of --data", check=positive)
    seed: int = option(0, "seed for picking demonstrations and for sampling")
    max_tokens: int = option(32, "generation: most tokens per answer", check=positive)
    temperature: float = option(0.0, "generation: 0 is greedy, above 0 samples", check=non_negative)
    top_p: float = option(1.0, "generation: nucleus sampling mass", check=top_p_check)
    stop: list[str] | None = option(None, "generation: stop strings (default: a newline; 'none' for none)",
                                    metavar="S,S")
    stream: bool = option(True, f"stream generated answers into the cell (the first {STREAM_ROWS})")
    index: str | None = option(None, "fill {context} with the top chunks of this index (%index build)",
                               check=name_problem, metavar="NAME")
    top_k: int = option(4, "chunks retrieved into {context}", check=positive)
    query_field: str | None = option(None, "the field that is the query for --index and --select similar "
                                           "(default: the first template field that is a data column)",
                                     metavar="FIELD")
    embed_model: str = option("minilm", "encoder for --select similar")
    api_base: str | None = option(None, "an OpenAI-compatible endpoint (http://host:port/v1) instead of a local "
                                        "model", check=url_problem, metavar="URL")
    api_key_env: str = option("OPENAI_API_KEY", "the environment variable holding the API key (read, never stored)",
                              check=key_env_problem, metavar="NAME")
    api_style: str = option("completions", "the endpoint to use: completions (scores and generates) or chat "
                                           "(generates)", choices=("completions", "chat"))
    api_timeout: float = option(10.0, "seconds to wait for the API before giving up", check=positive)
    batch_tokens: int | None = option(None, "new tokens per forward batch (default: 1024 on CPU)", check=positive)

    def validate(self):
        if self.template is None or not self.template.strip():
            raise UsageError("%%icl needs a prompt template in the cell body, e.g. "
                             "'Review: {text}\\nSentiment: {label}'")
        if self.data is None:
            raise UsageError("--data is required: the rows to run the prompt on (a variable, a file or a dataset)")
        if self.api_base and self.api_style == "chat" and self.labels:
            raise UsageError("--labels scores log-likelihoods, which chat endpoints do not return; "
                             "use --api-style completions, or drop --labels to generate")


@dataclass(repr=False)
class IclResult(Result):
    """Also predicts: `result.predict(rows)` runs the best template on new rows (a DataFrame or dicts) the
    way the run did: scored labels (calibrated too under --calibrate), or generated answers."""
    predictions: pd.DataFrame | None = field(default=None, repr=False)
    prompt: str = ""
    _predictor: Any = field(default=None, repr=False)

    def predict(self, rows) -> list[str]:
        if self._predictor is None:
            raise RuntimeError("the model was released (%llm free); run %%icl again to predict")
        return self._predictor(rows)

    def release(self) -> None:
        self._predictor = None

    def _repr_html_(self) -> str:
        body = super()._repr_html_()
        if self.prompt:
            body += ("<details><summary>the prompt of the first row (best template)</summary>"
                     f"<pre style='white-space:pre-wrap'>{html.escape(self.prompt)}</pre></details>")
        return body


@dataclass
class Prepared:
    """Everything every template shares: rows, demonstrations, labels, retrieved context."""
    data: pd.DataFrame
    rows: list[dict]
    demo_rows: list[dict]
    fixed: list[int] | None          # one demonstration set for all rows, or
    similar: list[list[int]] | None  # one per row
    labels: LabelMap | None
    gold: np.ndarray | None          # verbalizer index per row (scoring), -1 unknown
    answers: list[list[str]] | None  # gold answers per row (generation)
    slot: str
    notes: list[str]


class IclMethod(Method):
    name = "icl"
    summary = ("In-context learning: a prompt template with k demonstrations, scored by label log-likelihood "
               "(--labels) or generated; several templates separated by '---' are compared on the same rows; "
               "--index fills {context} with retrieved chunks.")
    Options = IclOptions
    cell_option = "template"

    def run(self, o: IclOptions, ctx) -> IclResult:
        templates = split_templates(o.template)
        backend = self._backend(o, ctx)
        prepared = self._prepare(o, templates, ctx)
        scoring = o.labels is not None
        progress = ctx.progress(f"icl · {backend.name}")
        progress.start(total=self._work(o, templates, prepared), unit="queries", model=backend.name,
                       device=backend.device)
        started = time.perf_counter()
        if scoring:
            records, best = self._score_all(o, templates, prepared, backend, progress)
        else:
            records, best = self._generate_all(o, templates, prepared, backend, progress, ctx)
        seconds = time.perf_counter() - started
        result = self._result(o, templates, prepared, backend, records, best, seconds)
        progress.end("ok", **{k: v for k, v in result.metrics.items() if k in ("test_accuracy", "test_exact_match")})
        hold(result)
        return result

    def _work(self, o: IclOptions, templates: list[Template], p: Prepared) -> int:
        """Prompts the run will score or generate, content-free calibration prompts included."""
        n = len(p.rows)
        if o.labels is None:
            return n * len(templates)
        calibration = (n if p.similar is not None else len(CONTENT_FREE)) if o.calibrate else 0
        per_template = n + calibration
        if self._shots(o) and o.zero_shot:
            per_template += n + (len(CONTENT_FREE) if o.calibrate else 0)
        return per_template * len(templates)

    # ---- inputs ----------------------------------------------------------------------
    @staticmethod
    def _shots(o: IclOptions) -> int:
        return o.shots if o.shots is not None else (4 if o.demos is not None else 0)

    def _backend(self, o: IclOptions, ctx):
        if o.api_base:
            backend = OpenAIBackend(o.api_base, o.model or "default", o.api_key_env, o.api_timeout, o.api_style)
            backend.check()
            return backend
        source = resolve(o.model)
        check_decoder(source, o.trust_remote_code)
        device = ctx.device(o.device)
        loaded = load_model(source, "causal_lm", device, pick_dtype(device, o.dtype),
                            trust_remote_code=o.trust_remote_code)
        return LocalBackend(loaded, o.batch_tokens)

    def _prepare(self, o: IclOptions, templates: list[Template], ctx) -> Prepared:
        notes: list[str] = []
        shots = self._shots(o)
        scoring = o.labels is not None
        slot = o.label
        data = load_frame(o.data, ctx.namespace, "--data")
        if data.empty:
            raise UsageError("--data is empty; pass a table with at least one row")
        if o.limit and len(data) > o.limit:
            data = data.head(o.limit).reset_index(drop=True)
            notes.append(f"--limit {o.limit}: the first {o.limit} rows of --data")
        demos = load_frame(o.demos, ctx.namespace, "--demos") if o.demos is not None else None
        if shots and demos is None:
            raise UsageError(f"--shots {shots} needs --demos: a table of demonstrations with the template's fields "
                             f"and {{{slot}}}")
        for t in templates:
            if (scoring or shots) and slot not in t.fields:
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
        query_field = self._query_field(o, templates, data, demos if shots else None, slot) \
            if (o.index or o.select == "similar") else None
        fields = sorted({f for t in templates for f in t.fields} | {slot} | ({query_field} if query_field else set()))
        rows = row_values(data, fields, answer=slot)
        demo_rows = row_values(demos, fields, answer=slot) if shots else []
        labels, gold, answers = self._golds(o, data, demos if shots else None, slot, notes)
        fixed = similar = None
        if shots:
            how = o.select if o.select != "auto" else ("balanced" if scoring else "random")
            if how == "similar":
                similar = self._similar(o, ctx, demo_rows, rows, query_field, shots)
            else:
                classes = np.array([labels.code(r.get(slot, "")) for r in demo_rows]) if scoring else \
                    np.array([r.get(slot, "") for r in demo_rows], dtype=object)
                fixed, note = select_fixed(len(demo_rows), shots, how, o.seed,
                                           classes if how == "balanced" else None)
                if note:
                    notes.append(note)
        if o.index:
            self._retrieve(o, ctx, rows, demo_rows, fixed, similar, query_field)
        return Prepared(data, rows, demo_rows, fixed, similar, labels, gold, answers, slot, notes)

    @staticmethod
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

    def _golds(self, o: IclOptions, data: pd.DataFrame, demos: pd.DataFrame | None, slot: str, notes: list[str]):
        """(verbalizers, gold codes, gold answers). Rows of --data without a gold value are run but
        left out of the metrics; all of them missing means no metrics at all (not NaN ones)."""
        if o.labels is None:
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
            self._gold_codes(labels, demos, slot, "--demos")
        gold = self._gold_codes(labels, data, slot, "--data", missing_ok=True)
        known = int((gold >= 0).sum()) if gold is not None else 0
        _note_labelled(notes, known, len(data), "accuracy", slot)
        return labels, (gold if known else None), None

    @staticmethod
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

    def _similar(self, o: IclOptions, ctx, demo_rows, rows, query_field: str, shots: int) -> list[list[int]]:
        from ..retrieval import load_embedder
        device = ctx.device(o.device)
        embedder = load_embedder(o.embed_model, device, pick_dtype(device))
        selector = SimilarDemos(embedder, [r[query_field] for r in demo_rows])
        return selector.select([r[query_field] for r in rows], shots)

    def _retrieve(self, o: IclOptions, ctx, rows, demo_rows, fixed, similar, query_field: str) -> None:
        """Put each row's (and each used demonstration's) top chunks into its `context` value."""
        from ..retrieval import open_index
        index = open_index(o.index)
        embedder = index.embedder(ctx.device(o.device))  # queries embedded as the chunks were
        used = sorted(set(fixed or []) | {i for row in (similar or []) for i in row})
        targets = rows + [demo_rows[i] for i in used]
        queries = [r[query_field] for r in targets]
        found = index.search(queries, o.top_k, embedder)
        texts: list[list[str]] = [[] for _ in targets]
        for qid, text in zip(found["query_id"].tolist(), found["text"].tolist()):
            texts[qid].append(text)
        for target, chunks in zip(targets, texts):
            target["context"] = "\n\n".join(chunks)

    # ---- prompts -------------------------------------------------------------------------
    def _requests(self, o: IclOptions, template: Template, p: Prepared, rows: list[dict], with_demos: bool,
                  similar: list[list[int]] | None = None) -> tuple[list[tuple[str, str]], str]:
        """(prefix, query) per row, and the whitespace that opens the answer."""
        sep = unescape(o.separator)
        labels = p.labels

        def answer(d: dict) -> str:
            value = d.get(p.slot, "")
            return labels.words[labels.code(value)] if labels else value

        def prefix(indices: list[int]) -> str:
            return "".join(template.render({**p.demo_rows[i], p.slot: answer(p.demo_rows[i])}) + sep
                           for i in indices)

        shared = prefix(p.fixed) if with_demos and p.fixed else ""
        out = []
        for i, row in enumerate(rows):
            text = template.query(row, p.slot)
            head = prefix(similar[i]) if with_demos and similar is not None else shared
            out.append((head, text))
        return out, template.opening(p.slot)

    # ---- scoring -----------------------------------------------------------------------------
    def _score_all(self, o, templates, p: Prepared, backend, progress):
        records = []
        shots = self._shots(o)
        for template in templates:
            record = {"template": template.number, "text": template.short()}
            record.update(self._score(o, template, p, backend, progress, with_demos=True, prefix=""))
            if shots and o.zero_shot:
                record.update(self._score(o, template, p, backend, progress, with_demos=False, prefix="zero_shot_"))
            records.append(record)
            progress.eval(**{k: v for k, v in record.items() if k in ("accuracy", "zero_shot_accuracy")})
        best = int(np.argmax([r["accuracy"] for r in records])) if p.gold is not None else 0
        return records, best

    def _score(self, o, template: Template, p: Prepared, backend, progress, with_demos: bool, prefix: str) -> dict:
        requests, opening = self._requests(o, template, p, p.rows, with_demos, p.similar)
        logp, uncalibrated = self._classify(o, template, p, backend, requests, opening, progress)
        predicted = logp.argmax(axis=1)
        out: dict[str, Any] = {f"{prefix}predicted": predicted, f"{prefix}logp": logp}
        if o.calibrate:
            out[f"{prefix}uncalibrated_predicted"] = uncalibrated
        if p.gold is not None:
            out.update(classification_metrics(p.gold, predicted, len(p.labels.words), prefix))
            if o.calibrate:
                uncal = classification_metrics(p.gold, out[f"{prefix}uncalibrated_predicted"], len(p.labels.words), "")
                out[f"{prefix}uncalibrated_accuracy"] = uncal["accuracy"]
        if not prefix:
            out["_prompt"] = requests[0][0] + requests[0][1]
        return out

    def _classify(self, o, template: Template, p: Prepared, backend, requests, opening: str, progress=None):
        """Per request: the labels' log-probabilities (calibrated with --calibrate), and the choice
        made without calibration."""
        extra = self._content_free(o, template, p, requests) if o.calibrate else []
        table = backend.score(requests + [r for r, _ in extra], [opening + w for w in p.labels.words], progress)
        scores = table.normalised(o.score)
        main = scores[:len(requests)]
        logp = main - _logsumexp(main)
        uncalibrated = logp.argmax(axis=1)
        if o.calibrate:
            logp = logp - np.log(self._prior(scores[len(requests):], extra, len(requests)))
        return logp, uncalibrated

    def _content_free(self, o, template: Template, p: Prepared, requests) -> list[tuple[tuple[str, str], int]]:
        """((prefix, content-free query), row it calibrates or -1 for all): one set per distinct prefix."""
        values_of = [{f: text for f in template.fields} for text in CONTENT_FREE]
        prefixes = sorted({prefix for prefix, _ in requests})
        per_row = len(prefixes) > 1
        out = []
        if per_row:
            for i, (prefix, _) in enumerate(requests):
                out.append(((prefix, template.query(values_of[0], p.slot)), i))
        else:
            for values in values_of:
                out.append(((prefixes[0], template.query(values, p.slot)), -1))
        return out

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

    # ---- generation -----------------------------------------------------------------------------
    @staticmethod
    def _settings(o: IclOptions) -> GenerateSettings:
        stop = [] if o.stop and [s.lower() for s in o.stop] == ["none"] else \
            [unescape(s) for s in (o.stop if o.stop is not None else ["\\n"])]
        return GenerateSettings(o.max_tokens, o.temperature, o.top_p, stop, o.seed)

    def _generate_all(self, o, templates, p: Prepared, backend, progress, ctx):
        settings = self._settings(o)
        records = []
        for template in templates:
            requests, _ = self._requests(o, template, p, p.rows, True, p.similar)
            writer = _StreamWriter(ctx, len(requests), template.number if len(templates) > 1 else None) \
                if o.stream else None
            outputs = backend.generate(requests, settings, writer, progress)
            if writer:
                writer.close()
            outputs = [text.strip() for text in outputs]
            record = {"template": template.number, "text": template.short(), "outputs": outputs,
                      "_prompt": requests[0][0] + requests[0][1]}
            if p.answers is not None:
                record.update(generation_metrics(outputs, p.answers))
                progress.eval(exact_match=record["exact_match"])
            records.append(record)
        best = int(np.nanargmax([r["exact_match"] for r in records])) if p.answers is not None else 0
        return records, best

    # ---- the Result -------------------------------------------------------------------------------
    def _result(self, o, templates, p: Prepared, backend, records: list[dict], best: int, seconds: float):
        scoring = o.labels is not None
        shots = self._shots(o)
        row = records[best]
        metrics: dict[str, Any] = {}
        if scoring and p.gold is not None:
            for key in ("accuracy", "f1", "uncalibrated_accuracy", "zero_shot_accuracy", "zero_shot_f1"):
                if key in row:
                    metrics[key if key.startswith("zero_shot") else f"test_{key}"] = float(row[key])
        if not scoring and "exact_match" in row:
            metrics["test_exact_match"] = float(row["exact_match"])
            metrics["test_contains"] = float(row["contains"])
        metrics.update(queries=len(p.rows), shots=shots, templates=len(templates))
        labelled = self._labelled(p)
        if labelled and labelled < len(p.rows):
            metrics["labelled_rows"] = labelled
        if len(templates) > 1:
            metrics["best_template"] = int(row["template"])
        data_frames = [p.data.astype(str)] + ([pd.DataFrame(p.demo_rows).astype(str)] if p.demo_rows else [])
        result = IclResult(
            method=self.name, metrics=metrics, model=backend.name, device=backend.device, dtype=backend.dtype,
            data_fingerprint=fingerprint(*data_frames), total_params=backend.total_params,
            label_names=list(p.labels.words) if p.labels else None, predictions=self._predictions(o, p, row),
            prompt=str(row["_prompt"]), notes=p.notes,
        )
        scored = len(p.rows) * len(records) * (2 if scoring and shots and o.zero_shot else 1)
        busy = backend.usage.seconds or seconds
        result.rows_per_s = scored / busy if busy else None
        used = backend.usage.tokens + backend.usage.generated
        result.tokens_per_s = used / busy if busy and used else None
        if len(templates) > 1 or (scoring and shots and o.zero_shot):
            result.tables["templates"] = ranking(records)
        result._predictor = self._predictor(o, templates[int(row["template"]) - 1], p, backend)
        return result

    @staticmethod
    def _labelled(p: Prepared) -> int:
        """Rows of --data with a gold label or answer: the ones the metrics are over."""
        if p.gold is not None:
            return int((p.gold >= 0).sum())
        return sum(1 for a in p.answers if a) if p.answers is not None else 0

    def _predictions(self, o, p: Prepared, row) -> pd.DataFrame:
        frame = pd.DataFrame({"row": np.arange(len(p.rows))})
        if o.labels is not None:
            frame["prediction"] = [p.labels.words[i] for i in row["predicted"]]
            if p.gold is not None:
                frame["gold"] = [p.labels.words[i] if i >= 0 else None for i in p.gold]
            for j, word in enumerate(p.labels.words):
                frame[f"logp_{word}"] = row["logp"][:, j]
        else:
            frame["output"] = row["outputs"]
            if p.answers is not None:
                frame["gold"] = [" | ".join(a) for a in p.answers]
        return frame

    def _predictor(self, o, template: Template, p: Prepared, backend):
        """Runs new rows as the run did: the best template, the same fixed demonstrations, and either
        the labels scored (calibrated under --calibrate) or the answers generated."""
        def predict(rows) -> list[str]:
            if p.similar is not None or o.index:
                raise UsageError("predict() reuses one fixed set of demonstrations, so it cannot follow "
                                 "--select similar or --index; run %%icl on the new rows instead")
            frame = load_frame(rows, None, "rows")
            if frame.empty:
                return []
            check_fields([template], frame, "the rows", {p.slot})
            values = row_values(frame, sorted(set(template.fields) | {p.slot}), answer=p.slot)
            requests, opening = self._requests(o, template, p, values, True)
            if p.labels is None:
                return [text.strip() for text in backend.generate(requests, self._settings(o))]
            logp, _ = self._classify(o, template, p, backend, requests, opening)
            return [p.labels.words[i] for i in logp.argmax(axis=1)]
        return predict


def ranking(records: list[dict]) -> pd.DataFrame:
    """The templates side by side, best first: the hard-prompt comparison."""
    keys = ("accuracy", "f1", "uncalibrated_accuracy", "zero_shot_accuracy", "zero_shot_f1", "exact_match",
            "contains")
    table = pd.DataFrame([{"template": r["template"], "text": r["text"], **{k: r[k] for k in keys if k in r}}
                          for r in records])
    key = next((k for k in ("accuracy", "exact_match") if k in table), None)
    if key:
        table = table.sort_values(key, ascending=False, kind="stable").reset_index(drop=True)
    table.insert(0, "rank", range(1, len(table) + 1))
    return table


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


def check_decoder(source, trust_remote_code: bool) -> None:
    """ICL needs a causal LM: refuse an encoder before loading it with a random LM head."""
    from transformers import AutoConfig

    from ..models import architecture_kind
    try:
        config = AutoConfig.from_pretrained(source.path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        return  # load_model says what is wrong
    if architecture_kind(config) != "decoder":
        raise UsageError(f"--model {source.name}: %%icl needs a causal (decoder) language model such as smollm2; "
                         f"{source.name} is an {architecture_kind(config)}")


def _note_labelled(notes: list[str], known: int, total: int, metric: str, slot: str) -> None:
    if 0 < known < total:
        notes.append(f"{metric} over the {known} of {total} rows of --data that have a {slot!r}; "
                     "the others are predicted but not scored")


def _logsumexp(x: np.ndarray) -> np.ndarray:
    top = x.max(axis=1, keepdims=True)
    return top + np.log(np.exp(x - top).sum(axis=1, keepdims=True))


def classification_metrics(gold: np.ndarray, predicted: np.ndarray, n_labels: int, prefix: str) -> dict:
    """Accuracy and macro F1 over the rows with a gold label (code >= 0)."""
    from sklearn.metrics import f1_score
    known = gold >= 0
    gold, predicted = gold[known], predicted[known]
    return {f"{prefix}accuracy": float((gold == predicted).mean()),
            f"{prefix}f1": float(f1_score(gold, predicted, labels=list(range(n_labels)), average="macro",
                                          zero_division=0))}


def generation_metrics(outputs: list[str], answers: list[list[str]]) -> dict:
    """SQuAD-style exact match, and whether a gold answer appears in the output, over rows with answers."""
    exact, contains, counted = 0, 0, 0
    for output, golds in zip(outputs, answers):
        if not golds:
            continue
        counted += 1
        said = normalise_answer(output)
        normal = [normalise_answer(g) for g in golds]
        exact += any(said == g for g in normal)
        contains += any(g and g in said for g in normal)
    return {"exact_match": exact / counted if counted else float("nan"),
            "contains": contains / counted if counted else float("nan")}
