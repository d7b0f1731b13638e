"""Shared-prefix pair forward: the packing and mask by hand, equal log-probs AND gradients to the plain
batched forward on every tiny family (prompts of different lengths, so padding matters), the fallback
reasons, and a DPO run with it trains."""

from __future__ import annotations

import pytest
import torch

from vlalign.data.collate import CollateConfig, EncodedDataset
from vlalign.data.records import PreferenceRecord
from vlalign.models.shared_prefix import (
    SharedPrefixError,
    batched_pair_logprobs,
    block_attention_mask,
    pack_layout,
    pick_pair_forward,
    shared_prefix_logprobs,
    unsupported_reason,
)
from vlalign.models.tiny import ARCHITECTURES


def test_pack_layout_and_mask_by_hand():
    # One record (B=1), T=5. Batched rows (pad 0):
    #   chosen   [7, 8 | 1, 2, 3]   prompt length 2, response 1 2 3
    #   rejected [7, 8 | 4, 0, 0]   response 4, then padding
    ids = torch.tensor([[7, 8, 1, 2, 3], [7, 8, 4, 0, 0]])
    att = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    resp = torch.tensor([[0, 0, 1, 1, 1], [0, 0, 1, 0, 0]], dtype=torch.bool)
    src, seg, hidden_at = pack_layout(ids, att, resp, num_records=1)
    # packed row [7, 8, 1, 2, 3, 4]: slot s takes batched flat index row*T + t (T = 5)
    assert src.tolist() == [[0, 1, 2, 3, 4, 5 + 2]]
    assert seg.tolist() == [[0, 0, 1, 1, 1, 2]]
    # chosen row: hidden at t is packed slot t; rejected row: prompt slots 0,1, its token at t=2 is slot 5
    assert hidden_at.tolist() == [[0, 1, 2, 3, 4], [0, 1, 5, 0, 0]]
    allowed = block_attention_mask(seg, torch.float32)[0, 0] == 0  # (S, S), True = may attend
    expected = torch.tensor([
        # keys: p  p  c  c  c  r
        [1, 0, 0, 0, 0, 0],  # prompt 7
        [1, 1, 0, 0, 0, 0],  # prompt 8
        [1, 1, 1, 0, 0, 0],  # chosen 1
        [1, 1, 1, 1, 0, 0],  # chosen 2
        [1, 1, 1, 1, 1, 0],  # chosen 3
        [1, 1, 0, 0, 0, 1],  # rejected 4: the prompt and itself, never the chosen tokens
    ], dtype=torch.bool)
    assert torch.equal(allowed, expected)


def test_padding_queries_see_only_padding_and_prompts_must_match():
    seg = torch.tensor([[0, 1, 2, -1]])
    allowed = block_attention_mask(seg, torch.float32)[0, 0] == 0
    assert allowed[3].tolist() == [False, False, False, True]  # no fully-masked row (would be NaN)
    assert not allowed[:3, 3].any()  # and no real token sees padding
    ids = torch.tensor([[7, 8, 1], [7, 9, 4]])  # same record, different prompts
    with pytest.raises(SharedPrefixError, match="do not start with the same prompt"):
        pack_layout(ids, torch.ones_like(ids), torch.tensor([[0, 0, 1], [0, 0, 1]], dtype=torch.bool), 1)


def _records(tmp_path):
    from PIL import Image

    colours = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30)}
    for name, rgb in colours.items():
        Image.new("RGB", (64, 64), rgb).save(tmp_path / f"{name}.png")
    prompts = ["What color?", "What color is the square in this picture, please?", "Color of the image?"]
    answers = ["It is {}.", "The square in the picture is {} on white.", "{}"]
    names = list(colours)
    return [
        PreferenceRecord(id=f"r{i}", images=[f"{names[i]}.png"], prompt=prompts[i],
                         chosen=answers[i].format(names[i]), rejected=answers[(i + 1) % 3].format(names[(i + 1) % 3]))
        for i in range(3)
    ]


@pytest.mark.parametrize("family", ARCHITECTURES)
def test_equals_batched_forward_logprobs_and_gradients(family, tiny_model_dir, tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    d = tiny_model_dir(family)
    model = AutoModelForImageTextToText.from_pretrained(d, dtype=torch.float32)
    model.train()  # tiny models have no dropout: train mode is deterministic, and it is what DPO runs
    processor = AutoProcessor.from_pretrained(d)
    assert unsupported_reason(model) is None
    ds = EncodedDataset(_records(tmp_path), processor, CollateConfig(128, None, str(tmp_path)), "pair",
                        extra="mismatched")  # 3 blocks: chosen, rejected, KTO's mismatched answer
    batch = ds.batch([0, 1, 2])
    prompt_lens = {len(ds.encode(i).prompt_ids) for i in range(3)}
    assert len(prompt_lens) == 3  # every prompt has its own length: padding is exercised

    results = []
    for forward in (batched_pair_logprobs, shared_prefix_logprobs):
        model.zero_grad()
        logps, mask = forward(model, batch.inputs, batch.response_mask, batch.num_records)  # (9, T)
        weights = torch.linspace(-1.0, 2.0, logps.shape[0])[:, None]  # every row gets its own gradient sign
        (logps * weights).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((logps.detach(), mask, grads))
    (ref, ref_mask, ref_grads), (got, got_mask, got_grads) = results
    assert torch.equal(ref_mask, got_mask)
    assert (ref[ref_mask.bool()] < 0).all()  # real log-probs, not zeros
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    assert set(got_grads) == set(ref_grads) and len(ref_grads) > 10
    vision = [n for n in ref_grads if "vision" in n or "visual" in n]
    assert vision, "the vision tower gets gradients through the shared prefix too"
    for name, g in ref_grads.items():
        torch.testing.assert_close(got_grads[name], g, atol=1e-5, rtol=1e-4, msg=name)


def test_fallback_reasons(tiny_model_dir):
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir("llava"))
    name, forward, reason = pick_pair_forward("shared_prefix", model, extra="corrupted")
    assert name == "batched" and forward is batched_pair_logprobs and "corrupted" in reason
    assert pick_pair_forward("shared_prefix", model, extra="mismatched")[0] == "shared_prefix"
    model.config.model_type = "made_up_vlm"
    assert "has no shared-prefix position rule" in unsupported_reason(model)


def test_auto_picks_shared_prefix_only_where_verified_exact(tiny_model_dir, monkeypatch):
    from transformers import AutoModelForImageTextToText

    from vlalign.models import shared_prefix

    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir("llava"))
    # supported family: the fast path, no reason
    assert pick_pair_forward("auto", model) == ("shared_prefix", shared_prefix_logprobs, None)
    assert pick_pair_forward("auto", model, extra="mismatched")[0] == "shared_prefix"  # KTO's block shares it
    # ... but mDPO's corrupted-image block has its own image: batched, with the reason
    name, forward, reason = pick_pair_forward("auto", model, extra="corrupted")
    assert (name, forward) == ("batched", batched_pair_logprobs) and "corrupted" in reason
    # explicit choices are honoured
    assert pick_pair_forward("batched", model)[:2] == ("batched", batched_pair_logprobs)
    assert pick_pair_forward("shared_prefix", model)[:2] == ("shared_prefix", shared_prefix_logprobs)
    # a family with a position rule that is not (yet) verified: auto stays batched, explicit still packs
    monkeypatch.setattr(shared_prefix, "VERIFIED_EXACT", frozenset({"qwen2_vl"}))
    name, forward, reason = pick_pair_forward("auto", model)
    assert (name, forward) == ("batched", batched_pair_logprobs) and "'llava' is not verified exact" in reason
    assert pick_pair_forward("shared_prefix", model)[0] == "shared_prefix"
    monkeypatch.undo()
    # an unsupported real VLM type (no position rule, not verified): batched under auto
    model.config.model_type = "paligemma"
    name, forward, reason = pick_pair_forward("auto", model)
    assert (name, forward) == ("batched", batched_pair_logprobs) and "'paligemma'" in reason


def test_verified_exact_is_what_the_equality_test_covers(tiny_model_dir):
    """VERIFIED_EXACT must name exactly the model types of the tiny families tested equal above."""
    import json

    from vlalign.models.shared_prefix import PAIR_POSITIONS, VERIFIED_EXACT

    tested = {json.loads((tiny_model_dir(f) / "config.json").read_text())["model_type"] for f in ARCHITECTURES}
    assert VERIFIED_EXACT == tested
    assert all(t in PAIR_POSITIONS for t in VERIFIED_EXACT)


def test_dpo_default_forward_is_shared_prefix_and_trains(tiny_model_dir, trainer_data, tmp_path, capsys, learning):
    from vlalign.trainers.configs import DPOConfig
    from vlalign.trainers.dpo import train_dpo
    from vlalign.trainers.logging import read_metrics

    cfg = DPOConfig.model_validate({
        "output_dir": str(tmp_path), "model": {"name_or_path": str(tiny_model_dir("llava"))},
        "data": {"train": str(trainer_data[0]), "max_length": 128}, "per_device_batch_size": 8, "max_steps": 5,
        "learning_rate": 5e-3, "lr_scheduler": "constant", "progress": False, "beta": 0.5, "seed": learning.seed,
    })
    assert cfg.forward == "auto"  # the default
    train_dpo(cfg)
    assert "pair forward: shared_prefix (forward=auto)" in capsys.readouterr().err
    losses = [r["loss"] for r in read_metrics(tmp_path) if "loss" in r]
    # step 1: policy == reference (cache scored with the same forward), so the loss is log 2 exactly
    assert losses[0] == pytest.approx(0.693147, abs=1e-4)
    # 0.9191 on every seed 0-4 and kernel AVX2 / default (kernels move it by ~1e-6): 0.03 of margin
    assert learning.below("last / first loss", losses[-1] / losses[0], 0.95), losses
