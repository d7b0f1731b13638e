"""The benchmark miniatures have the shapes bench/README.md claims (bench/model_shapes.py, bench/flops.py).

Checked exactly: the FLOP formulas' weight counts equal the built model's matrices, the formula's
image-token count equals what the family's processor produces, and the causal context sum on a
hand-worked case. Checked against the public configs: each bench-mini's share of one DPO pair's
forward FLOPs in decoder layers / output layer / vision tower is within 3 points of its real
checkpoint's (the table in bench/README.md).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from vlalign.models.tiny import TINY_FAMILIES, size_spec

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load(name: str):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


flops = _load("flops")
shapes = _load("model_shapes")


def _linear_weights(module: torch.nn.Module) -> int:
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, torch.nn.Linear))


def test_causal_context_hand_example():
    # prompt 2: 1 + 2 = 3; response of 1: sees 2 + 1 = 3; response of 2: 3 + 4 = 7 → 13
    assert flops.causal_context(2, [1, 2]) == 13
    assert flops.causal_context(3, []) == 6  # 1 + 2 + 3


@pytest.mark.parametrize("family", ["qwen2_vl", "llava"])
@pytest.mark.parametrize("size", ["bench-mini", "bench-vocab"])
def test_formulas_count_the_built_models_matrices(family, size):
    with torch.device("meta"):
        model, processor = TINY_FAMILIES.get(family)(size_spec(family, size), 0)
    arch = flops.arch_from_config(model.config.to_dict())
    lm = model.model.language_model
    assert arch.decoder_linear == _linear_weights(lm.layers)
    assert arch.head == model.lm_head.weight.numel()
    blocks = model.model.visual.blocks if family == "qwen2_vl" else model.model.vision_tower.encoder.layers
    per_block = 4 * arch.v_hidden**2 + 2 * arch.v_hidden * arch.v_intermediate
    assert arch.v_layers * per_block == _linear_weights(blocks)

    side = 448 if family == "qwen2_vl" else 336
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    ids = processor(images=[Image.new("RGB", (side, side))], text=[text], return_tensors="pt")["input_ids"]
    image_id = getattr(model.config, "image_token_id", None) or model.config.image_token_index
    assert int((ids == image_id).sum()) == arch.image_tokens(side, side)[0]  # 256 (Qwen2-VL), 576 (LLaVA)


@pytest.mark.parametrize("family", ["qwen2_vl", "llava"])
def test_bench_mini_keeps_the_real_checkpoints_flop_balance(family):
    real = shapes.row("real", family, shapes.real_config(family), None)
    mini = shapes.row("mini", family, shapes.miniature_config(family, "bench-mini")[0], None)
    for key in ("share_layers", "share_output_layer", "share_vision"):
        assert abs(mini[key] - real[key]) < 0.03, (key, mini[key], real[key])
    assert mini["image_tokens"] == real["image_tokens"]


def test_qwen2_vl_2b_builds_from_the_shipped_config():
    """`--model qwen2-vl-2b` (bench/gpu.sh) has the public config's dimensions: built on the meta device,
    2,209M parameters of Qwen2-VL-2B + its 233M output layer untied (1536 × 151,936) = 2,442M."""
    row = shapes.check_from_config()
    assert round(row["params"] / 1e6) == 2442
    assert row["vocab"] == 151936 and row["image_tokens"] == 256


def test_gpu_script_parses_and_knows_its_modes():
    import subprocess

    script = BENCH / "gpu.sh"
    assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0
    bad = subprocess.run(["bash", str(script), "--bogus"], capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and "usage" in bad.stderr
