"""Vision warm-up before SFT, and a cheap "does the model see the image?" metric.

WHY: with a random-init CLIP tower the demo's SFT stays image-blind (/tmp/h16 diagnosis): the LM
learns the prompt-conditional answer prior in ~50 steps and the image tokens turn into a large,
nearly constant input; swapping images between rows changes the response NLL by ~0. Giving the
vision tower (and projector) an easy supervised task first — "which of the 12 object types are in
this picture?" (multi-label BCE on the TRAINING scenes' ground truth) — makes the image tokens carry
object identity before SFT starts, so SFT has something to read.

The throwaway head is a linear layer on the mean-pooled projector output (what the LM receives),
so the projector is trained too; the head is discarded and the model saved with ``save_pretrained``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import Field

from vlalign.config import BaseConfig


class VisionWarmupConfig(BaseConfig):
    """Budget of the warm-up; ``steps: 0`` disables it."""

    steps: int = Field(0, ge=0, description="optimizer steps of object-presence training (0 = off)")
    batch_size: int = Field(64, ge=1)
    learning_rate: float = Field(2e-3, gt=0)
    warmup_steps: int = Field(30, ge=0, description="linear warm-up, then cosine decay to 0 over `steps`")


def scene_rows(records: Sequence[Any]) -> list[tuple[str, dict[str, Any]]]:
    """(image path, scene) once per image, from records whose ``meta.scene`` holds the ground truth.

    The demo's SFT rows are several questions per scene; the warm-up needs each image once.
    """
    seen: dict[str, dict[str, Any]] = {}
    for row, r in enumerate(records):
        scene = (getattr(r, "meta", None) or {}).get("scene")
        if scene is None:
            raise ValueError(
                f"record {row} (id {getattr(r, 'id', '?')!r}) has no meta.scene: the vision warm-up needs the "
                "Shapes ground truth (rows made by `vlalign data shapes`); pass Shapes records or set vision_warmup.steps=0"
            )
        if len(r.images) != 1:
            raise ValueError(
                f"record {row} (id {r.id!r}) has {len(r.images)} images; the warm-up expects exactly 1"
            )
        seen.setdefault(str(r.images[0]), scene)
    return list(seen.items())


def presence_labels(scenes: Sequence[dict[str, Any]], types: Sequence[tuple[str, str]]) -> Any:
    """Multi-hot (N, K) float targets: 1 where object type k (colour, shape) is in scene n."""
    import torch

    index = {t: k for k, t in enumerate(types)}
    y = torch.zeros(len(scenes), len(types))  # (N, K)
    for n, scene in enumerate(scenes):
        for obj in scene["objects"]:
            y[n, index[(obj["color"], obj["shape"])]] = 1.0
    return y


def pooled_image_features(model: Any, pixel_values: Any) -> Any:
    """Mean over patches of the projector output the LM sees: (B, 3, H, W) -> (B, D_text)."""
    import torch

    cfg = model.config
    out = model.get_image_features(
        pixel_values=pixel_values,
        vision_feature_layer=cfg.vision_feature_layer,
        vision_feature_select_strategy=cfg.vision_feature_select_strategy,
    )
    feats = out.pooler_output if hasattr(out, "pooler_output") else out
    if isinstance(feats, (list, tuple)):
        feats = torch.stack(list(feats))  # (B, P, D): one image per row, same patch count
    return feats.mean(dim=1)  # (B, D)


def load_pixels(processor: Any, paths: Sequence[str]) -> Any:
    """All images once through the model's own image processor: (N, 3, H, W)."""
    from PIL import Image

    images = [Image.open(p).convert("RGB") for p in paths]
    return processor.image_processor(images, return_tensors="pt")["pixel_values"]


def warm_up_vision(
    model_dir: str | Path,
    records: Sequence[Any],
    cfg: VisionWarmupConfig,
    out_dir: str | Path | None = None,
    seed: int = 0,
    log: Any = print,
) -> tuple[Path, list[float]]:
    """Train vision tower + projector to predict object presence; save the model (head discarded).

    Args:
        model_dir: a saved tiny LLaVA (model + processor).
        records: TRAINING records with ``meta.scene`` and absolute image paths (eval scenes never).
        out_dir: where to save; None overwrites ``model_dir``.
    Returns:
        (saved model folder, per-step BCE losses).
    """
    import torch

    from vlalign.data.shapes.scene import all_object_types
    from vlalign.models.load import ModelConfig, load_model

    out = Path(out_dir) if out_dir is not None else Path(model_dir)
    loaded = load_model(ModelConfig(name_or_path=str(model_dir)))
    model, processor = loaded.model, loaded.processor
    rows = scene_rows(records)
    pixels = load_pixels(processor, [p for p, _ in rows])  # (N, 3, H, W)
    types = all_object_types()
    y = presence_labels([s for _, s in rows], types)  # (N, K)

    trained = list(model.model.vision_tower.parameters()) + list(
        model.model.multi_modal_projector.parameters()
    )
    from transformers import get_cosine_schedule_with_warmup

    # the head's init (and any dropout) draws from torch's global generator, which torch seeds at random in
    # each process: seed it, so one config gives one warm model, and hand the caller's state back afterwards
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = torch.nn.Linear(model.config.text_config.hidden_size, len(types))
        opt = torch.optim.AdamW(trained + list(head.parameters()), lr=cfg.learning_rate, weight_decay=0.0)
        sched = get_cosine_schedule_with_warmup(opt, min(cfg.warmup_steps, cfg.steps), cfg.steps)
        gen = torch.Generator().manual_seed(seed)
        model.train()
        losses: list[float] = []
        for step in range(cfg.steps):
            idx = torch.randint(len(rows), (min(cfg.batch_size, len(rows)),), generator=gen)
            logits = head(pooled_image_features(model, pixels[idx]))  # (B, K)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y[idx])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trained, 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
            if (step + 1) % 50 == 0 or step + 1 == cfg.steps:
                log(
                    f"[vision_warmup] step {step + 1}/{cfg.steps} bce {sum(losses[-50:]) / len(losses[-50:]):.4f}"
                )
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out, losses


def row_chunks(n: int, size: int) -> list[list[int]]:
    """0..n-1 in chunks of ``size``; a lone last row joins the previous chunk (it needs a swap partner)."""
    chunks = [list(range(s, min(s + size, n))) for s in range(0, n, size)]
    if len(chunks) > 1 and len(chunks[-1]) == 1:
        lone = chunks.pop()
        chunks[-1] = chunks[-1] + lone
    return chunks


def image_nll_gap(
    model: Any, processor: Any, records: Sequence[Any], batch_size: int = 32
) -> dict[str, float]:
    """Mean response NLL/token with each row's own image vs the image of the next row (rotated by one).

    A model that ignores the picture scores both the same (gap ≈ 0); one that reads it finds the
    wrong picture's caption less likely (gap > 0). Needs ≥ 2 rows per batch.
    """
    import torch

    from vlalign.data.collate import CollateConfig, EncodedDataset
    from vlalign.models.logprobs import response_logprobs

    if len(records) < 2:
        raise ValueError(f"image_nll_gap needs at least 2 rows to swap images; got {len(records)}")
    ds = EncodedDataset(records, processor, CollateConfig(max_length=512), "sft", cache_mib=0)
    sums = {"own": 0.0, "swapped": 0.0}
    tokens = 0
    model.eval()
    with torch.no_grad():
        for idx in row_chunks(len(ds), batch_size):
            b = ds.batch(idx)
            mask = b.response_mask  # (B, T)
            for name, pix in (
                ("own", b.inputs["pixel_values"]),
                ("swapped", b.inputs["pixel_values"].roll(1, 0)),
            ):
                logps, m = response_logprobs(model, {**b.inputs, "pixel_values": pix}, mask)  # (B, T)
                sums[name] -= float((logps * m).sum())
            tokens += int(mask.sum())
    own, swapped = sums["own"] / tokens, sums["swapped"] / tokens
    return {"image_nll_own": own, "image_nll_swapped": swapped, "image_nll_gap": swapped - own}
