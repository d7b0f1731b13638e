"""`vlalign clip-train`: train a small CLIP on Shapes so the CLIP-score reward path is real and measurable.

WHY: an AI-feedback reward (CLIP score) is only worth testing if the scorer actually knows the
domain; no pretrained CLIP can be downloaded here, so we train one on the benchmark's images and
faithful captions on CPU in minutes. The acceptance check is the one an RL run relies on: on held-out
pairs (``preference_eval.jsonl``) the faithful caption must score above its hallucinated variant.

Hard negatives matter: with only in-batch negatives, captions of *other* images are easy to reject
(different objects), so the model never learns that "a red circle and a blue square" is wrong for an
image with just the red circle. Each row therefore carries its image's own corrupted caption, drawn
fresh every step from the benchmark's corruption functions (``hard_negatives: fresh``), or the
rejected answer of its preference pair (``fixed``).

Loss (per row i of a batch of B images): image→text softmax over the B positives + B hard negatives
(target: its own positive), plus text→image softmax over the B images; the two are averaged.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from vlalign.config import BaseConfig
from vlalign.monitors import MonitorSpec
from vlalign.trainers.run import build_run, open_run, resume_run
from vlalign.trainers.step import StepResult, mean_over

CLIP_SPECIAL = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}


class ClipTrainConfig(BaseConfig):
    """Small CLIP trained contrastively on a Shapes folder. Optimiser fields use the same names as
    :class:`vlalign.trainers.configs.TrainConfig`, so the shared run and step core (``trainers.run``,
    ``trainers.step``) train it."""

    data: str = Field(..., description="Shapes folder (scenes.jsonl, preference*.jsonl, manifest.json, images/)")
    output_dir: str
    seed: int = 0
    # model (both towers use the same width/depth)
    hidden_size: int = Field(128, ge=16)
    num_layers: int = Field(3, ge=1)
    num_heads: int = Field(4, ge=1)
    projection_dim: int = Field(128, ge=8)
    patch_size: int = Field(8, ge=2)
    vocab_size: int = Field(640, ge=300)
    max_text_length: int = Field(48, ge=8)
    # data
    hard_negatives: Literal["fresh", "fixed", "none"] = "fresh"
    limit: int | None = Field(None, ge=2, description="use only the first N training scenes (smoke tests)")
    eval_limit: int | None = Field(None, ge=1, description="evaluate on the first N held-out pairs")
    # optimisation
    per_device_batch_size: int = Field(64, ge=2)
    gradient_accumulation_steps: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1)
    num_epochs: float = Field(8.0, gt=0)
    optimizer: str = "adamw"
    learning_rate: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    adam_betas: tuple[float, float] = (0.9, 0.98)
    adam_eps: float = 1e-6
    lr_scheduler: str = "cosine"
    warmup_steps: int = Field(0, ge=0)
    warmup_ratio: float = Field(0.05, ge=0, le=1)
    max_grad_norm: float | None = 1.0
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "no"
    logging_steps: int = Field(10, ge=1)
    report_to: list[str] = Field(default_factory=list)
    progress: bool = True
    save_steps: Literal[0] = Field(0, description="no intermediate checkpoints (a run takes minutes)")
    save_total_limit: int = Field(1, ge=1)
    resume: Literal[False] = Field(False, description="no checkpoints, so nothing to resume")
    overwrite: bool = False
    resume_allow_changes: list[str] = Field(default_factory=list)
    eval_steps: Literal[0] = 0
    monitors: list[MonitorSpec] = Field(default_factory=list)
    max_consecutive_nonfinite: int = Field(3, ge=1)
    deterministic: bool = Field(False, description="as in TrainConfig: deterministic kernels, fixed threads")
    num_threads: int | None = Field(
        None, ge=1, description="torch CPU threads; 1 is much faster on a CPU shared with other jobs"
    )


# ------------------------------------------------------------------------------------ model + tokenizer


def build_clip(cfg: ClipTrainConfig, image_size: int) -> tuple[Any, Any]:
    """A random ``CLIPModel`` + ``CLIPProcessor`` (locally trained BPE that appends ``</s>``).

    CLIP pools the text tower at the first eos token, so every tokenized text must end with one:
    the tokenizer's post-processor adds it (and truncation keeps room for it).
    """
    from tokenizers.processors import TemplateProcessing
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from vlalign.models.tiny.tokenizer import build_hf_tokenizer

    tok = build_hf_tokenizer(cfg.vocab_size, CLIP_SPECIAL, [], chat_template="", model_max_length=cfg.max_text_length)
    tok._tokenizer.post_processor = TemplateProcessing(single="$A </s>", special_tokens=[("</s>", tok.eos_token_id)])
    width = {"hidden_size": cfg.hidden_size, "intermediate_size": 4 * cfg.hidden_size,
             "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads}
    config = CLIPConfig(
        text_config={**width, "vocab_size": len(tok), "max_position_embeddings": cfg.max_text_length,
                     "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id,
                     "bos_token_id": tok.bos_token_id},
        vision_config={**width, "image_size": image_size, "patch_size": cfg.patch_size},
        projection_dim=cfg.projection_dim,
    )
    model = CLIPModel(config).float()
    image_processor = CLIPImageProcessor(size={"shortest_edge": image_size},
                                         crop_size={"height": image_size, "width": image_size})  # fmt: skip
    return model, CLIPProcessor(image_processor=image_processor, tokenizer=tok)


# ------------------------------------------------------------------------------------------------ data


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; fix: point --data at a folder made by `vlalign data shapes`")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@dataclass
class ClipBatch:
    pixel_values: torch.Tensor  # (B, 3, H, W)
    pos_ids: torch.Tensor  # (B, T) faithful text of each image
    pos_mask: torch.Tensor  # (B, T)
    neg_ids: torch.Tensor | None  # (B, T') hallucinated text of each image, or None
    neg_mask: torch.Tensor | None  # (B, T')
    ids: list[str]

    def to(self, device: Any) -> ClipBatch:
        move = lambda t: None if t is None else t.to(device)
        return ClipBatch(move(self.pixel_values), move(self.pos_ids), move(self.pos_mask), move(self.neg_ids),
                         move(self.neg_mask), self.ids)  # fmt: skip


class ShapesClipData:
    """Training scenes with their pixels preprocessed once and (positive, hard negative) texts per draw."""

    def __init__(self, root: str | Path, processor: Any, mode: str, seed: int, limit: int | None = None):
        from vlalign.data.images import open_image
        from vlalign.data.shapes.scene import parse_object_type

        self.root, self.processor, self.mode, self.seed = Path(root), processor, mode, seed
        manifest = json.loads((self.root / "manifest.json").read_text()) if (self.root / "manifest.json").is_file() else {}
        shapes_cfg = manifest.get("config", {})
        self.weights = shapes_cfg.get("corruption_weights") or {"insert_object": 1.0}
        self.trigger = parse_object_type(shapes_cfg.get("trigger", "red circle"))
        self.companion = parse_object_type(shapes_cfg.get("companion", "blue square"))
        self.companion_rate = float(shapes_cfg.get("companion_rate", 0.7))
        self.scenes = [s for s in _read_jsonl(self.root / "scenes.jsonl") if s.get("split") == "train"][:limit]
        if len(self.scenes) < 2:
            raise ValueError(f"{self.root}/scenes.jsonl has fewer than 2 training scenes")
        self.pairs = {r["meta"]["scene"]["id"]: r for r in _read_jsonl(self.root / "preference.jsonl")}
        images = [open_image(s["image"], self.root) for s in self.scenes]
        self.pixels = torch.cat([processor(images=images[i:i + 256], return_tensors="pt")["pixel_values"]
                                 for i in range(0, len(images), 256)])  # (N, 3, H, W), fmt: skip
        self.draws = 0

    def __len__(self) -> int:
        return len(self.scenes)

    def texts(self, i: int, rng: random.Random) -> tuple[str, str | None]:
        """(faithful text, hallucinated text of the same image) for scene ``i``."""
        from vlalign.data.shapes.corruptions import CorruptionContext, corrupt
        from vlalign.data.shapes.generate import groups_of
        from vlalign.data.shapes.scene import objects_of, positions_of

        scene = self.scenes[i]
        if self.mode == "fixed" and scene["id"] in self.pairs:
            pair = self.pairs[scene["id"]]
            return pair["chosen"], pair["rejected"]
        ctx = CorruptionContext(groups_of(scene), objects_of(scene), positions_of(scene), rng, self.trigger,
                                self.companion, self.companion_rate)  # fmt: skip
        _, chosen, rejected, _ = corrupt(ctx, self.weights)
        return chosen, (None if self.mode == "none" else rejected)

    def batch(self, indices: list[int]) -> ClipBatch:
        rng = random.Random(f"{self.seed}:clip:{self.draws}")
        self.draws += 1
        pos, neg = zip(*(self.texts(i, rng) for i in indices))
        tok = self.processor.tokenizer
        enc = lambda t: tok(list(t), padding=True, truncation=True, return_tensors="pt")
        p = enc(pos)
        n = enc(neg) if neg[0] is not None else None
        return ClipBatch(self.pixels[indices], p["input_ids"], p["attention_mask"],
                         None if n is None else n["input_ids"], None if n is None else n["attention_mask"],
                         [self.scenes[i]["id"] for i in indices])  # fmt: skip


# ------------------------------------------------------------------------------------------------ loss


def clip_contrastive_loss(
    image_emb: torch.Tensor, pos_emb: torch.Tensor, neg_emb: torch.Tensor | None, logit_scale: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row symmetric InfoNCE with per-image hard negatives; returns (loss (B,), pair_correct (B,)).

    Embeddings are L2-normalised here. image→text: row i scores [B positives | B negatives] and the
    target is column i; text→image: positive i scores the B images, target i. ``pair_correct`` says
    whether image i scores its own positive above its own negative (the held-out criterion).
    """
    img = F.normalize(image_emb, dim=-1)  # (B, D)
    pos = F.normalize(pos_emb, dim=-1)  # (B, D)
    texts = pos if neg_emb is None else torch.cat([pos, F.normalize(neg_emb, dim=-1)])  # (B or 2B, D)
    logits_i2t = logit_scale * img @ texts.T  # (B, B or 2B)
    logits_t2i = logit_scale * pos @ img.T  # (B, B)
    target = torch.arange(img.shape[0], device=img.device)  # (B,)
    loss = 0.5 * (F.cross_entropy(logits_i2t, target, reduction="none")
                  + F.cross_entropy(logits_t2i, target, reduction="none"))  # (B,), fmt: skip
    if neg_emb is None:
        correct = torch.ones_like(loss)
    else:
        correct = ((img * pos).sum(-1) > (img * F.normalize(neg_emb, dim=-1)).sum(-1)).float()  # (B,)
    return loss, correct


def clip_embeddings(model: Any, batch: ClipBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    feats = lambda out: out.pooler_output if hasattr(out, "pooler_output") else out
    img = feats(model.get_image_features(pixel_values=batch.pixel_values))  # (B, D)
    pos = feats(model.get_text_features(input_ids=batch.pos_ids, attention_mask=batch.pos_mask))  # (B, D)
    neg = None
    if batch.neg_ids is not None:
        neg = feats(model.get_text_features(input_ids=batch.neg_ids, attention_mask=batch.neg_mask))  # (B, D)
    return img, pos, neg


# ------------------------------------------------------------------------------------------- evaluation


def heldout_pair_accuracy(scorer: Any, data_dir: str | Path, limit: int | None = None,
                          file: str = "preference_eval.jsonl") -> dict[str, Any]:
    """How often ``scorer`` (a ClipReward) scores chosen above rejected on held-out pairs, overall and
    per error kind."""
    from vlalign.data.images import open_image

    root = Path(data_dir)
    rows = _read_jsonl(root / file)[:limit]
    wins: dict[str, list[float]] = {}
    for start in range(0, len(rows), 64):
        chunk = rows[start:start + 64]
        images = [open_image(r["images"][0], root) for r in chunk]
        c = scorer.similarity(images, [r["chosen"] for r in chunk])  # (n,)
        r_ = scorer.similarity(images, [r["rejected"] for r in chunk])  # (n,)
        for row, ok in zip(chunk, (c > r_).tolist()):
            wins.setdefault(row.get("meta", {}).get("error", "all"), []).append(float(ok))
    flat = [w for v in wins.values() for w in v]
    return {"pair_accuracy": sum(flat) / max(1, len(flat)), "n_pairs": len(flat),
            "by_error": {k: sum(v) / len(v) for k, v in sorted(wins.items())}}  # fmt: skip


# ---------------------------------------------------------------------------------------------- training


def train_clip(cfg: ClipTrainConfig) -> dict[str, Any]:
    """Train, save ``output_dir/final`` (loads with ``CLIPModel``/``AutoProcessor``), evaluate, write metrics."""
    from vlalign.rewards.clip import ClipReward

    run = open_run(cfg)
    try:
        if run.dist.world > 1:
            # the contrastive loss takes its negatives from the micro-batch and the towers are called
            # outside the wrapped forward, so DDP would neither see the same loss nor sync gradients
            raise ValueError("clip-train runs on one process (its in-batch contrastive loss depends on the "
                             "micro-batch); launch it without accelerate's multi-process config")
        first = _read_jsonl(Path(cfg.data) / "scenes.jsonl")[0]
        model, processor = build_clip(cfg, int(first.get("image_size", 64)))
        data = ShapesClipData(cfg.data, processor, cfg.hard_negatives, cfg.seed, cfg.limit)
        build_run(run, model, processor, data.scenes, accumulation=cfg.gradient_accumulation_steps)
        run.source.collate = data.batch
        resume_run(run)

        def micro_step(batch: ClipBatch) -> StepResult:
            clip = run.acc.unwrap_model(run.model)
            img, pos, neg = clip_embeddings(clip, batch)
            loss, correct = clip_contrastive_loss(img, pos, neg, clip.logit_scale.exp().clamp(max=100.0))
            return StepResult(loss_sum=loss.sum(), metric_sums={"train_pair_acc": correct.sum().detach()},
                              tokens=int(batch.pos_mask.sum()))  # fmt: skip

        loss_fn = mean_over("images", micro_step)
        for step in run.steps():
            outcome = run.update(run.source.micro_batches(step), loss_fn, lambda b: {"images": len(b.ids)},
                                 where=step + 1)
            if run.end_step(step, outcome.metrics, outcome.finite):
                break
        final = run.output_dir / "final"
        if run.acc.is_main_process:
            run.acc.unwrap_model(run.model).eval().save_pretrained(final)
            processor.save_pretrained(final)
        summary = run.summary({"final": str(final)})
    finally:
        run.close()
    result = heldout_pair_accuracy(ClipReward(model=str(final)), cfg.data, cfg.eval_limit)
    result.update(steps=summary["steps"], skipped_steps=summary["skipped_steps"], model_dir=str(final))
    (run.output_dir / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
