"""Rollout prefill once per group: the expanded KV cache equals the one of K separate prompt rows, and
sampling with it draws the very same tokens as prefilling all B·K rows (same seed), on the families
that support it (Qwen2-VL included: its M-RoPE offsets are repeated with the cache); other families
fall back with a reason."""

from __future__ import annotations

import pytest
import torch

from vlalign.data.collate import CollateConfig
from vlalign.data.records import PromptRecord
from vlalign.models.shared_prefix import mm_token_type_ids
from vlalign.rollout.config import RolloutConfig
from vlalign.rollout.generate import (
    SHARED_PREFILL_TYPES,
    encode_prompts,
    hf_generate,
    left_pad,
    prefill_groups,
    repeat_image_inputs,
    shared_prefill_reason,
)


def _encoded(processor, tmp_path):
    from PIL import Image

    Image.new("RGB", (64, 64), (200, 20, 20)).save(tmp_path / "red.png")
    Image.new("RGB", (64, 64), (20, 20, 200)).save(tmp_path / "blue.png")
    records = [PromptRecord(id="a", images=["red.png"], prompt="What colour?"),
               PromptRecord(id="b", images=["blue.png"], prompt="Which colour is the square in this picture, please?")]
    return encode_prompts(processor, records, CollateConfig(max_length=256, base_dir=str(tmp_path)))


@pytest.mark.parametrize("family", SHARED_PREFILL_TYPES)
def test_shared_prefill_cache_and_samples_equal_per_sample(family, tiny_model_dir, tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    d = tiny_model_dir(family)
    model = AutoModelForImageTextToText.from_pretrained(d, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(d)
    encoded = _encoded(processor, tmp_path)
    assert len({len(e.prompt_ids) for e in encoded}) == 2  # different lengths: left padding is exercised
    k = 3
    pad = processor.tokenizer.pad_token_id or 0
    ids, mask = left_pad([e.prompt_ids for e in encoded], pad)  # (2, P)

    # the cache built once per prompt and repeated == the cache of the 6 repeated rows run by generate's rules
    once, _ = repeat_image_inputs(encoded, 1)
    with torch.no_grad():
        shared = prefill_groups(model, ids, mask, once, k)
        rows_ids, rows_mask = ids.repeat_interleave(k, 0), mask.repeat_interleave(k, 0)  # (6, P)
        each, _ = repeat_image_inputs(encoded, k)
        if family == "qwen2_vl":  # the model's own M-RoPE positions of the 6 rows
            types = mm_token_type_ids(model.config, rows_ids)
            model.model.rope_deltas = None
            full = model(input_ids=rows_ids[:, :-1], attention_mask=rows_mask[:, :-1], mm_token_type_ids=types[:, :-1],
                         **each, use_cache=True).past_key_values
        else:
            positions = (rows_mask.cumsum(-1) - 1).clamp(min=0)  # what generate derives from the mask
            full = model(input_ids=rows_ids[:, :-1], attention_mask=rows_mask[:, :-1], position_ids=positions[:, :-1],
                         **each, use_cache=True).past_key_values
    assert shared.get_seq_length() == ids.shape[1] - 1
    real = rows_mask[:, :-1].bool()  # (6, P-1) padded slots are never attended to: compare the real ones
    for a, b in zip(shared.layers, full.layers, strict=True):
        torch.testing.assert_close(a.keys.transpose(1, 2)[real], b.keys.transpose(1, 2)[real], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(a.values.transpose(1, 2)[real], b.values.transpose(1, 2)[real], atol=1e-5, rtol=1e-4)

    samples = []
    for prefill in ("per_sample", "auto"):
        torch.manual_seed(0)
        samples.append(hf_generate(model, processor, encoded, RolloutConfig(num_samples=k, max_new_tokens=8,
                                                                            prefill=prefill)))
    assert len(samples[0]) == 6 and samples[0] == samples[1]
    assert samples[0][0] != samples[0][1]  # the K samples of a prompt are different draws, not copies


def test_shared_prefill_reasons(tiny_model_dir):
    from transformers import AutoModelForImageTextToText

    assert set(SHARED_PREFILL_TYPES) == {"llava", "idefics3", "qwen2_vl"}  # each one tested above
    llava = AutoModelForImageTextToText.from_pretrained(tiny_model_dir("llava"))
    assert shared_prefill_reason(llava, RolloutConfig(num_samples=4)) is None
    assert "per_sample" in shared_prefill_reason(llava, RolloutConfig(prefill="per_sample"))
    assert "one sample" in shared_prefill_reason(llava, RolloutConfig(num_samples=1))
