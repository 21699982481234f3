"""`%probe`: the feature-based method.

A frozen model turns texts into embeddings (any layer, any pooling, cached on
disk); a scikit-learn classifier learns on them. `--layer all` trains one
probe per layer and shows where in the network the task is readable.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..common_options import DataOptions, ModelOptions, RunOptions
from ..data import prepare_classification
from ..engine.device import dtype_name, pick_dtype
from ..engine.features import (POOLINGS, ExtractStats, FeatureCache, absolute_layer, cached_features,
                               default_pooling, extract, num_layers)
from ..errors import UsageError
from ..method import Method, Result
from ..models import count_parameters, hold, load_model
from ..options import option, positive, when
from ..runs import predictions
from ..runs.figures import new_figure, to_png

C_GRID = (0.0001, 0.001, 0.01, 0.1, 1.0, 10.0)


def layer_spec(value: str) -> str | None:
    if str(value).lower() == "all":
        return None
    try:
        int(value)
    except ValueError:
        return f"expects a layer index (negative counts from the top) or 'all', got {value!r}"
    return None


def hidden_sizes(value: list) -> str | None:
    if not value or not all(str(v).isdigit() and int(v) > 0 for v in value):
        return f"expects positive layer sizes like 256 or 256,64, got {','.join(map(str, value))!r}"
    return None


@dataclass
class ProbeOptions(ModelOptions, DataOptions, RunOptions):
    layer: str = option("-1", "hidden layer to probe: an index (0 = embeddings, negative counts from the top) "
                              "or 'all' for one probe per layer", check=layer_spec)
    pooling: str = option("auto", "how token states become one vector (auto: mean for encoders, "
                                  "last token for decoders)", choices=("auto",) + POOLINGS)
    classifier: str = option("logreg", "the scikit-learn classifier", choices=("logreg", "mlp", "forest"))
    C: float | None = option(None, "logreg inverse regularisation (default: picked on the validation split "
                                   "from 0.0001…10)", flag="--C", check=positive, applies=when("classifier", "logreg"))
    hidden: list[str] = option(["256"], "mlp hidden layer sizes", check=hidden_sizes, metavar="N,N",
                               applies=when("classifier", "mlp"))
    alpha: float = option(1e-4, "mlp L2 penalty", check=positive, applies=when("classifier", "mlp"))
    trees: int = option(300, "forest: number of trees", check=positive, applies=when("classifier", "forest"))
    max_depth: int | None = option(None, "forest: maximum tree depth (default: unlimited)", check=positive,
                                   applies=when("classifier", "forest"))
    max_iter: int = option(2000, "logreg/mlp: maximum iterations", check=positive,
                           applies=when("classifier", "logreg", "mlp"))
    standardize: bool = option(True, "scale features to zero mean and unit variance before the classifier")
    max_length: int = option(256, "tokens per text (longer texts are truncated)", check=positive)
    batch_tokens: int | None = option(None, "padded tokens per forward batch (default: 1024 on CPU, "
                                            "16384 on GPUs)", check=positive)
    cache: bool = option(True, "reuse features cached on disk (--no-cache extracts again)")


@dataclass
class ProbeResult(Result):
    """Also predicts: `result.predict(["a new text"])` → label names."""
    layer: int = 0
    pooling: str = "mean"
    extract_stats: ExtractStats | None = field(default=None, repr=False)
    _classifier: Any = field(default=None, repr=False)
    _loaded: Any = field(default=None, repr=False)
    _max_length: int = 256

    def _features(self, texts):
        if isinstance(texts, str):
            texts = [texts]
        if self._loaded is None:
            raise RuntimeError("the model was released (%llm free); run the probe again to predict")
        feats, _ = extract(self._loaded.model, self._loaded.tokenizer, list(texts), [self.layer], self.pooling,
                           max_length=self._max_length, device=self._loaded.device)
        return feats[self.layer]

    def predict(self, texts) -> list[str]:
        codes = self._classifier.predict(self._features(texts))
        return [self.label_names[int(c)] for c in codes]

    def predict_proba(self, texts) -> pd.DataFrame:
        probs = self._classifier.predict_proba(self._features(texts))
        return pd.DataFrame(probs, columns=self.label_names)

    def release(self) -> None:
        self._loaded = None


class ProbeMethod(Method):
    name = "probe"
    summary = ("Feature-based adaptation: a frozen model turns texts into embeddings (any layer, any pooling, "
               "cached on disk) and a scikit-learn classifier learns on them.")
    Options = ProbeOptions
    seed_controls = ("data split", "classifier init")

    def run(self, o: ProbeOptions, ctx) -> ProbeResult:
        data = prepare_classification(o.data, o.validation, o.test, text=o.text, label=o.label, seed=o.seed,
                                      val_size=o.val_size, test_size=o.test_size, namespace=ctx.namespace)
        device = ctx.device(o.device)
        loaded = load_model(o.model, "base", device, pick_dtype(device, o.dtype),
                            trust_remote_code=o.trust_remote_code)
        layers = self._layers(o.layer, num_layers(loaded.model.config))
        pooling = default_pooling(loaded.kind) if o.pooling == "auto" else o.pooling
        splits = data.splits()
        progress = ctx.progress(f"probe · {loaded.source.short} · features")
        progress.start(total=sum(len(f) for f in splits.values()), unit="rows",
                       model=loaded.source.short, device=str(device))
        cache = FeatureCache(ctx.settings.subdir("features")) if o.cache else None
        features, stats = {}, ExtractStats()
        for split, frame in splits.items():
            features[split], split_stats = cached_features(loaded, frame["text"].tolist(), layers, pooling, cache,
                                                           max_length=o.max_length, max_tokens=o.batch_tokens,
                                                           progress=progress)
            stats.add(split_stats)
        progress.phase(f"probe · {loaded.source.short} · {o.classifier}", total=len(layers), unit="layers")
        rows, fitted = [], {}
        labels = {s: f["label"].to_numpy() for s, f in splits.items()}
        for layer in layers:
            clf, C = fit_classifier(o, {s: features[s][layer] for s in splits}, labels)
            scores = evaluate(clf, {s: features[s][layer] for s in splits}, labels)
            fitted[layer] = clf
            rows.append({"layer": layer, **scores, **({"C": C} if C else {})})
            progress.advance(1, val_accuracy=scores["val_accuracy"])
        table = pd.DataFrame(rows)
        best = table.loc[table["val_accuracy"].idxmax()] if len(layers) > 1 else table.iloc[0]
        layer = int(best["layer"])
        metrics = {k: float(best[k]) for k in table.columns if k.startswith(("train_", "val_", "test_"))}
        metrics["layer"] = layer
        if "C" in best:
            metrics["C"] = float(best["C"])
        result = ProbeResult(
            method=self.name, metrics=metrics, model=loaded.source.short, data_fingerprint=data.fingerprint,
            trainable_params=classifier_size(fitted[layer]), device=str(device), dtype=dtype_name(loaded.dtype),
            label_names=data.label_names, layer=layer, pooling=pooling, extract_stats=stats,
            _classifier=fitted[layer], _loaded=loaded, _max_length=o.max_length,
            notes=data.notes + stats.notes + self._cache_notes(stats, o.cache),
        )
        result.total_params = count_parameters(loaded.model) + result.trainable_params
        result.rows_per_s = stats.rows_per_s
        result.tokens_per_s = stats.tokens_per_s
        if cache:
            result.artifacts["features"] = str(cache.root)
        if splits.get("test") is not None and len(splits["test"]):
            self._keep_predictions(result, fitted[layer], features["test"][layer], splits["test"], ctx)
        if len(layers) > 1:
            result.tables["accuracy by layer"] = table
            result.figures["accuracy by layer"] = plot_layers(table, loaded.source.short, pooling)
        progress.end("ok", **{k: metrics[k] for k in ("val_accuracy", "test_accuracy") if k in metrics})
        hold(result)
        return result

    @staticmethod
    def _keep_predictions(result: ProbeResult, clf, x: np.ndarray, test: pd.DataFrame, ctx) -> None:
        """Per-item test predictions (with the predicted class's probability), kept in the run's folder."""
        predicted = clf.predict(x)
        score = clf.predict_proba(x).max(axis=1) if hasattr(clf, "predict_proba") else None
        result.predictions = predictions.per_item(test["text"].tolist(), test["label"].tolist(), predicted, score,
                                                  result.label_names)
        result.artifacts["predictions"] = str(predictions.save(result.predictions, ctx.run_dir))

    @staticmethod
    def _layers(spec: str, total: int) -> list[int]:
        if str(spec).lower() == "all":
            return list(range(total + 1))
        index = int(spec)
        if not -(total + 1) <= index <= total:
            raise UsageError(f"--layer {index} is out of range: this model has {total} layers "
                             f"(use 0…{total}, -1…-{total + 1}, or all)")
        return [absolute_layer(index, total)]

    @staticmethod
    def _cache_notes(stats: ExtractStats, enabled: bool) -> list[str]:
        if not enabled:
            return ["feature cache off: features extracted again"]
        if stats.extracted_layers == 0:
            return ["features read from the cache: no forward pass ran"]
        return []


def make_classifier(o: ProbeOptions, C: float | None = None):
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    if o.classifier == "logreg":
        clf = LogisticRegression(C=C or 1.0, max_iter=o.max_iter)
    elif o.classifier == "mlp":
        clf = MLPClassifier(hidden_layer_sizes=tuple(int(h) for h in o.hidden), alpha=o.alpha,
                            max_iter=o.max_iter, early_stopping=True, random_state=o.seed)
    else:
        clf = RandomForestClassifier(n_estimators=o.trees, max_depth=o.max_depth, n_jobs=-1, random_state=o.seed)
    return make_pipeline(StandardScaler(), clf) if o.standardize else clf


def fit_classifier(o: ProbeOptions, X: dict[str, np.ndarray], y: dict[str, np.ndarray]):
    """Fit on train; for logreg without --C, pick C by validation accuracy. Returns (classifier, C)."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        if o.classifier != "logreg" or o.C is not None:
            return make_classifier(o, o.C).fit(X["train"], y["train"]), o.C
        best = None
        for C in C_GRID:
            clf = make_classifier(o, C).fit(X["train"], y["train"])
            score = float((clf.predict(X["val"]) == y["val"]).mean())
            if best is None or score > best[0]:
                best = (score, clf, C)
        return best[1], best[2]


def evaluate(clf, X: dict[str, np.ndarray], y: dict[str, np.ndarray]) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score
    out = {}
    for split in X:
        predicted = clf.predict(X[split])
        out[f"{split}_accuracy"] = float(accuracy_score(y[split], predicted))
        out[f"{split}_f1"] = float(f1_score(y[split], predicted, average="macro"))
    return out


def classifier_size(clf) -> int:
    """Learned numbers in the classifier: weights for linear/MLP, tree nodes for a forest."""
    final = clf.steps[-1][1] if hasattr(clf, "steps") else clf
    if hasattr(final, "coef_"):
        return int(final.coef_.size + final.intercept_.size)
    if hasattr(final, "coefs_"):
        return int(sum(w.size for w in final.coefs_) + sum(b.size for b in final.intercepts_))
    if hasattr(final, "estimators_"):
        return int(sum(t.tree_.node_count for t in final.estimators_))
    return 0


def plot_layers(table: pd.DataFrame, model: str, pooling: str) -> bytes:
    fig = new_figure(6, 3.2)
    ax = fig.add_subplot(1, 1, 1)
    for split, style in (("train", ":"), ("val", "--"), ("test", "-")):
        ax.plot(table["layer"], table[f"{split}_accuracy"], style, marker="o", markersize=3, label=split)
    ax.set_xlabel("layer (0 = embeddings)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"probe accuracy by layer · {model} · {pooling} pooling", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return to_png(fig)
