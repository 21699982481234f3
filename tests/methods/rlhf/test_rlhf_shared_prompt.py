"""DPO's shared prompt pass (llm_magics/preference/shared_prompt.py): the same log-probs, gradients and training
losses as TRL's two whole sequences per pair, its truncation, and its fallbacks."""
import numpy as np
import pandas as pd
import pytest
import torch

from llm_magics import api
from llm_magics.preference import shared_prompt
from llm_magics.preference.shared_prompt import fit_pair, split_pairs

FIELDS = ("log_probs", "entropy", "mean_logits", "is_top1", "label_mask")
PAIRS = [{"prompt_ids": [5, 6, 7, 8, 9], "chosen_ids": [10, 11, 2], "rejected_ids": [12, 2]},
         {"prompt_ids": [13, 14], "chosen_ids": [15, 2], "rejected_ids": [16, 17, 18, 19, 2]},
         {"prompt_ids": [20, 21, 22], "chosen_ids": [23, 2], "rejected_ids": [24, 2]}]


def test_fit_pair_cuts_the_prompts_start_until_the_longer_answer_fits():
    prompt, chosen, rejected = list(range(10)), [100, 101, 102], [200, 201, 202, 203, 204]
    assert fit_pair(prompt, chosen, rejected, 15) == (prompt, chosen, rejected)        # fits: untouched
    assert fit_pair(prompt, chosen, rejected, 12) == (list(range(3, 10)), chosen, rejected)
    assert fit_pair(prompt, chosen, rejected, None) == (prompt, chosen, rejected)
    # an answer alone too long: keep 8 prompt tokens (at most half the room), the answers' starts
    long = list(range(300, 330))
    assert fit_pair(prompt, long, chosen, 20) == (list(range(2, 10)), long[:12], chosen)
    assert fit_pair([1, 2], long, chosen, 20) == ([1, 2], long[:18], chosen)


def _fused_llama(tiny_llama, attention="sdpa"):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32, attn_implementation=attention)
    # init_lora_weights=False: the adapter is not zero, so its gradients and effect are tested too
    model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", lora_dropout=0.0,
                                             init_lora_weights=False))
    add_fused_lm_head(model.get_base_model(), outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
    return model.train()


def _batch(pairs):
    from trl.trainer.dpo_trainer import DataCollatorForPreference
    batch = DataCollatorForPreference(pad_token_id=0)(pairs)
    return batch, batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)


def _forward_and_grads(model, batch, labels):
    model.zero_grad()
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels,
                fused_lm_head=True, use_cache=False)
    (out.log_probs.sum() + out.entropy.sum()).backward()
    return out, [p.grad.clone() for p in model.parameters() if p.requires_grad]


@pytest.mark.parametrize("attention", ["sdpa", "eager"])   # a boolean mask for one, an additive one for the other
@pytest.mark.parametrize("ladder", [False, True])          # packed rows padded up the training ladder (bf16 CPU runs)
def test_the_shared_prompt_pass_gives_trls_values_and_gradients(tiny_llama, attention, ladder, monkeypatch):
    from llm_magics.engine.batching import few_training_shapes
    model = _fused_llama(tiny_llama, attention)
    assert model.config._attn_implementation == attention
    batch, labels = _batch(PAIRS)
    trl_out, trl_grads = _forward_and_grads(model, batch, labels)
    assert shared_prompt.install(model.get_base_model())
    widths = []
    original = shared_prompt.pack
    monkeypatch.setattr(shared_prompt, "pack", lambda *a, **k: widths.append(original(*a, **k)) or widths[-1])
    with few_training_shapes(model, torch.device("cpu"), torch.bfloat16, 64 if ladder else 0):
        ours, grads = _forward_and_grads(model, batch, labels)
    assert widths, "the pair batch did not take the shared path"
    longest = max(len(p["prompt_ids"]) + len(p["chosen_ids"]) + 1 + len(p["rejected_ids"]) for p in PAIRS)
    assert widths[0].input_ids.shape[1] == (12 if ladder else longest) and longest == 11
    for field in FIELDS:
        torch.testing.assert_close(getattr(ours, field).float(), getattr(trl_out, field).float(), atol=1e-5, rtol=1e-5)
    assert max(g.abs().max().item() for g in trl_grads) > 0.1
    for mine, theirs in zip(grads, trl_grads):
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-4)


def test_batches_that_are_not_pairs_with_one_prompt_go_to_trls_forward(tiny_llama):
    batch, labels = _batch(PAIRS)
    assert split_pairs(batch["input_ids"], batch["attention_mask"], labels) is not None
    other = batch["input_ids"].clone()
    other[3, 1] = 99                                     # rejected row 0's prompt differs from chosen row 0's
    assert split_pairs(other, batch["attention_mask"], labels.masked_fill(labels == -100, -100)) is None
    assert split_pairs(batch["input_ids"][:5], batch["attention_mask"][:5], labels[:5]) is None   # odd rows
    no_answer = labels.clone()
    no_answer[0] = -100
    assert split_pairs(batch["input_ids"], batch["attention_mask"], no_answer) is None
    model = _fused_llama(tiny_llama)
    reference = model(input_ids=other, attention_mask=batch["attention_mask"], labels=labels, fused_lm_head=True)
    shared_prompt.install(model.get_base_model())
    fallback = model(input_ids=other, attention_mask=batch["attention_mask"], labels=labels, fused_lm_head=True)
    torch.testing.assert_close(fallback.log_probs, reference.log_probs)


def test_dpo_trains_the_same_with_the_shared_prompt_pass_as_with_trls(tiny_llama, separable, monkeypatch):
    """The whole `%rlhf dpo` run (reference pass, 4 LoRA steps, held-out scoring) with and without the shared
    pass: the same losses and held-out metrics."""
    _, pos, neg = separable
    import random
    rng = random.Random(0)
    data = pd.DataFrame([{"prompt": "Review of " + " ".join(rng.choice(pos + neg) for _ in range(rng.randint(1, 6))),
                          "chosen": " " + " ".join(rng.choice(pos) for _ in range(rng.randint(1, 5))),
                          "rejected": " " + " ".join(rng.choice(neg) for _ in range(rng.randint(1, 5)))}
                         for _ in range(60)])

    def run():
        # fp32: the two passes are compared to 1e-4; a bf16 base rounds differently for each batch shape.
        result = api.rlhf.dpo(policy=str(tiny_llama), data=data, method="lora", lr=5e-3, steps=4, batch_size=8,
                              dtype="float32")
        api.lora.unload(name=result.adapter)
        return result
    calls = []
    original = shared_prompt.pack
    monkeypatch.setattr(shared_prompt, "pack", lambda *a, **k: calls.append(1) or original(*a, **k))
    shared = run()
    assert len(calls) >= 4 + 1 + 3                    # every training step, the reference pass, held-out scoring
    monkeypatch.setattr(shared_prompt, "install", lambda model, **_: False)
    plain = run()
    losses = [r.history["loss"].dropna().tolist() for r in (shared, plain)]
    assert len(losses[0]) == 4
    assert losses[0] == pytest.approx(losses[1], abs=1e-4)
    for key in ("test_margin", "test_chosen_shift", "test_rejected_shift"):
        assert shared.metrics[key] == pytest.approx(plain.metrics[key], abs=1e-4), key


def test_held_out_log_probs_are_the_whole_sequences_log_probs(tiny_llama, monkeypatch):
    from transformers import AutoModelForCausalLM

    from llm_magics.models import load_tokenizer, resolve
    from llm_magics.preference.trl_bridge import pair_logprobs, tokenize_pair
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    tokenizer = load_tokenizer(resolve(str(tiny_llama)))
    frame = pd.DataFrame({"prompt": ["Review: the film", "Review: a long and winding plot, the acting"],
                          "chosen": [" was great", " good"], "rejected": [" bad", " was dull and far too long"]})
    chosen, rejected = pair_logprobs(model, tokenizer, frame, max_length=12)
    for i, row in frame.iterrows():
        prompt, *answers = tokenize_pair(tokenizer, row.prompt, row.chosen, row.rejected, 12)
        assert len(prompt) + max(map(len, answers)) <= 12
        assert i == 1 or all(a[-1] == tokenizer.eos_token_id for a in answers)   # row 1's long answer is cut
        for got, answer in zip((chosen[i], rejected[i]), answers):
            ids = torch.tensor([prompt + answer])
            with torch.no_grad():
                logp = torch.log_softmax(model(ids).logits[0, :-1], -1)
            expected = logp[len(prompt) - 1:].gather(1, ids[0, len(prompt):, None]).sum().item()
            assert got == pytest.approx(expected, abs=1e-4)
    # a model the packed rows cannot score (here: said so) is scored as whole sequences, to the same values
    monkeypatch.setattr(shared_prompt, "shares_prompts", lambda model: False)
    whole = pair_logprobs(model, tokenizer, frame, max_length=12)
    np.testing.assert_allclose(np.stack(whole), np.stack((chosen, rejected)), atol=1e-4)
