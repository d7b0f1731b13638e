"""Shared by `vlalign experiment kl-sweep` and `vlalign experiment dpo-vs-rl`: one SFT model, then
"train method M with KL coefficient c and seed s from it, and measure the result".

WHY one module: both experiments must compare methods on exactly the same footing — the same
Shapes data, the same SFT model (which is also the KL reference), the same training prompts, and
the same measurement. Keeping that in one place means a difference between DPO and GRPO in a
report can only come from the method, not from two slightly different pipelines.

Measurement of a trained model (:class:`Measurer`):

- fidelity: the usual eval (CHAIR_i, POPE F1 … greedy, held-out scenes, with per-item values) and the
  gold reward — the ground-truth Shapes verifier (``shapes_rules``) on answers *sampled* at temperature 1;
- diversity, on the same samples (K per held-out prompt): distinct-2 over all samples, self-BLEU
  within each prompt's K samples (1 = the K answers are identical: mode collapse), and the mean
  token entropy of the policy at the sampled positions;
- KL to the reference (the SFT model): Monte-Carlo estimate Σ_t [log π(y_t) − log π_ref(y_t)] per
  sampled answer (k1 summed over the answer; unbiased for the sequence KL), averaged over answers.

Compute is counted by :class:`~vlalign.experiments.compute.TokenCounter`.
"""

from __future__ import annotations

import importlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from vlalign.config import BaseConfig
from vlalign.data.collate import CollateConfig
from vlalign.evaluation.evaluate import EvalConfig, read_records
from vlalign.evaluation.items import rate_items
from vlalign.evaluation.text_metrics import distinct_n, mean_length, self_bleu
from vlalign.experiments.base import (
    Base,
    DPOStage,
    RLStage,
    StageClock,
    load_base,
    run_once,
    trainer_config,
    with_absolute_images,
)
from vlalign.experiments.compute import TokenCounter
from vlalign.experiments.evaluator import Evaluation, device, evaluate_model
from vlalign.experiments.sft_base import SFTBaseConfig, prepare_base, replay_section
from vlalign.models.load import ModelConfig, load_model
from vlalign.monitors import MonitorSpec
from vlalign.registry import Registry
from vlalign.rewards import build_source
from vlalign.rollout.collect import sample_experience, score_experience, score_with, seeded
from vlalign.rollout.config import RolloutConfig
from vlalign.trainers.dpo import train_dpo
from vlalign.trainers.sft import train_sft


class ProbeConfig(BaseConfig):
    """Sampled answers on held-out caption prompts: gold reward, diversity and KL are measured on them."""

    n_prompts: int = Field(48, ge=1)
    samples_per_prompt: int = Field(4, ge=2, description="K ≥ 2: self-BLEU is computed within each prompt's K")
    max_new_tokens: int = Field(40, ge=1)
    temperature: float = Field(1.0, gt=0)


class ExperimentBase(SFTBaseConfig):
    """The pieces every method comparison shares: the base recipe, the methods' budgets, the probe."""

    base_from: str | None = Field(
        None, description="reuse data, SFT model and pairs of an earlier run's folder (its base.json) instead of redoing them"
    )
    n_rl_prompts: int | None = Field(None, ge=1, description="training caption prompts for RL; null = sampling.n_prompts")
    dpo: DPOStage
    grpo: RLStage
    ppo: RLStage
    monitors: list[MonitorSpec] = Field(..., description="monitors of every RL run")
    probe: ProbeConfig

    @model_validator(mode="after")
    def _coefficients_elsewhere(self) -> ExperimentBase:
        for name in ("grpo", "ppo"):
            if getattr(self, name).kl_coef is not None:
                raise ValueError(f"{name}.kl_coef: the KL coefficient of a compared method is set by the experiment "
                                 "(dpo-vs-rl: coefs; kl-sweep: grpo_kl_coefs / ppo_kl_coefs); remove it")  # fmt: skip
        return self


def get_base(cfg: ExperimentBase, out: Path, log: Callable[[str], None]) -> Base:
    """``base_from`` when set, else a fresh base (data → SFT → on-policy pairs)."""
    if cfg.base_from:
        log(f"[base] reusing data, SFT model and pairs from {cfg.base_from}")
        return load_base(cfg.base_from)
    clock = StageClock("base", log)
    base = prepare_base(cfg, out, clock, log, cfg.n_rl_prompts)
    base.info["timing_s"]["data+sft"] = round(sum(v for k, v in clock.timing.items() if k != "pairs"), 1)
    return base


# ------------------------------------------------------------------------------------------ training

# method name -> train(base, cfg, coef, seed, out) -> summary dict; a method is one function.
METHODS: Registry[Callable[..., dict[str, Any]]] = Registry("method")
# methods trained on the shared on-policy pairs (their one-off sampling is charged to each run)
PAIR_METHODS = ("dpo", "sft_control")
# RL method -> (module, train function); the config class comes from base.TRAINER_CONFIGS
RL_TRAINERS = {"grpo": ("vlalign.trainers.grpo", "train_grpo"), "ppo": ("vlalign.trainers.ppo", "train_ppo")}


def rl_available(name: str) -> bool:
    """True when the RL trainer's module can be imported in this installation."""
    module, fn = RL_TRAINERS[name]
    try:
        return hasattr(importlib.import_module(module), fn)
    except ImportError:
        return False


@METHODS.register("dpo")
def train_dpo_method(base: Base, cfg: ExperimentBase, coef: float, seed: int, out: Path) -> dict[str, Any]:
    """DPO from the SFT model on the shared on-policy pairs; ``coef`` is β."""
    d = cfg.dpo
    tcfg = trainer_config("dpo", out, seed, cfg.policy(base.sft_model), base.pair_file, d, mixed_precision="no", loss=d.loss,
                          beta=coef, sft_weight=d.sft_weight, replay=replay_section(base.data_dir, d.replay_yes_no,
                                                                                   d.replay_weight, out))  # fmt: skip
    summary = train_dpo(tcfg, base.pairs)
    return {"stop_reason": None, "alerts": 0, "updates": d.steps, "responses_per_update": 2 * d.batch_size,
            "summary_keys": sorted(summary)}  # fmt: skip


@METHODS.register("sft_control")
def train_sft_control(base: Base, cfg: ExperimentBase, coef: float, seed: int, out: Path) -> dict[str, Any]:
    """The same-budget control: DPO's steps, batch and learning rate of plain SFT on the pairs' chosen
    (verifier-corrected) answers, with DPO's replay. A gain the control also gets comes from supervised
    training on corrected answers, not from preferences or rewards. ``coef`` is unused."""
    d = cfg.dpo
    train_sft(trainer_config("sft", out, seed, cfg.policy(base.sft_model), base.pair_file, d, mixed_precision="no",
                             replay=replay_section(base.data_dir, d.replay_yes_no, d.replay_weight, out)), base.pairs)  # fmt: skip
    return {"stop_reason": None, "alerts": 0, "updates": d.steps, "responses_per_update": d.batch_size}


def rl_train_config(name: str, base: Base, cfg: ExperimentBase, coef: float, seed: int, out: Path) -> Any:
    """The trainer config of one RL run: one update per rollout, the ground-truth verifier as reward."""
    stage: RLStage = getattr(cfg, name)
    values = {"mixed_precision": "no", "reward": {"name": "shapes_rules"}, "kl_coef": coef,
              "monitors": [m.model_dump() for m in cfg.monitors],
              "replay": replay_section(base.data_dir, stage.replay_yes_no, stage.replay_weight, out), **stage.extra}  # fmt: skip
    return trainer_config(name, out, seed, cfg.policy(base.sft_model), base.prompt_file, stage, **values)


def _train_rl(name: str, base: Base, cfg: ExperimentBase, coef: float, seed: int, out: Path) -> dict[str, Any]:
    module, fn = RL_TRAINERS[name]
    tcfg = rl_train_config(name, base, cfg, coef, seed, out)
    res = getattr(importlib.import_module(module), fn)(tcfg)
    stage: RLStage = getattr(cfg, name)
    updates = stage.steps * tcfg.ppo_epochs * tcfg.num_minibatches
    return {"stop_reason": res.get("stop_reason"), "alerts": len(res.get("alerts", [])), "updates": updates,
            "responses_per_update": stage.prompts_per_step * stage.num_samples}  # fmt: skip


METHODS.register("grpo")(lambda base, cfg, coef, seed, out: _train_rl("grpo", base, cfg, coef, seed, out))
METHODS.register("ppo")(lambda base, cfg, coef, seed, out: _train_rl("ppo", base, cfg, coef, seed, out))


def available_methods(methods: list[str]) -> tuple[list[str], dict[str, str]]:
    """(methods to run, {skipped method: why}) — an RL trainer missing here is reported, not hidden."""
    run, skipped = [], {}
    for m in methods:
        METHODS.get(m)  # unknown name → did-you-mean error
        if m in RL_TRAINERS and not rl_available(m):
            skipped[m] = f"its trainer ({RL_TRAINERS[m][0]}) is not available in this installation"
        else:
            run.append(m)
    return run, skipped


def train_method(method: str, base: Base, cfg: ExperimentBase, coef: float, seed: int, out: Path) -> dict[str, Any]:
    """Train, timing it and counting its forward tokens; returns the run's cost and status (also
    written to ``out/train.json``; a finished run is not redone, see :func:`run_once`)."""

    def train() -> dict[str, Any]:
        t0 = time.perf_counter()
        with TokenCounter(base.vocab_size) as counter:
            res = METHODS.get(method)(base, cfg, coef, seed, out)
        res.update({"seconds": round(time.perf_counter() - t0, 2), "forward_tokens": counter.tokens})
        if method in PAIR_METHODS:  # the pairs' sampling is part of their cost: charged in full to every run
            res["seconds"] = round(res["seconds"] + base.info["pair_sampling"]["seconds"], 2)
            res["forward_tokens"] += base.info["pair_sampling"]["forward_tokens"]
        return res

    return run_once(out, train)


# ------------------------------------------------------------------------------------------ measurement


def sequence_kl(logps: Any, ref_logps: Any, mask: Any) -> float:
    """Mean over answers of Σ_t mask·(log π − log π_ref): the k1 Monte-Carlo estimate of the sequence
    KL(π‖π_ref) from answers sampled by π. logps, ref_logps, mask: (N, T)."""
    seq = ((logps - ref_logps) * mask).sum(-1)  # (N,)
    return float(seq.mean())


def group_self_bleu(texts: list[str], k: int) -> float:
    """Mean over prompts of the self-BLEU of that prompt's K answers (rows g·K … g·K+K−1)."""
    groups = [texts[i : i + k] for i in range(0, len(texts), k)]
    return sum(self_bleu(g) for g in groups) / len(groups) if groups else float("nan")


def probe_samples(model: Any, processor: Any, reference: Any, prompts: list[Any], probe: ProbeConfig, seed: int,
                  items: dict[str, Any] | None = None) -> dict[str, float]:  # fmt: skip
    """Sample K answers per held-out prompt; gold reward, diversity and KL to ``reference``. With
    ``items``, the gold reward's per-prompt values (mean over the prompt's K answers) are added to it."""
    rcfg = RolloutConfig(num_samples=probe.samples_per_prompt, max_new_tokens=probe.max_new_tokens,
                         temperature=probe.temperature)  # fmt: skip
    with seeded(seed):  # its own sampling stream; the caller's RNG is left as it was
        exp = sample_experience(model, processor, prompts, rcfg, CollateConfig(max_length=160))
    m = score_experience(exp, model, reference, need_old_logprobs=True, need_reference=True, temperature=probe.temperature)
    gold, _ = score_with(build_source("shapes_rules"), exp, "gold")  # (P·K,)
    if items is not None:
        per_prompt = gold.view(len(prompts), probe.samples_per_prompt).mean(-1)  # (P,): rows g·K … g·K+K−1
        items["gold_reward"] = rate_items([p.id for p in prompts], per_prompt.tolist())
    return {
        "gold_reward": float(gold.mean()),
        "sample_distinct_2": distinct_n(exp.texts, 2),
        "sample_self_bleu": group_self_bleu(exp.texts, probe.samples_per_prompt),
        "sample_entropy": m["policy/entropy"],  # mean token entropy at the sampled positions
        "kl_to_sft": sequence_kl(exp.old_logprobs, exp.ref_logprobs, exp.response_mask),
        "sample_length": mean_length(exp.texts),
    }


class Measurer:
    """Evaluates trained models against the SFT reference (loaded once) on fixed held-out prompts,
    on the GPU when there is one."""

    def __init__(self, base: Base, cfg: ExperimentBase) -> None:
        self.base, self.cfg = base, cfg
        ref = load_model(ModelConfig(name_or_path=str(base.sft_model))).model
        self.reference = ref.eval().requires_grad_(False).to(device())
        self.prompts = with_absolute_images(read_records(base.data_dir / "eval_captions.jsonl", cfg.probe.n_prompts), base.data_dir)

    def probe(self, model: Any, processor: Any, ctx: Any) -> dict[str, float]:
        """The evaluator's extra: the sampled-answer metrics, the gold reward's items kept with the others."""
        return probe_samples(model, processor, self.reference, self.prompts, self.cfg.probe, self.cfg.seed, ctx.items)

    def __call__(self, model_dir: Path, out: Path) -> Evaluation:
        """Metrics of ``model_dir`` (reused from ``out/probe.json`` when a resumed run measured it already)."""
        cfg = self.cfg
        if (out / "probe.json").is_file() and (model_dir.parent / "train.json").is_file():
            return Evaluation.load(out, json.loads((out / "probe.json").read_text()), cfg.seed)
        t0 = time.perf_counter()
        ecfg = EvalConfig(tasks=cfg.eval_tasks, limit=cfg.eval_limit, seed=cfg.seed, generation=cfg.generation)
        ev = evaluate_model(model_dir, self.base.data_dir, out, ecfg, extra=self.probe)
        ev.metrics["time_measure_s"] = round(time.perf_counter() - t0, 1)
        (out / "probe.json").write_text(json.dumps(ev.metrics, indent=2) + "\n")
        return ev


def get_measured_base(cfg: ExperimentBase, out: Path, log: Callable[[str], None]) -> tuple[Base, Measurer, Evaluation]:
    """What kl-sweep and dpo-vs-rl do first: the base, the measurer, and the SFT model measured."""
    base = get_base(cfg, out, log)
    measure = Measurer(base, cfg)
    return base, measure, measure(base.sft_model, out / "eval" / "sft")
