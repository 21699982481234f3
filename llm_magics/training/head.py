"""The head-only fast path (`%finetune --train head`, a linear-probe phase): the frozen base runs once, in the
inference dtype, through `%probe`'s feature cache; its pooled features feed the new head every epoch."""
from __future__ import annotations

from ..engine.device import pick_dtype
from ..engine.features import FeatureCache, cached_features, num_layers
from ..models import load_model, trainable
from ..tasks.classify import FeatureTask
from .steps import TrainingRun, classifier


def prepare_head_only(run: TrainingRun, label: str) -> None:
    """Set run.model (a classifier whose base is frozen), run.engine_task (the cached features) and run.plan
    (`label` names what trains). Head-only trains on the same random batches as through the base."""
    o = run.options
    run.group_by_length = False
    # the frozen base reads in the inference dtype, shared with %probe's cache
    loaded = load_model(run.source, "base", run.device, pick_dtype(run.device, o.dtype), fresh=False,
                        trust_remote_code=o.trust_remote_code)
    model = classifier(loaded, run.data, o, run.device)
    for param in model.base.parameters():
        param.requires_grad = False
    features, extracted = head_features(loaded, run.data, model.pooling, o.max_length, run.ctx, run.progress)
    run.notes.append("head-only fast path: the frozen base ran once" + ("" if extracted else " (features from the cache)")
                     + "; its features fed the head every epoch")
    run.loaded, run.model, run.tokenizer = loaded, model, loaded.tokenizer
    run.engine_task = FeatureTask(features, run.data, run.device)
    run.plan = trainable.report(model, label)


def head_features(loaded, data, pooling: str, max_length: int, ctx, progress):
    """The top layer's pooled features for every split, through %probe's cache; and whether any were extracted."""
    cache = FeatureCache(ctx.settings.subdir("features"))
    top = num_layers(loaded.model.config)
    progress.start(total=sum(len(f) for f in data.splits().values()), unit="rows")
    features, extracted = {}, 0
    for split, frame in data.splits().items():
        feats, stats = cached_features(loaded, frame["text"].tolist(), [top], pooling, cache,
                                       max_length=max_length, progress=progress)
        features[split] = feats[top]
        extracted += stats.rows
    return features, extracted
