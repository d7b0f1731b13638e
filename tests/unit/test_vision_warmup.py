"""Vision warm-up (object-presence pre-training of the tiny LLaVA's vision tower) and the
own-vs-swapped image NLL gap."""

from __future__ import annotations

import pytest

from vlalign.experiments.vision_warmup import presence_labels, row_chunks

TYPES = [("red", "circle"), ("blue", "square"), ("green", "triangle")]


def test_presence_labels_by_hand():
    scenes = [
        {"objects": [{"color": "red", "shape": "circle"}, {"color": "green", "shape": "triangle"}]},
        {"objects": [{"color": "blue", "shape": "square"}, {"color": "blue", "shape": "square"}]},
    ]
    # scene 0 has types 0 and 2; scene 1 has type 1 (twice, still one label)
    assert presence_labels(scenes, TYPES).tolist() == [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]


def test_row_chunks_never_leave_a_row_without_a_swap_partner():
    assert row_chunks(5, 2) == [[0, 1], [2, 3, 4]]  # 5 = 2 + 2 + 1 → the lone 4 joins [2, 3]
    assert row_chunks(4, 2) == [[0, 1], [2, 3]]


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory):
    from vlalign.data.shapes.generate import ShapesConfig, generate_shapes
    from vlalign.evaluation.evaluate import read_records
    from vlalign.experiments.base import ModelSize, build_tiny_model, with_absolute_images

    root = tmp_path_factory.mktemp("vw")
    data = ShapesConfig(n_train=48, n_eval=8, image_size=32, max_objects=2, n_safety=0, n_safety_eval=0)
    generate_shapes(root / "data", data)
    size = ModelSize(text_hidden=32, vision_hidden=32, text_intermediate=64, vision_intermediate=64)
    base = build_tiny_model("llava", size, data.image_size, 0, root / "base")
    rows = with_absolute_images(read_records(root / "data" / "sft.jsonl"), root / "data")
    return root, base, rows


def test_warm_up_vision_loss_falls_and_only_vision_changes(tiny_demo, learning):
    import torch

    from vlalign.experiments.vision_warmup import VisionWarmupConfig, warm_up_vision
    from vlalign.models.load import ModelConfig, load_model

    root, base, rows = tiny_demo
    out, losses = warm_up_vision(base, rows, VisionWarmupConfig(steps=40, batch_size=16, learning_rate=3e-3),
                                 root / "warm", seed=learning.seed, log=lambda s: None)  # fmt: skip
    assert len(losses) == 40
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    # BCE starts ~ln 2 = 0.69; the base rates alone give ~0.4. Seeds 0-4 x kernels AVX2 / default: 0.46-0.52
    assert learning.below("last / first loss", last / first, 0.8), (first, last)
    before = load_model(ModelConfig(name_or_path=str(base))).model.state_dict()
    after = load_model(ModelConfig(name_or_path=str(out))).model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any("vision_tower" in k for k in changed) and any("multi_modal_projector" in k for k in changed)
    assert not any("language_model" in k or "lm_head" in k for k in changed)


def test_warm_up_vision_is_a_function_of_its_seed_not_of_the_global_generator(tiny_demo):
    """torch seeds its global generator at random in each process; the warm-up (its head's init) must not
    read it, or one config gives a different base in every run. The caller's generator is handed back."""
    import torch
    from safetensors.torch import load_file

    from vlalign.experiments.vision_warmup import VisionWarmupConfig, warm_up_vision

    root, base, rows = tiny_demo
    cfg = VisionWarmupConfig(steps=3, batch_size=8, learning_rate=3e-3)
    weights = []
    for i, global_seed in enumerate((1, 2)):
        torch.manual_seed(global_seed)
        state = torch.get_rng_state()
        out, _ = warm_up_vision(base, rows, cfg, root / f"same_{i}", seed=7, log=lambda s: None)
        assert torch.equal(torch.get_rng_state(), state)  # the caller's global generator, untouched
        weights.append(load_file(str(out / "model.safetensors")))
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_image_nll_gap_zero_when_every_row_shows_the_same_image(tiny_demo):
    """Swapping identical images cannot change anything: gap exactly 0; own NLL is a real number > 0."""
    from vlalign.experiments.vision_warmup import image_nll_gap
    from vlalign.models.load import ModelConfig, load_model

    _, base, rows = tiny_demo
    caps = [r for r in rows if r.meta["task"] == "caption"][:5]
    loaded = load_model(ModelConfig(name_or_path=str(base)))
    same = [type(r)(r.id, [caps[0].images[0]], r.prompt, r.reference, r.meta) for r in caps]
    g = image_nll_gap(loaded.model, loaded.processor, same, batch_size=2)
    assert g["image_nll_gap"] == pytest.approx(0.0, abs=1e-6) and g["image_nll_own"] > 0
    g2 = image_nll_gap(loaded.model, loaded.processor, caps, batch_size=2)
    assert g2["image_nll_gap"] != 0.0  # a random model's output still depends on its input image
