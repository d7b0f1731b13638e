"""`model.freeze`: the named parts keep their exact weights through real SFT training, the rest moves,
on every family (their vision towers / projectors live under different attribute names)."""

from __future__ import annotations

import pytest
import torch

from vlalign.models.freeze import find_part
from vlalign.models.load import ModelConfig, load_model
from vlalign.trainers.configs import SFTConfig

FAMILIES = ["llava", "qwen2_vl", "idefics3"]


def _weights(model_dir):
    """Parameters by their in-memory names (the files may store legacy key names)."""
    model = load_model(ModelConfig(name_or_path=str(model_dir))).model
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("family", FAMILIES)
def test_frozen_vision_tower_keeps_its_weights_through_sft(family, tiny_model_dir, trainer_data, tmp_path):
    from vlalign.trainers.sft import train_sft

    model_dir = tiny_model_dir(family)
    loaded = load_model(ModelConfig(name_or_path=str(model_dir), freeze=["vision_tower"]))
    tower = {id(p) for p in find_part(loaded.model, "vision_tower").parameters()}
    assert tower and all(not p.requires_grad for p in find_part(loaded.model, "vision_tower").parameters())
    assert any(p.requires_grad for p in loaded.model.parameters() if id(p) not in tower)

    cfg = SFTConfig.model_validate({
        "output_dir": str(tmp_path / "sft"), "model": {"name_or_path": str(model_dir), "freeze": ["vision_tower"]},
        "data": {"train": str(trainer_data[1]), "max_length": 128}, "per_device_batch_size": 4, "max_steps": 2,
        "learning_rate": 1e-2, "lr_scheduler": "constant", "progress": False,
    })  # fmt: skip
    train_sft(cfg)
    before, after = _weights(model_dir), _weights(tmp_path / "sft" / "final")
    names = {n for n, p in loaded.model.named_parameters() if id(p) in tower}
    vision = [k for k in before if k in names]
    assert len(vision) == len(names)
    assert all(torch.equal(before[k], after[k]) for k in vision)  # frozen: bit-identical
    moved = [k for k in before if k not in names and not torch.equal(before[k], after[k])]
    assert moved  # the language model trained


def test_unknown_part_is_a_config_error():
    with pytest.raises(ValueError, match="vision_tower"):  # did-you-mean names the right spelling
        ModelConfig(name_or_path="x", freeze=["vision_towr"])


def test_missing_part_names_the_model_and_the_fix():
    class Plain(torch.nn.Module):
        pass

    with pytest.raises(ValueError, match=r"cannot find the 'projector'.*MODEL_PARTS"):
        find_part(Plain(), "projector")


def _sgd_step(model_dir, data, out, scale):
    from vlalign.trainers.sft import train_sft

    cfg = SFTConfig.model_validate({
        "output_dir": str(out), "model": {"name_or_path": str(model_dir), "lr_scale": {"vision_tower": scale}},
        "data": {"train": str(data), "max_length": 128}, "per_device_batch_size": 4, "max_steps": 1, "optimizer": "sgd",
        "learning_rate": 1e-1, "lr_scheduler": "constant", "progress": False, "seed": 0,
    })  # fmt: skip
    train_sft(cfg)
    return _weights(out / "final")


def test_lr_scale_trains_a_part_at_its_multiple_of_the_learning_rate(tiny_model_dir, trainer_data, tmp_path):
    """One plain SGD step (Δw = −lr·g, the same gradient for the same seed and batch): the vision tower's
    change at lr_scale 0.25 is a quarter of its change at 1, and the rest of the model moves the same."""
    from vlalign.trainers.common import build_optimizer

    model_dir = tiny_model_dir("llava")
    loaded = load_model(ModelConfig(name_or_path=str(model_dir)))
    tower = {n for n, p in loaded.model.named_parameters() if any(p is q for q in find_part(loaded.model, "vision_tower").parameters())}
    cfg = SFTConfig.model_validate({"output_dir": str(tmp_path / "x"), "data": {"train": "x.jsonl"}, "learning_rate": 0.2,
                                    "model": {"name_or_path": str(model_dir), "lr_scale": {"vision_tower": 0.25}}})  # fmt: skip
    groups = build_optimizer(loaded.model, cfg).param_groups
    assert [(g.get("part"), g["lr"]) for g in groups] == [(None, 0.2), ("vision_tower", 0.05)]
    assert sum(p.numel() for p in groups[1]["params"]) == sum(p.numel() for p in find_part(loaded.model, "vision_tower").parameters())

    before = _weights(model_dir)
    full, quarter = (_sgd_step(model_dir, trainer_data[1], tmp_path / f"s{s}", s) for s in (1.0, 0.25))
    moved = [n for n in tower if not torch.equal(before[n], full[n])]
    assert moved
    for n in moved:
        torch.testing.assert_close(quarter[n] - before[n], 0.25 * (full[n] - before[n]), rtol=1e-4, atol=1e-7)
    for n in before.keys() - tower:
        torch.testing.assert_close(quarter[n], full[n], rtol=0, atol=1e-6)


def test_lr_scale_of_a_frozen_or_unknown_part_is_an_error(tiny_model_dir):
    from vlalign.trainers.common import build_optimizer

    with pytest.raises(ValueError, match="vision_tower"):
        ModelConfig(name_or_path="x", lr_scale={"vision_towr": 0.1})
    with pytest.raises(ValueError, match="must be > 0"):
        ModelConfig(name_or_path="x", lr_scale={"vision_tower": 0.0})
    model_dir = tiny_model_dir("llava")
    mc = {"name_or_path": str(model_dir), "freeze": ["vision_tower"], "lr_scale": {"vision_tower": 0.1}}
    cfg = SFTConfig.model_validate({"output_dir": "x", "data": {"train": "x.jsonl"}, "model": mc})
    with pytest.raises(ValueError, match="none of its parameters train"):
        build_optimizer(load_model(cfg.model).model, cfg)
