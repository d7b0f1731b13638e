"""Recompute the vision tower in the backward pass instead of keeping its activations.

WHY the vision tower alone: at real image sizes it holds a large share of a training step's
activations for a small share of its FLOPs per byte. Qwen2-VL-2B turns a 448×448 image into 1024
patches that run through 32 blocks before the merger leaves 256 tokens; the benchmark miniature
(bench-mini, same token composition) keeps ~1.2 GB of vision activations for 4 pairs against ~1.8 GB
for the whole decoder. Recomputing the tower's blocks during backward drops those to the blocks'
inputs, at the cost of one more vision forward per step (+1/3 of the tower's training FLOPs: ~14% of
a bench-mini DPO step). The gradients are the same up to float rounding (tested); the decoder keeps
its activations, so its backward pays nothing extra.

It uses the transformers gradient-checkpointing switch of the vision tower's own blocks
(``GradientCheckpointingLayer``), non-reentrant, so frozen towers, LoRA and mixed precision behave as
with full-model checkpointing.
"""

from __future__ import annotations

from typing import Any

from vlalign.models.shared_prefix import hf_model
from vlalign.registry import Registry

# model_type -> attribute path of the vision tower under the model (transformers 5 layout)
VISION_TOWERS: Registry[str] = Registry("vision tower location")
VISION_TOWERS.register("llava")("model.vision_tower")
VISION_TOWERS.register("qwen2_vl", "qwen2_5_vl")("model.visual")
VISION_TOWERS.register("idefics3")("model.vision_model")


def vision_tower(model: Any) -> Any:
    """The vision tower module of a (possibly wrapped) image-text-to-text model."""
    hf = hf_model(model)
    tower = hf
    for name in VISION_TOWERS.get(hf.config.model_type).split("."):
        tower = getattr(tower, name)
    return tower


def recompute_vision_tower(model: Any) -> Any:
    """Turn on activation recomputation for the vision tower's blocks only; returns the tower."""
    tower = vision_tower(model)
    tower.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return tower
