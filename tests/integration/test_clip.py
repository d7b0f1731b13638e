"""CLIP reward: a small CLIP trained on Shapes ranks faithful captions above hallucinated ones."""

from __future__ import annotations

import json

import pytest
import torch

from vlalign.trainers.clip_train import ClipTrainConfig, clip_contrastive_loss, train_clip


def test_contrastive_loss_by_hand():
    # 2 images, orthonormal embeddings: image i == positive i, negatives orthogonal to everything.
    img = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    neg = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    loss, correct = clip_contrastive_loss(img, img.clone(), neg, torch.tensor(1.0))
    # i→t logits for image 0: [1, 0, 0, 0] → CE = -log(e / (e + 3)) = log(1 + 3/e) = 0.7436
    # t→i logits for text 0:  [1, 0]       → CE = log(1 + 1/e) = 0.3133;  mean = 0.5285
    assert torch.allclose(loss, torch.full((2,), 0.5285), atol=1e-4)
    assert correct.tolist() == [1.0, 1.0]


def test_clip_train_few_steps_loss_falls_and_reward_loads(rewards_shapes_dir, tmp_path, learning):
    from vlalign.rewards import Sample, build_source

    torch.set_num_threads(1)
    cfg = ClipTrainConfig(data=str(rewards_shapes_dir), output_dir=str(tmp_path / "clip"), hidden_size=64,
                          num_layers=2, projection_dim=64, per_device_batch_size=32, max_steps=12, limit=384,
                          logging_steps=1, progress=False, eval_limit=32,
                          seed=learning.seed)
    result = train_clip(cfg)
    rows = [json.loads(line) for line in (tmp_path / "clip" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows]
    assert len(losses) == 12
    # contrastive loss, 3-step means; seeds 0-4 x kernels AVX2 / default (scripts/learning_spread.py): the
    # fall was 0.19-0.87 (mean 0.39 ± 0.25); > 0.09 leaves 2x margin below the worst run (> 0.2 failed on seed 1).
    assert learning.above("loss fall", sum(losses[:3]) / 3 - sum(losses[-3:]) / 3, 0.09), losses
    assert result["n_pairs"] == 32 and 0.0 <= result["pair_accuracy"] <= 1.0
    # the saved model is a real CLIP checkpoint: the reward source loads it by path and scores samples
    src = build_source({"name": "clip", "kwargs": {"model": result["model_dir"]}, "normalize": "zscore"})
    row = json.loads((rewards_shapes_dir / "preference_eval.jsonl").read_text().splitlines()[0])
    img = [str(rewards_shapes_dir / row["images"][0])]
    out = src.score([Sample(img, row["prompt"], row["chosen"]), Sample(img, row["prompt"], row["rejected"]),
                     Sample(img, row["prompt"], "nothing")])
    assert out.rewards.shape == (3,) and abs(float(out.rewards.mean())) < 1e-5  # z-scored per batch
    assert out.parts["clip_cosine"].abs().max() <= 1.0 + 1e-5


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_clip_ranks_faithful_above_hallucinated_85pct(tmp_path):
    """Acceptance: ≥ 85% on the 500 held-out pairs. Measured: 0.918 after 300 steps (by error kind:
    insert 0.98, omit 1.00, colour 1.00, count 0.98, position 0.56), same settings as here."""
    from vlalign.data.shapes.generate import ShapesConfig, generate_shapes

    generate_shapes(tmp_path / "shapes", ShapesConfig(seed=0))
    torch.set_num_threads(1)
    cfg = ClipTrainConfig(data=str(tmp_path / "shapes"), output_dir=str(tmp_path / "clip"), max_steps=300,
                          progress=False, logging_steps=20)
    result = train_clip(cfg)
    print(result)
    assert result["n_pairs"] == 500
    assert result["pair_accuracy"] >= 0.85, result
