"""Typed configs of the trainers. Every hyperparameter is declared once, here, with what it does.

``TrainConfig`` is the base every trainer (SFT, DPO, and the RL trainers) extends: output, seed,
batching, optimizer, schedule, precision, checkpointing, logging and the NaN guard. Unknown keys are
errors (``lerning_rate`` → "did you mean `learning_rate`?"), so a typo never silently does nothing.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from vlalign.config import BaseConfig
from vlalign.data.config import DataConfig  # the data section lives with the data layer
from vlalign.hub import HubConfig
from vlalign.models.load import ModelConfig
from vlalign.monitors import MonitorSpec


class TrainDataConfig(DataConfig):
    """The training data plus where its held-out rows come from (SFT, DPO: evaluated every ``eval_steps``)."""

    eval: str | None = Field(None, description="held-out file/folder in any supported format (same kind of rows)")
    eval_fraction: float = Field(
        0.0, ge=0, lt=1, description="hold this share of data.train out of training for evaluation (a fixed, "
        "seeded choice of rows); used when data.eval is not set",
    )
    eval_limit: int | None = Field(None, ge=1, description="evaluate on the first N held-out rows only")


class TrainConfig(BaseConfig):
    """Shared by every trainer. The effective (global) batch per optimizer step is
    ``per_device_batch_size × gradient_accumulation_steps × num_processes``.

    Model-side switches (LoRA/QLoRA, gradient checkpointing, dtype, image ``max_pixels``) live in the
    ``model:`` section (:class:`vlalign.models.load.ModelConfig`), so every trainer shares them."""

    output_dir: str
    seed: int = 0
    model: ModelConfig
    data: TrainDataConfig

    per_device_batch_size: int = Field(4, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1, description="optimizer steps; None = num_epochs over the data")
    num_epochs: float = Field(1.0, gt=0)

    optimizer: str = Field("adamw", description="name in vlalign.trainers.common.OPTIMIZERS")
    learning_rate: float = Field(1e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    lr_scheduler: str = Field("cosine", description="name in vlalign.trainers.common.SCHEDULES")
    warmup_steps: int = Field(0, ge=0)
    warmup_ratio: float = Field(0.0, ge=0, le=1, description="used when warmup_steps is 0")
    max_grad_norm: float | None = Field(1.0, description="clip the global grad norm; None = no clipping")

    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = Field(
        "auto", description="auto = bf16 on GPUs that have it, else fp32 (CPUs here have no fast bf16)"
    )

    release_freed_memory: bool = Field(
        False,
        description="glibc: mmap every freed block >= 128 KiB so it goes back to the OS (lower peak RSS; "
        "slower with many mid-size tensors: 1.7x slower SFT on the demo model). vlalign.trainers.common",
    )

    ddp_find_unused_parameters: bool = Field(
        True, description="DDP: allow trainable parameters that get no gradient (frozen-in-practice VLM parts)"
    )

    deterministic: bool = Field(
        False, description="bit-identical reruns on one machine: torch.use_deterministic_algorithms, a fixed "
        "thread count (num_threads, default 1), every RNG seeded (see docs/distributed.md)",
    )
    num_threads: int | None = Field(None, ge=1, description="torch CPU threads for the run (None = torch's default)")

    logging_steps: int = Field(1, ge=1)
    report_to: list[str] = Field(default_factory=list, description="accelerate trackers, e.g. [tensorboard]")
    progress: bool = Field(True, description="console progress bar")
    save_steps: int = Field(0, ge=0, description="checkpoint every N optimizer steps; 0 = no checkpoints")
    save_total_limit: int = Field(2, ge=1, description="keep the newest N checkpoints")
    resume: bool = Field(False, description="continue from the newest complete checkpoint in output_dir")
    overwrite: bool = Field(
        False, description="a fresh run (resume: false) in an output_dir that holds checkpoints is refused "
        "unless this is true, which deletes them (and the old metrics, final model and summary) first",
    )
    resume_allow_changes: list[str] = Field(
        default_factory=list, description="config keys (dotted, e.g. learning_rate, data.train) allowed to differ "
        "from the checkpoint's when resuming; any other change that alters the optimisation is refused",
    )
    eval_steps: int = Field(0, ge=0, description="evaluate on the held-out rows every N steps (0 = never)")
    monitors: list[MonitorSpec] = Field(
        default_factory=list, description="failure-mode monitors fed every logged step, e.g. "
        "[{name: preference_overfit, action: stop}] (vlalign.monitors)",
    )
    max_consecutive_nonfinite: int = Field(3, ge=1, description="abort after this many skipped steps in a row")
    save_merged: bool = Field(True, description="LoRA: also save a merged full model in output_dir/final")
    hub: HubConfig = Field(default_factory=HubConfig, description="model card and hub upload at the end (vlalign.hub)")

    @model_validator(mode="after")
    def _known_names(self) -> TrainConfig:
        from vlalign.trainers.common import OPTIMIZERS, SCHEDULES

        _check_name(OPTIMIZERS, self.optimizer)  # did-you-mean now, not after loading the model
        _check_name(SCHEDULES, self.lr_scheduler)
        return self


def _check_name(registry: Any, name: str) -> None:
    try:
        registry.get(name)
    except KeyError as exc:  # pydantic reports ValueErrors as config errors
        raise ValueError(str(exc).strip('"')) from None


class ReplayConfig(BaseConfig):
    """Supervised rows replayed beside the training data (the "ptx" term of InstructGPT; SFT, DPO and the
    RL trainers, which key replay rows by (rollout, experience row) instead of by training row).

    WHY: training on one task's data moves the shared language model on the others. On the demo, DPO on
    corrected captions also pulled the model's yes/no answers towards "No" (POPE F1 −0.022 on one seed);
    replaying the SFT mixture's yes/no rows next to the pairs held POPE F1 on every seed tried. Each
    training row r gets replay row ``perm[r mod n]`` (a fixed permutation seeded by ``seed``), so the
    replay depends only on which rows a step trains: resume, gradient accumulation and multi-process
    runs see the same replay rows as one uninterrupted process.
    """

    train: str | None = Field(None, description="SFT-format rows (prompt + reference answer) to replay; None = off")
    format: str | None = Field(None, description="format adapter name; None = detect from the rows")
    weight: float = Field(1.0, ge=0, description="DPO: × the replay row's token-mean NLL per pair (like "
                          "sft_weight); SFT: × the NLL of the replay tokens, which join each batch's token count")
    limit: int | None = Field(None, ge=1, description="use only the first N replay rows")


class SFTConfig(TrainConfig):
    """Supervised fine-tuning on the reference (or chosen) answers; token-mean NLL over the global batch."""

    replay: ReplayConfig = Field(default_factory=ReplayConfig)


class ReferenceConfig(BaseConfig):
    """Where reference log-probs come from. ``auto``: none for reference-free losses, else ``cache``."""

    mode: Literal["auto", "cache", "adapter", "none"] = Field(
        "auto",
        description="cache = precomputed once before training and stored on disk; adapter = LoRA policy "
        "with its adapter disabled (no second model); none = reference-free",
    )
    cache_dir: str | None = Field(None, description="default: <output_dir>/reference_cache")
    batch_size: int = Field(8, ge=1)


class DPOConfig(TrainConfig):
    """The DPO family: the objective is picked by name from the objectives registry."""

    loss: str = Field("dpo", description="name in vlalign.objectives PREFERENCE_LOSSES (dpo, ipo, simpo, ...)")
    beta: float | None = Field(None, gt=0, description="None = the loss's own default (0.1; simpo 2.0)")
    loss_kwargs: dict[str, Any] = Field(default_factory=dict, description="extra keyword args of the loss")
    sft_weight: float = Field(
        0.0, ge=0, description="add this × token-mean NLL of the chosen answers (stops 'say less' collapse)"
    )
    reference: ReferenceConfig = Field(default_factory=ReferenceConfig)
    replay: ReplayConfig = Field(default_factory=ReplayConfig)
    forward: Literal["auto", "shared_prefix", "batched"] = Field(
        "auto",
        description="auto = shared_prefix for model types verified exact (llava, qwen2_vl, idefics3; "
        "vlalign.models.shared_prefix.VERIFIED_EXACT), else batched; shared_prefix = one packed row "
        "[prompt+image, chosen, rejected] per pair (prompt and image computed once; same log-probs up to "
        "float rounding, ~1.4x faster); batched = chosen and rejected as separate rows. Where shared_prefix "
        "cannot be exact (e.g. mdpo's corrupted images, flash-attention) it falls back to batched; the "
        "choice and the reason are logged once at the start of the run",
    )

    @model_validator(mode="after")
    def _known_loss(self) -> DPOConfig:
        from vlalign.objectives.preference_registry import PREFERENCE_LOSSES

        _check_name(PREFERENCE_LOSSES, self.loss)
        accepted = PREFERENCE_LOSSES.get(self.loss).defaults
        unknown = sorted(set(self.loss_kwargs) - set(accepted))
        if unknown:
            raise ValueError(
                f"preference loss {self.loss!r} got unknown hyper-parameters {unknown} in loss_kwargs; "
                f"it accepts {sorted(accepted)}"
            )
        return self
