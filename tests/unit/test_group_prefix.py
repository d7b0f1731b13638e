"""Shared-prefix group forward for RL (GRPO/RLOO): the row permutation by hand, and on every tiny family
the same log-probs, entropies (at a sampling temperature) and gradients as the batched forward over
G groups × K samples with prompts and responses of different lengths (so padding matters)."""

from __future__ import annotations

import pytest
import torch

from vlalign.data.collate import CollateConfig
from vlalign.data.records import PromptRecord
from vlalign.models.group_prefix import group_order, is_grouped
from vlalign.models.shared_prefix import SharedPrefixError
from vlalign.models.tiny import ARCHITECTURES
from vlalign.rollout import forward as forward_module
from vlalign.rollout.experience import Experience
from vlalign.rollout.forward import experience_logprobs, resolve_forward
from vlalign.rollout.generate import encode_prompts, layout_rows, repeat_image_inputs


def test_group_order_by_hand():
    # N = 6 rows, K = 3 (G = 2), group-major: [g0s0, g0s1, g0s2, g1s0, g1s1, g1s2] = 0..5.
    # Block-major (what pack_layout reads): block j holds sample j of every group → [0, 3, 1, 4, 2, 5].
    assert group_order(6, 3).tolist() == [0, 3, 1, 4, 2, 5]
    assert group_order(4, 1).tolist() == [0, 1, 2, 3]  # K = 1: nothing moves
    with pytest.raises(SharedPrefixError, match="not whole groups"):
        group_order(5, 2)


def test_is_grouped():
    assert is_grouped(torch.tensor([0, 0, 1, 1]), 2)
    assert not is_grouped(torch.tensor([0, 1, 0, 1]), 2)  # a shuffled minibatch
    assert not is_grouped(torch.tensor([0, 0, 0]), 2)  # not whole groups
    assert not is_grouped(torch.tensor([0, 0]), 1)  # K = 1 shares nothing


def _experience(processor, tmp_path, k: int) -> Experience:
    """2 prompts of different lengths and colours, K hand-written responses each of different lengths."""
    from PIL import Image

    for name, rgb in {"red": (220, 30, 30), "blue": (30, 30, 220)}.items():
        Image.new("RGB", (64, 64), rgb).save(tmp_path / f"{name}.png")
    records = [PromptRecord(id="a", images=["red.png"], prompt="What colour?"),
               PromptRecord(id="b", images=["blue.png"], prompt="Which colour is the square in this picture, please?")]
    encoded = encode_prompts(processor, records, CollateConfig(max_length=256, base_dir=str(tmp_path)))
    tok = processor.tokenizer
    texts = ["It is red.", "red", "A red square on a white ground.", "blue!", "The square is blue.", "no"]
    responses = [tok(t, add_special_tokens=False)["input_ids"] for t in texts[: 2 * k]]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    input_ids, attention, response_mask = layout_rows(encoded, responses, k, pad)
    images, chunks = repeat_image_inputs(encoded, k)
    n = len(responses)
    return Experience(input_ids=input_ids, attention_mask=attention, response_mask=response_mask,
                      image_inputs=images, group_ids=torch.arange(2).repeat_interleave(k), texts=texts[:n],
                      prompts=[""] * n, metas=[{}] * n, images=[[]] * n,
                      extras={f"_chunks/{key}": c for key, c in chunks.items()})


@pytest.mark.parametrize("family", ARCHITECTURES)
def test_group_forward_equals_batched(family, tiny_model_dir, tmp_path, monkeypatch):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    d = tiny_model_dir(family)
    model = AutoModelForImageTextToText.from_pretrained(d, dtype=torch.float32)
    model.train()  # tiny models have no dropout; train mode is what the policy pass runs in
    processor = AutoProcessor.from_pretrained(d)
    k = 3
    exp = _experience(processor, tmp_path, k)
    assert resolve_forward("auto", model, k) == ("shared_prefix", None)

    results = []
    for forward in ("batched", "shared_prefix"):
        model.zero_grad()
        logps, mask, entropy = experience_logprobs(model, exp, forward=forward, group_size=k, temperature=0.7,
                                                   return_entropy=True)  # (6, T) each
        weights = torch.linspace(-1.0, 2.0, logps.shape[0])[:, None]  # every row its own gradient sign
        (logps * weights).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((logps.detach(), mask, entropy.detach(), grads))
    (ref, ref_mask, ref_ent, ref_grads), (got, got_mask, got_ent, got_grads) = results
    assert torch.equal(ref_mask, got_mask) and torch.equal(ref_mask, exp.response_mask)
    assert (ref[ref_mask.bool()] < 0).all() and (ref_ent[ref_mask.bool()] > 0).all()  # real values, not zeros
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_ent, ref_ent, atol=1e-5, rtol=1e-5)
    assert set(got_grads) == set(ref_grads) and any("vision" in n or "visual" in n for n in ref_grads)
    for name, g in ref_grads.items():
        torch.testing.assert_close(got_grads[name], g, atol=1e-5, rtol=1e-4, msg=name)

    # whole groups in shuffled order (the single minibatch of a rollout) are packed and put back in order;
    # a minibatch cut across groups cannot be packed and is scored batched — the same values either way
    calls = []
    real_batched = forward_module.batched_logprobs
    monkeypatch.setattr(forward_module, "batched_logprobs", lambda *a, **kw: calls.append(1) or real_batched(*a, **kw))
    for rows, batched_calls in (([4, 0, 5, 2, 1, 3], 0), ([4, 0, 2], 1)):
        with torch.no_grad():
            part = experience_logprobs(model, exp.select(rows), forward="shared_prefix", group_size=k,
                                       temperature=0.7)[0]
        torch.testing.assert_close(part, ref[rows], atol=1e-5, rtol=1e-5)
        assert len(calls) == batched_calls, rows


def test_resolve_forward_reasons(tiny_model_dir):
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir("llava"))
    assert resolve_forward("batched", model, 4) == ("batched", None)
    name, why = resolve_forward("shared_prefix", model, 1)
    assert name == "batched" and "num_samples is 1" in why
    model.config.model_type = "made_up_vlm"
    name, why = resolve_forward("auto", model, 4)
    assert name == "batched" and "made_up_vlm" in why
    assert resolve_forward("shared_prefix", model, 4)[0] == "batched"  # no position rule: cannot be exact
