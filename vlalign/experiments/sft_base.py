"""The base recipe of the demo, kl-sweep and dpo-vs-rl: Shapes data → tiny model → vision warm-up →
SFT on biased captions → the SFT model's own answers corrected by the ground-truth verifier (on-policy
pairs). One function builds it (:func:`prepare_base`), so every comparison starts from the same recipe.

WHY on-policy pairs (RLHF-V / RLAIF-V style): offline pairs built from synthetic corruptions teach the
model to avoid errors it does not make; correcting the SFT model's own answers puts the preference
signal exactly on the hallucinations it produces (see :mod:`vlalign.experiments.onpolicy`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pydantic import Field

from vlalign.config import BaseConfig
from vlalign.data.records import PromptRecord
from vlalign.evaluation.evaluate import read_records
from vlalign.evaluation.generate import GenerationConfig
from vlalign.experiments.base import (
    Base,
    Stage,
    StageClock,
    TinyRecipe,
    build_data_and_model,
    save_base,
    trainer_config,
    with_absolute_images,
    write_jsonl,
)
from vlalign.experiments.compute import TokenCounter, text_vocab_size
from vlalign.experiments.onpolicy import sample_onpolicy_pairs
from vlalign.experiments.vision_warmup import VisionWarmupConfig, warm_up_vision
from vlalign.models.load import ModelConfig, load_model
from vlalign.trainers.sft import train_sft


class SamplingConfig(BaseConfig):
    """How on-policy answers are drawn from the SFT model for labelling."""

    n_prompts: int = Field(1000, ge=1, description="training caption prompts to sample")
    samples_per_prompt: int = Field(1, ge=1)
    temperature: float = Field(1.0, gt=0)
    max_new_tokens: int = Field(40, ge=1)
    add_missing: bool = Field(True, description="chosen also names the objects the answer left out (False: only fix claims)")
    n_yes_no: int = Field(0, ge=0, description="training yes/no questions sampled too (wrong answers -> pairs)")


class SFTBaseConfig(TinyRecipe):
    """The shared base: data, model, warm-up, SFT, on-policy sampling, and the evaluation settings."""

    vision_warmup: VisionWarmupConfig = Field(..., description="object-presence training of the vision tower before SFT")
    freeze: list[str] = Field(..., description="model parts fixed in SFT and every later stage (e.g. [vision_tower])")
    sft: Stage
    sampling: SamplingConfig
    eval_limit: int | None = Field(..., ge=1, description="rows of each eval file (null = all)")
    eval_tasks: list[str] = Field(..., description="eval tasks of every model (vlalign.evaluation.evaluate)")
    generation: GenerationConfig = Field(..., description="greedy decoding settings of the eval")

    def policy(self, model_dir: Path) -> dict[str, Any]:
        """The ``model`` section of every trainer config of this recipe."""
        return {"name_or_path": str(model_dir), "freeze": list(self.freeze)}


def build_sft_model(cfg: SFTBaseConfig, out: Path, clock: StageClock, log: Any = print) -> tuple[Path, Path]:
    """Shapes data → random tiny model → (vision warm-up) → SFT; returns (data dir, SFT model dir)."""
    data, base = build_data_and_model(cfg, out, clock)
    sft_rows = with_absolute_images(read_records(data / "sft.jsonl"), data)
    if cfg.vision_warmup.steps > 0:  # training scenes only: the SFT rows' ground truth
        t0 = time.perf_counter()
        base, _ = warm_up_vision(base, sft_rows, cfg.vision_warmup, out / "warm_model", cfg.seed, log)
        clock("vision_warmup", t0)
    t0 = time.perf_counter()
    train_sft(trainer_config("sft", out / "sft", cfg.seed, cfg.policy(base), data / "sft.jsonl", cfg.sft,
                             mixed_precision="no"), sft_rows)  # fmt: skip
    clock("sft", t0)
    return data, out / "sft" / "final"


def as_prompt(rec: Any) -> PromptRecord:
    """An SFT caption record as a plain prompt record (the reference caption is biased; RL ignores it)."""
    return PromptRecord(id=rec.id, images=list(rec.images), prompt=rec.prompt, meta=dict(rec.meta))


def onpolicy_prompts(data: Path, n_captions: int, n_yes_no: int) -> tuple[list[Any], list[Any]]:
    """The first training caption prompts (as plain prompts: their biased reference is not a target)
    and yes/no questions (with their reference: the verifier needs it), images made absolute."""
    records = read_records(data / "sft.jsonl")
    captions = [as_prompt(r) for r in records if r.meta.get("task") == "caption"][:n_captions]
    yes_no = [r for r in records if r.meta.get("task") == "yes_no"][:n_yes_no]
    return with_absolute_images(captions, data), with_absolute_images(yes_no, data)


def sample_pairs(cfg: SFTBaseConfig, sft_model: Path, prompts: list[Any], out: Path) -> tuple[list[Any], Any, Path, dict[str, Any]]:
    """The SFT model's answers to ``prompts``, corrected by the ground-truth verifier → on-policy pairs,
    written to ``out/pairs/onpolicy.jsonl``. Also returns their cost (seconds, forward tokens), which
    the experiments charge to every method trained on them."""
    t0 = time.perf_counter()
    s = cfg.sampling
    loaded = load_model(ModelConfig(name_or_path=str(sft_model)))
    gen = cfg.generation.model_copy(update={"do_sample": True, "temperature": s.temperature, "max_new_tokens": s.max_new_tokens})
    with TokenCounter(text_vocab_size(sft_model)) as counter:
        pairs, stats = sample_onpolicy_pairs(
            loaded.model, loaded.processor, prompts, gen, None, cfg.seed, s.samples_per_prompt, s.add_missing
        )
    del loaded
    if not pairs:
        raise RuntimeError("the SFT model made no hallucination on the sampled prompts: there is nothing to prefer")
    pair_file = write_jsonl(pairs, out / "pairs" / "onpolicy.jsonl")
    return pairs, stats, pair_file, {"seconds": round(time.perf_counter() - t0, 1), "forward_tokens": counter.tokens}


def replay_section(data: Path, n_yes_no: int, weight: float, out: Path) -> dict[str, Any]:
    """The trainers' ``replay`` section: the first ``n_yes_no`` SFT yes/no rows (written to
    ``out/replay/yes_no.jsonl``), replayed beside the training data. WHY: caption training alone moved the
    yes/no answers (POPE) on one seed; replaying the SFT mixture's other task holds them (configs/demo.yaml)."""
    if not n_yes_no:
        return {}
    _, rows = onpolicy_prompts(data, 0, n_yes_no)
    return {"train": str(write_jsonl(rows, out / "replay" / "yes_no.jsonl")), "weight": weight}


def prepare_base(cfg: SFTBaseConfig, out: Path, clock: StageClock, log: Any = print, n_rl_prompts: int | None = None) -> Base:
    """Data → tiny model → SFT → on-policy pairs (``sampling.samples_per_prompt`` answers per training
    caption prompt, corrected by the verifier); the caption prompts (the first ``n_rl_prompts``, default
    the sampled ones) are written as the RL prompt file, and ``out/base.json`` lets a later experiment
    start from this very base (``base_from=<this --out>``)."""
    data, sft_model = build_sft_model(cfg, out, clock, log)
    t0 = time.perf_counter()
    n_rl = n_rl_prompts or cfg.sampling.n_prompts
    captions, yes_no = onpolicy_prompts(data, max(cfg.sampling.n_prompts, n_rl), cfg.sampling.n_yes_no)
    prompt_file = write_jsonl(captions[:n_rl], out / "prompts" / "captions.jsonl")
    pairs, stats, pair_file, cost = sample_pairs(cfg, sft_model, captions[: cfg.sampling.n_prompts] + yes_no, out)
    clock("pairs", t0)
    log(f"[{clock.tag}] on-policy pairs: {stats.to_dict()} ({cost['seconds']:.0f} s)")
    info = {"pairs": stats.to_dict(), "pair_sampling": cost, "timing_s": dict(clock.timing)}
    return save_base(Base(data, sft_model, prompt_file, pair_file, text_vocab_size(sft_model), info, pairs), out)
