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
