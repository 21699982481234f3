"""A transformers causal LM as an ICL backend: batched label scoring with a cached prefix, and generation."""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from transformers.generation.logits_process import (LogitsProcessor, LogitsProcessorList, TemperatureLogitsWarper,
                                                   TopPLogitsWarper)
from transformers.generation.streamers import BaseStreamer

from ..engine.device import dtype_name
from ..engine.scoring import PrefixCache, cache_kwarg, common_prefix_length, score_continuations
from ..errors import UsageError
from ..models import count_parameters
from .base import Backend, GenerateSettings, ScoreTable, cut_at_stop

# A prefix shared by fewer queries than this is not worth a cache of its own:
# those prompts are scored whole, batched together.
MIN_SHARED = 4


class LocalBackend(Backend):
    def __init__(self, loaded, batch_tokens: int | None = None):
        super().__init__()
        self.loaded = loaded
        self.model, self.tokenizer = loaded.model, loaded.tokenizer
        self.name = loaded.source.short
        self.device = str(loaded.device)
        self.dtype = dtype_name(loaded.dtype)
        self.total_params = count_parameters(loaded.model)
        self.batch_tokens = batch_tokens
        config = loaded.model.config
        self.context = getattr(config, "max_position_embeddings", None) or 2048
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (self.tokenizer.eos_token_id or 0)
        self._last_prefix: tuple[tuple[int, ...], PrefixCache] | None = None

    # ---- tokens ---------------------------------------------------------------------
    def _encode(self, texts: Sequence[str], special: bool) -> list[list[int]]:
        return self.tokenizer(list(texts), add_special_tokens=special, return_attention_mask=False,
                              verbose=False)["input_ids"]

    def continuation_ids(self, context: str, continuations: Sequence[str]) -> list[list[int]]:
        """Each continuation's tokens as they fall after `context` (the joint tokenization's tail)."""
        base = self._encode([context], True)[0]
        joint = self._encode([context + c for c in continuations], True)
        alone = self._encode(list(continuations), False)
        out = []
        for text, whole, single in zip(continuations, joint, alone):
            ids = whole[len(base):] if whole[:len(base)] == base else single
            if not ids:
                raise UsageError(f"label {text.strip()!r} tokenizes to nothing for {self.name}; "
                                 "pick verbalizers that are words")
            out.append(ids)
        for i in range(len(out)):
            for j in range(i):
                if out[i] == out[j]:
                    raise UsageError(f"labels {continuations[j].strip()!r} and {continuations[i].strip()!r} "
                                     f"tokenize the same for {self.name}; pick distinct verbalizers")
        return out

    def _plan(self, prefix: str, queries: Sequence[str]) -> tuple[list[int], list[list[int]]]:
        """(cached prefix ids, per-query ids): the longest prefix every query's tokenization agrees on."""
        joint = self._encode([prefix + q for q in queries], True)
        if min(len(j) for j in joint) == 0:
            raise UsageError("a prompt is empty before its answer slot; put some text in the template")
        pre = self._encode([prefix], True)[0]
        keep = min(min(common_prefix_length(pre, j) for j in joint), min(len(j) for j in joint) - 1)
        keep = max(keep, 0)
        return pre[:keep], [j[keep:] for j in joint]

    def _groups(self, requests: Sequence[tuple[str, str]]) -> list[tuple[str, list[int], list[str]]]:
        """(prefix, request indices, query texts): big groups (or one prefix for all) share a cache; the
        rest go whole, together."""
        by_prefix: dict[str, list[int]] = {}
        for i, (prefix, _) in enumerate(requests):
            by_prefix.setdefault(prefix, []).append(i)
        groups, loose = [], []
        for prefix, indices in by_prefix.items():
            if prefix and len(indices) >= min(MIN_SHARED, len(requests)):
                groups.append((prefix, indices, [requests[i][1] for i in indices]))
            else:
                loose += indices
        if loose:
            loose.sort()
            groups.append(("", loose, [requests[i][0] + requests[i][1] for i in loose]))
        return groups

    def _check_length(self, prefix: list[int], rows: list[list[int]], extra: int) -> None:
        longest = len(prefix) + max(len(r) for r in rows) + extra
        if longest > self.context:
            raise UsageError(f"a prompt of {longest} tokens is longer than {self.name}'s context of {self.context}; "
                             "use fewer --shots, a shorter template or a smaller --top-k")

    # ---- scoring ----------------------------------------------------------------------
    def score(self, requests: Sequence[tuple[str, str]], continuations: Sequence[str], progress=None) -> ScoreTable:
        started = time.perf_counter()
        first = requests[0][0] + requests[0][1]
        conts = self.continuation_ids(first, continuations)
        out = np.full((len(requests), len(conts)), np.nan)
        lengths = np.array([len(c) for c in conts])
        for prefix, indices, queries in self._groups(requests):
            if _stopping(progress):
                break
            prefix_ids, rows = self._plan(prefix, queries)
            self._check_length(prefix_ids, rows, int(lengths.max()))
            scores, _, stats = score_continuations(self.model, rows, conts, prefix=prefix_ids, pad_id=self.pad_id,
                                                   device=self.loaded.device, max_tokens=self.batch_tokens,
                                                   progress=progress, cache=self._prefix_cache(prefix_ids))
            out[indices] = scores
            self.usage.tokens += stats.tokens
        self.usage.seconds += time.perf_counter() - started
        done = ~np.isnan(out).any(axis=1)
        return ScoreTable(out, lengths, None if done.all() else done)

    def _prefix_cache(self, prefix_ids: list[int]) -> PrefixCache:
        """The last prefix's cache is kept: calibration, then the queries, score after the same prefix."""
        key = tuple(prefix_ids)
        if self._last_prefix is None or self._last_prefix[0] != key:
            self._last_prefix = (key, PrefixCache(self.model, prefix_ids, self.loaded.device))
            self.usage.tokens += len(prefix_ids)
        return self._last_prefix[1]

    # ---- generation -------------------------------------------------------------------
    @torch.inference_mode()
    def generate(self, requests: Sequence[tuple[str, str]], settings: GenerateSettings,
                 on_text: Callable[[int, str], None] | None = None, progress=None) -> list[str]:
        started = time.perf_counter()
        generator = torch.Generator(device=self.loaded.device).manual_seed(settings.seed)
        outputs: list[str | None] = [None] * len(requests)
        for prefix, indices, queries in self._groups(requests):
            prefix_ids, rows = self._plan(prefix, queries)
            self._check_length(prefix_ids, rows, settings.max_tokens)
            cache = PrefixCache(self.model, prefix_ids, self.loaded.device)
            self.usage.tokens += len(prefix_ids)
            for i, row in zip(indices, rows):
                if _stopping(progress):
                    break
                outputs[i] = self._generate_one(prefix_ids, row, cache, settings, generator,
                                                (lambda text, i=i: on_text(i, text)) if on_text else None)
                if progress:
                    progress.advance(1)
        self.usage.seconds += time.perf_counter() - started
        return outputs

    def _generate_one(self, prefix_ids: list[int], row: list[int], cache: PrefixCache, settings: GenerateSettings,
                      generator: torch.Generator, emit: Callable[[str], None] | None) -> str:
        ids = torch.as_tensor([prefix_ids + row], device=self.loaded.device)
        kwargs = dict(max_new_tokens=settings.max_tokens, pad_token_id=self.pad_id,
                      attention_mask=torch.ones_like(ids), do_sample=False, temperature=None, top_p=None, top_k=None)
        if settings.temperature > 0:
            kwargs["logits_processor"] = LogitsProcessorList([_Sampler(settings, generator)])
        stops = [s for s in settings.stop if s]
        if stops:
            kwargs.update(stop_strings=stops, tokenizer=self.tokenizer)
        if cache.length:
            kwargs[cache_kwarg(self.model)] = cache.for_batch(1)
        streamer = _Streamer(self.tokenizer, stops, emit) if emit else None
        generated = self.model.generate(ids, streamer=streamer, **kwargs)[0, ids.shape[1]:]
        self.usage.tokens += len(row)
        self.usage.generated += int(generated.numel())
        return cut_at_stop(self.tokenizer.decode(generated, skip_special_tokens=True), stops)


    # ---- chat -------------------------------------------------------------------------
    def chat_text(self, messages: list[dict], add_generation_prompt: bool) -> str:
        if not getattr(self.tokenizer, "chat_template", None):
            raise UsageError(f"--chat: {self.name}'s tokenizer has no chat template; drop --chat for this model")
        return self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)


def _stopping(progress) -> bool:
    return bool(progress is not None and getattr(progress, "should_stop", False))


class _Sampler(LogitsProcessor):
    """Samples the next token with the run's own generator and leaves only that token, which greedy
    decoding then takes. transformers' do_sample draws from torch's global RNG: seeding that would
    reset the user's random state (and race with a background run)."""

    def __init__(self, settings: GenerateSettings, generator: torch.Generator):
        self.warpers = [TemperatureLogitsWarper(settings.temperature)]
        if settings.top_p < 1:
            self.warpers.append(TopPLogitsWarper(settings.top_p))
        self.generator = generator

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for warp in self.warpers:
            scores = warp(input_ids, scores)
        chosen = torch.multinomial(torch.softmax(scores.float(), dim=-1), 1, generator=self.generator)
        return torch.full_like(scores, float("-inf")).scatter_(-1, chosen, 0.0)


class _Streamer(BaseStreamer):
    """Writes each new piece of the answer as it is generated (transformers' streamer protocol)."""

    def __init__(self, tokenizer, stops: list[str], emit: Callable[[str], None]):
        super().__init__()
        self.tokenizer, self.stops, self.emit = tokenizer, stops, emit
        self.prompt_seen = False
        self.ids: list[int] = []
        self.shown = 0

    def put(self, value) -> None:
        if not self.prompt_seen:  # generate hands over the prompt first
            self.prompt_seen = True
            return
        self.ids += value.reshape(-1).tolist()
        text = cut_at_stop(self.tokenizer.decode(self.ids, skip_special_tokens=True), self.stops)
        if text.endswith("\ufffd"):  # half a multi-byte character: wait for the rest
            return
        if len(text) > self.shown:
            self.emit(text[self.shown:])
            self.shown = len(text)

    def end(self) -> None:
        pass
