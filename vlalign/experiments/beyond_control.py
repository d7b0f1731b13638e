"""`vlalign experiment beyond-control`: alignment methods against their same-budget control when the
feedback is a score only.

WHY: in every earlier Shapes experiment the verifier *corrected* answers, and SFT on the corrected answers
(the control) did as well as DPO or RL. Here the feedback (``feedback``: ``shapes_errors``, −number of
objects an answer gets wrong, or ``shapes_errors_noisy``, the same from a judge that errs at a set rate)
says how bad an answer is and never what the right answer is, so the control can only imitate the best
answer the model already produced: rejection-sampling fine-tuning (RFT, SFT on the best of K).

One SFT base (the demo's recipe, or ``base_from=`` an earlier run), then per seed, on the same budget of
sampled answers and labels (:func:`label_budget`, checked when the config loads):

- ``rft`` (the control), ``dpo`` (best vs worst of K) and ``mm_dpo`` (the same pairs, per-pair β from the
  score margin) train on one pool of K answers per prompt sampled from the SFT model and scored once;
- ``iterative_dpo`` samples and scores its share of the budget in ``iterative.rounds`` rounds from the
  current policy; ``grpo``, ``ppo`` (sequence reward) and ``ppo_segment`` (the wrong mentions' −1 on their
  tokens) sample and score online; ``dpo_grpo`` spends ``hybrid.dpo_share`` of it on one DPO round and
  the rest on GRPO.

Every model is measured the same way (CHAIR_i, object recall, POPE F1 with per-item values, and the
perception probe of :mod:`vlalign.experiments.beyond_report`); the report and verdicts are built there.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from vlalign.config import BaseConfig
from vlalign.evaluation.evaluate import EvalConfig, read_records
from vlalign.evaluation.generate import GenerationConfig
from vlalign.experiments.base import (
    Base,
    DPOStage,
    RLStage,
    Stage,
    StageClock,
    TinyRecipe,
    keeps_global_state,
    load_base,
    run_once,
    save_base,
    start_experiment,
    trainer_config,
    with_absolute_images,
    write_jsonl,
)
from vlalign.experiments.beyond_pool import Pool, PoolConfig, build_pool
from vlalign.experiments.beyond_report import (
    TargetRule,
    console_text,
    perception_probe,
    summarise,
    write_reports,
)
from vlalign.experiments.compute import text_vocab_size
from vlalign.experiments.evaluator import Evaluation, evaluate_model
from vlalign.experiments.sft_base import as_prompt, build_sft_model, onpolicy_prompts, replay_section
from vlalign.experiments.vision_warmup import VisionWarmupConfig
from vlalign.machine import machine_line
from vlalign.models.load import LoraSettings
from vlalign.registry import Registry
from vlalign.rewards.composite import RewardSourceConfig
from vlalign.trainers.dpo import train_dpo
from vlalign.trainers.grpo import train_grpo
from vlalign.trainers.iterative_dpo import IterativeDPOConfig, train_iterative_dpo
from vlalign.trainers.ppo import train_ppo
from vlalign.trainers.sft import train_sft

__all__ = ["BeyondControlConfig", "console_text", "run_beyond_control"]

CONTROL = "rft"


class MMDPOConfig(BaseConfig):
    """MM-DPO's per-pair β = β·(1 + w·(1 − e^{−k·δ})), δ = the pair's score margin (errors fewer)."""

    w: float = Field(0.5, ge=0)
    k: float = Field(1.0, gt=0)


class IterativeConfig(BaseConfig):
    rounds: int = Field(..., ge=1, description="sample → score → DPO rounds; pool prompts and offline steps split evenly")


class EnsembleConfig(Stage):
    """Ensemble-penalised GRPO: a reward model of ``heads`` heads (each on its own bootstrap resample when
    ``bootstrap``) trained on the pool's labels, then GRPO on ``aggregate`` of its heads (``conservative``:
    mean − coef·std) instead of the feedback. The reward model's steps, batch and learning rate are this stage's."""

    heads: int = Field(4, ge=2, description="ensemble members (linear heads on one decoder)")
    bootstrap: bool = True
    aggregate: str = Field("conservative", description="a name in ENSEMBLE_AGGREGATIONS")
    coef: float = Field(1.0, ge=0, description="weight of the disagreement in the aggregate")

    @model_validator(mode="after")
    def _known_aggregate(self) -> EnsembleConfig:
        from vlalign.objectives import ENSEMBLE_AGGREGATIONS

        ENSEMBLE_AGGREGATIONS.known(self.aggregate)
        return self


class HybridConfig(BaseConfig):
    dpo_share: float = Field(..., gt=0, lt=1, description="share of the label budget spent on one DPO round; GRPO gets the rest")


class BeyondControlConfig(TinyRecipe):
    """Every knob of the experiment (``configs/experiments/beyond_control.yaml``)."""

    recipe = "experiments/beyond_control"

    vision_warmup: VisionWarmupConfig
    freeze: list[str] = Field(..., description="model parts fixed in SFT and every later stage")
    align_freeze: list[str] | None = Field(None, description="model parts fixed in the alignment stages (every method "
                                           "and the ensemble's reward model); None = ``freeze``. [] lets alignment "
                                           "update the vision tower too")  # fmt: skip
    align_lr_scale: dict[str, float] = Field(default_factory=dict, description="parts trained at this multiple of each "
                                             "alignment stage's learning rate (model.lr_scale), e.g. {vision_tower: 0.1}")  # fmt: skip
    align_lora: LoraSettings = Field(default_factory=LoraSettings, description="a LoRA adapter on the language model "
                                     "in the alignment stages (model.lora); off = every unfrozen weight is trained")  # fmt: skip
    sft: Stage = Field(..., description="the base's SFT stage (steps, batch, learning rate)")
    base_from: str | None = Field(..., description="reuse data and SFT model of an earlier run's folder (its base.json)")
    feedback: RewardSourceConfig = Field(..., description="the score-only source every method learns from")
    pool: PoolConfig
    methods: list[str] = Field(..., min_length=1, description="names in BEYOND_METHODS; rft is the control")
    seeds: list[int] = Field(..., min_length=1, description="each method once per seed, from the one SFT model and pool")
    offline: DPOStage = Field(..., description="rft, dpo, mm_dpo (and iterative / hybrid DPO, split by rounds); its "
                              "loss is that of dpo and the iterative / hybrid rounds (mm_dpo always uses mm_dpo)")
    mm_dpo: MMDPOConfig
    iterative: IterativeConfig
    hybrid: HybridConfig
    ensemble: EnsembleConfig = Field(default_factory=lambda: EnsembleConfig(steps=64, batch_size=16, learning_rate=1e-3))
    grpo: RLStage
    ppo: RLStage = Field(..., description="ppo and ppo_segment")
    targets: TargetRule
    eval_limit: int | None = Field(..., ge=1)
    eval_tasks: list[str]
    generation: GenerationConfig

    def policy(self, model_dir: Path) -> dict[str, Any]:
        """The model section of the base's SFT stage (``build_sft_model`` reads it): ``freeze`` alone."""
        return {"name_or_path": str(model_dir), "freeze": list(self.freeze)}

    def align_policy(self, model_dir: Path) -> dict[str, Any]:
        """The model section of every alignment stage started from ``model_dir``: the ``align_*`` keys, which
        never reach the base."""
        frozen = self.freeze if self.align_freeze is None else self.align_freeze
        scaled = {"lr_scale": dict(self.align_lr_scale)} if self.align_lr_scale else {}
        lora = {"lora": self.align_lora.model_dump()} if self.align_lora.enabled else {}
        return {"name_or_path": str(model_dir), "freeze": list(frozen), **scaled, **lora}

    @model_validator(mode="after")
    def _same_budget(self) -> BeyondControlConfig:
        for m in self.methods:
            BEYOND_METHODS.known(m)
        if CONTROL not in self.methods:
            raise ValueError(f"methods must include the control {CONTROL!r}: every verdict compares against it")
        problems = budget_problems(self)
        if problems:
            raise ValueError("unequal budgets: " + "; ".join(problems))
        return self


# ------------------------------------------------------------------------------------------ budget


def label_budget(cfg: BeyondControlConfig, method: str) -> int:
    """Answers a method samples and has scored. Pool methods: P·K; iterative DPO: rounds × P/rounds × K;
    RL: steps × prompts per step × K; the hybrid: its DPO round's share of the pool + the rest as GRPO;
    the ensemble arm: P·K (its reward model learns the pool's labels; its rollouts cost no label)."""
    p, k, g = cfg.pool.prompts, cfg.pool.samples_per_prompt, cfg.grpo
    rl = {"grpo": cfg.grpo, "ppo": cfg.ppo, "ppo_segment": cfg.ppo}
    if method in rl:
        s = rl[method]
        return s.steps * s.prompts_per_step * s.num_samples
    if method == "dpo_grpo":  # whole prompts and rollouts (budget_problems checks the split)
        return round(cfg.hybrid.dpo_share * p) * k + round((1 - cfg.hybrid.dpo_share) * g.steps) * g.prompts_per_step * g.num_samples
    return p * k  # rft, dpo, mm_dpo, iterative_dpo, grpo_ensemble


def budget_problems(cfg: BeyondControlConfig) -> list[str]:
    """Each way a method's budget differs from the pool's, as a message with the fix."""
    want, out = label_budget(cfg, CONTROL), []
    for m in cfg.methods:
        got = label_budget(cfg, m)
        if got != want:
            out.append(f"{m} samples and scores {got:g} answers but the pool has (pool.n_prompts + pool.n_yes_no) × pool.samples_per_prompt = "
                       f"{want:g}; make steps × prompts_per_step × num_samples equal to it")  # fmt: skip
    r, share = cfg.iterative.rounds, cfg.hybrid.dpo_share
    if "iterative_dpo" in cfg.methods and (cfg.pool.prompts % r or cfg.offline.steps % r):
        out.append(f"iterative.rounds={r} must divide the pool's prompts ({cfg.pool.prompts}: pool.n_prompts + pool.n_yes_no) "
                   f"and offline.steps ({cfg.offline.steps})")
    if "dpo_grpo" in cfg.methods:
        parts = {"pool prompts": cfg.pool.prompts * share, "offline.steps": cfg.offline.steps * share,
                 "grpo.steps": cfg.grpo.steps * (1 - share)}  # fmt: skip
        bad = [f"{k} × share = {v:g}" for k, v in parts.items() if abs(v - round(v)) > 1e-9 or round(v) < 1]
        if bad:
            out.append(f"hybrid.dpo_share={share} must split whole prompts, steps and rollouts: {', '.join(bad)}")
    for name in ("grpo", "ppo"):
        s: RLStage = getattr(cfg, name)
        if s.num_samples != cfg.pool.samples_per_prompt:
            out.append(f"{name}.num_samples={s.num_samples} but pool.samples_per_prompt={cfg.pool.samples_per_prompt}; use the same K")
        if s.kl_coef is None:
            out.append(f"{name}.kl_coef is not set; give the KL coefficient (e.g. 0.04)")
    return out


# ------------------------------------------------------------------------------------------ methods


@dataclass
class Setup:
    """What every method of one experiment starts from."""

    cfg: BeyondControlConfig
    base: Base
    prompts: Path  # the pool's prompts: the online methods sample these
    pool: Pool


# method name -> train(setup, seed, out) -> {"updates", ...}; a method is one function
BEYOND_METHODS: Registry[Callable[[Setup, int, Path], dict[str, Any]]] = Registry("beyond-control method")


def _replay(setup: Setup, stage: DPOStage | RLStage, out: Path) -> dict[str, Any]:
    return replay_section(setup.base.data_dir, stage.replay_yes_no, stage.replay_weight, out)


@BEYOND_METHODS.register("rft")
def train_rft(setup: Setup, seed: int, out: Path) -> dict[str, Any]:
    """The control: SFT on each pool prompt's best-scored answer (rejection-sampling fine-tuning), the
    offline budget of steps, batch and learning rate, the same replay."""
    cfg, d = setup.cfg, setup.cfg.offline
    train_sft(trainer_config("sft", out, seed, cfg.align_policy(setup.base.sft_model), setup.pool.rft_file, d,
                             mixed_precision="no", replay=_replay(setup, d, out)), setup.pool.rft_rows)  # fmt: skip
    return {"updates": d.steps}


def _train_pairs(setup: Setup, seed: int, out: Path, loss: str, **values: Any) -> dict[str, Any]:
    cfg, d = setup.cfg, setup.cfg.offline
    train_dpo(trainer_config("dpo", out, seed, cfg.align_policy(setup.base.sft_model), setup.pool.pair_file, d, mixed_precision="no",
                             loss=loss, beta=d.beta, sft_weight=d.sft_weight, replay=_replay(setup, d, out), **values),
              setup.pool.pairs)  # fmt: skip
    return {"updates": d.steps}


BEYOND_METHODS.register("dpo")(lambda setup, seed, out: _train_pairs(setup, seed, out, setup.cfg.offline.loss))
BEYOND_METHODS.register("mm_dpo")(lambda setup, seed, out: _train_pairs(
    setup, seed, out, "mm_dpo", loss_kwargs=setup.cfg.mm_dpo.model_dump()))


def iterative_config(setup: Setup, seed: int, out: Path, rounds: int, share: float, then: dict[str, Any] | None) -> Any:
    """``vlalign iterative-dpo``'s config: ``rounds`` rounds over ``share`` of the pool's prompts and of the
    offline steps, same K, feedback, DPO settings and replay; ``then``: the hybrid's RL stage."""
    cfg, d, p = setup.cfg, setup.cfg.offline, setup.cfg.pool
    dpo = {**d.trainer_values(), "max_steps": round(d.steps * share) // rounds, "loss": d.loss, "beta": d.beta,
           "sft_weight": d.sft_weight, "mixed_precision": "no", "save_steps": 0, "progress": False,
           "data": {"max_length": 160}, "replay": _replay(setup, d, out)}  # fmt: skip
    return IterativeDPOConfig.model_validate({
        "output_dir": str(out), "seed": seed, "model": cfg.align_policy(setup.base.sft_model), "prompts": str(setup.prompts),
        "rounds": rounds, "prompts_per_round": round(p.prompts * share) // rounds,
        "rollout": {"num_samples": p.samples_per_prompt, "max_new_tokens": p.max_new_tokens, "temperature": p.temperature},
        "reward": cfg.feedback.model_dump(), "pairing": "best_worst", "sampling_batch_size": p.batch_size, "max_length": 160,
        "dpo": dpo, "then": then, "resume": True})  # fmt: skip


@BEYOND_METHODS.register("iterative_dpo")
def train_iterative(setup: Setup, seed: int, out: Path) -> dict[str, Any]:
    """Online DPO: each round samples and scores its share of the pool's prompts from the current policy."""
    res = train_iterative_dpo(iterative_config(setup, seed, out, setup.cfg.iterative.rounds, 1.0, None))
    return {"updates": sum(r["dpo_steps"] for r in res["rounds"]), "labels": res["labels"]}


@BEYOND_METHODS.register("dpo_grpo")
def train_hybrid(setup: Setup, seed: int, out: Path) -> dict[str, Any]:
    """Hybrid: one DPO round on ``hybrid.dpo_share`` of the budget, then GRPO from it on the rest."""
    g, share = setup.cfg.grpo, setup.cfg.hybrid.dpo_share
    rl = rl_values(setup, "grpo", g, out / "rl")
    then = {"algorithm": "grpo", "config": {**g.trainer_values(), **rl, "max_steps": round(g.steps * (1 - share)),
                                            "save_steps": 0, "progress": False, "data": {"max_length": 160}}}  # fmt: skip
    res = train_iterative_dpo(iterative_config(setup, seed, out, 1, share, then))
    return {"updates": sum(r["dpo_steps"] for r in res["rounds"]) + (res.get("rl") or {}).get("steps", 0), "labels": res["labels"]}


def rl_values(setup: Setup, kind: str, stage: RLStage, out: Path) -> dict[str, Any]:
    values = {"mixed_precision": "no", "reward": setup.cfg.feedback.model_dump(), "kl_coef": stage.kl_coef,
              "replay": _replay(setup, stage, out), **stage.extra}  # fmt: skip
    if kind == "ppo_segment":
        values["reward_granularity"] = "segment"
    return values


def _train_rl(kind: str, setup: Setup, seed: int, out: Path) -> dict[str, Any]:
    trainer = "grpo" if kind == "grpo" else "ppo"
    stage: RLStage = getattr(setup.cfg, trainer)
    tcfg = trainer_config(trainer, out, seed, setup.cfg.align_policy(setup.base.sft_model), setup.prompts, stage,
                          **rl_values(setup, kind, stage, out))  # fmt: skip
    res = (train_grpo if trainer == "grpo" else train_ppo)(tcfg)
    return {"updates": stage.steps, "stop_reason": res.get("stop_reason")}


for _kind in ("grpo", "ppo", "ppo_segment"):
    BEYOND_METHODS.register(_kind)(lambda setup, seed, out, _k=_kind: _train_rl(_k, setup, seed, out))


def ensemble_reward(cfg: BeyondControlConfig, rm_dir: Path) -> dict[str, Any]:
    """The reward source of ensemble-penalised GRPO: the trained ensemble read through its aggregate."""
    e = cfg.ensemble
    return {"name": "learned", "kwargs": {"path": str(rm_dir), "aggregate": e.aggregate, "coef": e.coef, "batch_size": 32}}


def caption_pairs_held_out(data_dir: Path, out: Path) -> Path | None:
    """The data's held-out caption pairs (a right caption vs one naming absent objects), images absolute, as
    ``out``: what the ensemble must tell apart, none of it in the pool; None when the data has none."""
    path = data_dir / "preference_eval.jsonl"
    rows = [r for r in read_records(path) if r.meta.get("task") == "caption"] if path.is_file() else []
    return write_jsonl(with_absolute_images(rows, data_dir), out) if rows else None


@BEYOND_METHODS.register("grpo_ensemble")
def train_grpo_ensemble(setup: Setup, seed: int, out: Path) -> dict[str, Any]:
    """Ensemble-penalised GRPO: a reward model of ``ensemble.heads`` heads learns the pool's labels (every
    pair of differently scored answers, from the SFT model), then GRPO (the ``grpo`` budget of rollouts, scored
    by the ensemble, never by the feedback) maximises its ``mean − coef·std``: where the heads disagree, the
    answer is off the labels' support and the reward is lowered."""
    from vlalign.trainers.reward_model import train_reward_model

    cfg, e, g = setup.cfg, setup.cfg.ensemble, setup.cfg.grpo
    rm_dir = out / "reward_model"
    model = {**cfg.align_policy(setup.base.sft_model), "heads": e.heads}
    held_out = caption_pairs_held_out(setup.base.data_dir, out / "rm_eval.jsonl")
    rm_eval = {"data": str(held_out), "limit": cfg.eval_limit, "batch_size": 32} if held_out else {"data": None}
    rm_cfg = trainer_config("reward_model", rm_dir, seed, model, setup.pool.rm_pair_file, e, bootstrap=e.bootstrap,
                            mixed_precision="no", eval=rm_eval)  # fmt: skip
    rm = train_reward_model(rm_cfg, setup.pool.rm_pairs)
    after = rm.get("after") or {}
    # gold: the feedback scores the rollouts too, logged only (gold/*), so a hacked ensemble shows in the curves
    rl = {**rl_values(setup, "grpo", g, out / "rl"), "reward": ensemble_reward(cfg, rm_dir), "gold": cfg.feedback.model_dump()}
    train_grpo(trainer_config("grpo", out, seed, cfg.align_policy(setup.base.sft_model), setup.prompts, g, **rl))
    return {"updates": e.steps + g.steps, "rm_pairs": len(setup.pool.rm_pairs), "rm_steps": rm.get("steps"),
            "rm_heldout_accuracy": after.get("accuracy"), "rm_heldout_disagreement": after.get("disagreement")}


# ------------------------------------------------------------------------------------------ recipe


def get_base(cfg: BeyondControlConfig, out: Path, log: Callable[[str], None]) -> tuple[Base, Path]:
    """``base_from`` or a fresh base (data → vision warm-up → SFT), and the pool's prompt file: the first
    ``pool.n_prompts`` training caption prompts and ``pool.n_yes_no`` yes/no questions, spread evenly
    (images absolute; the yes/no references dropped: the feedback judges from the scene)."""
    p = cfg.pool
    if cfg.base_from:
        log(f"[beyond-control] reusing data and SFT model from {cfg.base_from}")
        base = load_base(cfg.base_from)
        data = base.data_dir
    else:
        clock = StageClock("beyond-control", log)
        data, sft_model = build_sft_model(cfg, out, clock, log)  # type: ignore[arg-type]  # the SFTBaseConfig fields it reads
        base = Base(data, sft_model, out / "prompts" / "pool.jsonl", None, text_vocab_size(sft_model), {"timing_s": clock.timing})
    captions, yes_no = onpolicy_prompts(data, p.n_prompts, p.n_yes_no)
    for key, kind, want, got in (("n_prompts", "caption", p.n_prompts, captions), ("n_yes_no", "yes/no", p.n_yes_no, yes_no)):
        if len(got) < want:
            raise ValueError(f"pool.{key}={want} but the data has {len(got)} training {kind} prompts; lower pool.{key} "
                             "or generate more scenes (data.n_train)")  # fmt: skip
    prompts = write_jsonl(spread(captions, [as_prompt(r) for r in yes_no]), out / "prompts" / "pool.jsonl")
    if not cfg.base_from:
        save_base(base, out)
    return base, prompts


def spread(major: list[Any], minor: list[Any]) -> list[Any]:
    """``major`` and ``minor`` merged in order, ``minor``'s items evenly among ``major``'s (item j of n at
    (j + ½)/n of the way): a prefix of the file (one iterative round, the hybrid's DPO share) holds both."""
    keyed = [(i / len(major), 0, x) for i, x in enumerate(major)] + [((j + 0.5) / len(minor), 1, x) for j, x in enumerate(minor)]
    return [x for _, _, x in sorted(keyed, key=lambda t: t[:2])]


def measure(setup: Setup, model_dir: Path, out: Path) -> Evaluation:
    """The eval tasks (+ the perception probe) of ``model_dir``; reused when a resumed run measured it."""
    cfg, saved = setup.cfg, out / "beyond_metrics.json"
    if saved.is_file():
        return Evaluation.load(out, json.loads(saved.read_text()), cfg.seed)
    ecfg = EvalConfig(tasks=cfg.eval_tasks, limit=cfg.eval_limit, seed=cfg.seed, generation=cfg.generation)
    ev = evaluate_model(model_dir, setup.base.data_dir, out, ecfg, extra=perception_probe)
    saved.write_text(json.dumps(ev.metrics, indent=2) + "\n")
    return ev


@keeps_global_state
def run_beyond_control(cfg: BeyondControlConfig, out_dir: str | Path, log: Any = print) -> dict[str, Any]:
    """The whole experiment; returns (and writes) ``metrics.json``'s content."""
    out = start_experiment(cfg.threads, out_dir)
    t_all = time.perf_counter()
    log(f"[beyond-control] machine: {machine_line()}")
    base, prompts = get_base(cfg, out, log)
    setup = Setup(cfg, base, prompts, build_pool(cfg, base, prompts, out, log))
    sft = measure(setup, base.sft_model, out / "eval" / "sft")
    runs, evs = [], {}
    for seed in cfg.seeds:
        for method in cfg.methods:
            run_dir = out / "runs" / f"{method}_seed{seed}"

            def train(method: str = method, seed: int = seed, run_dir: Path = run_dir) -> dict[str, Any]:
                t0 = time.perf_counter()
                res = BEYOND_METHODS.get(method)(setup, seed, run_dir)
                # labels: what the run spent where it counts them (iterative, hybrid), else its configured budget
                return {"labels": label_budget(cfg, method), **res, "seconds": round(time.perf_counter() - t0, 1)}

            info = run_once(run_dir, train)
            ev = evs[method, seed] = measure(setup, run_dir / "final", out / "eval" / f"{method}_seed{seed}")
            runs.append({"method": method, "seed": seed, "dir": str(run_dir), "metrics": ev.metrics, "intervals": ev.intervals,
                         "train": info})  # fmt: skip
            (out / "runs_partial.json").write_text(json.dumps(runs, indent=2, default=str) + "\n")
            log(f"[beyond-control] {method} seed {seed}: CHAIR_i {ev.metrics['chair_i']:.3f}, recall "
                f"{ev.metrics['object_recall']:.3f}, POPE F1 {ev.metrics.get('pope_f1', float('nan')):.3f} ({info['seconds']:.0f} s)")  # fmt: skip
    result = summarise(cfg, sft, evs, runs, setup.pool.info, base.info)
    # a resumed invocation's wall time covers only what it redid: say how many runs came from an earlier one
    result["timing_s"] = {"total": round(time.perf_counter() - t_all, 1),
                          "runs_train_s": round(sum(r["train"].get("seconds", 0.0) for r in runs), 1),
                          "runs_reused": sum(bool(r["train"].get("reused")) for r in runs), "runs": len(runs)}  # fmt: skip
    (out / "metrics.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    write_reports(out, result)
    return result
