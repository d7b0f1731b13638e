"""Freeze named parts of a VLM (vision tower, projector, language model) before training.

WHY: the usual VLM recipe (LLaVA's second stage, and most alignment runs) keeps the vision encoder
fixed: its features are already good, alignment data is small, and a full-rate update of a tower that
was trained on far more images mostly damages it. Each family names its parts differently, so a part is
a list of candidate attribute paths tried on the model and on its inner ``.model``.
"""

from __future__ import annotations

from typing import Any

from vlalign.registry import Registry

# part -> attribute paths (first match wins, per model) in HF image-text-to-text models
MODEL_PARTS: Registry[tuple[str, ...]] = Registry("model part")
MODEL_PARTS.register("vision_tower")(("vision_tower", "visual", "vision_model"))  # llava / qwen2-vl (incl. merger) / idefics3
MODEL_PARTS.register("projector")(("multi_modal_projector", "connector", "visual.merger"))
MODEL_PARTS.register("language_model")(("language_model", "text_model"))


def _get(obj: Any, path: str) -> Any | None:
    for name in path.split("."):
        obj = getattr(obj, name, None)
        if obj is None:
            return None
    return obj


def find_part(model: Any, part: str) -> Any:
    """The module that ``part`` names in ``model`` (searched on the model and its inner ``.model``, and on the
    ``.backbone`` of a reward / value head model)."""
    paths = MODEL_PARTS.get(part)
    backbone = getattr(model, "backbone", None)
    for root in (model, getattr(model, "model", None), backbone, getattr(backbone, "model", None)):
        for path in paths:
            module = _get(root, path) if root is not None else None
            if module is not None and hasattr(module, "parameters"):
                return module
    kind = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
    raise ValueError(
        f"model.freeze: cannot find the {part!r} of a {kind!r} model (looked for {', '.join(paths)} on the model "
        f"and on model.model); remove {part!r} from model.freeze or add this architecture's attribute path to "
        "vlalign.models.freeze.MODEL_PARTS"
    )


def freeze_parts(model: Any, parts: list[str]) -> int:
    """Set ``requires_grad=False`` on every parameter of the named parts; returns how many were frozen."""
    frozen = 0
    for part in parts:
        for p in find_part(model, part).parameters():
            if p.requires_grad:
                p.requires_grad_(False)
                frozen += p.numel()
    return frozen


def scaled_param_groups(model: Any, params: list[Any], base_lr: float, scales: dict[str, float]) -> list[dict[str, Any]]:
    """``params`` (the trainable ones) as optimizer groups: first the rest at ``base_lr``, then one group per
    part of ``scales`` at ``base_lr × scale`` (its ``part`` key names it). A part none of whose parameters
    trains is an error: the scale would silently do nothing."""
    by_id = {id(p): p for p in params}
    groups, taken = [], set()
    for part, scale in scales.items():
        mine = [p for p in find_part(model, part).parameters() if id(p) in by_id and id(p) not in taken]
        if not mine:
            raise ValueError(f"model.lr_scale names {part!r}, but none of its parameters train (frozen by model.freeze, "
                             f"or outside the LoRA adapter); remove {part!r} from model.lr_scale or from model.freeze")
        taken |= {id(p) for p in mine}
        groups.append({"params": mine, "lr": base_lr * scale, "part": part})
    rest = [p for p in params if id(p) not in taken]
    return ([{"params": rest, "lr": base_lr}] if rest else []) + groups
