"""`vlalign experiment reward-sources` (issue #6): which feedback makes the best preference labels?

The recipe reads top to bottom (:func:`run_reward_sources`):

1. Shapes benchmark + policy → SFT (the same start for every arm);
2. sample K answers per training prompt from the SFT model: the on-policy candidates every
   labeller sees (the same candidates for all of them);
3. build one labeller per source (:data:`LABELLERS`): ``human_rm`` — a reward model trained on
   ground-truth-labelled pairs (the stand-in for human annotators, as RLHF does it), ``clip`` — the
   CLIP score of a CLIP trained by ``clip-train`` (AI feedback), ``rules`` — the Shapes verifiers;
4. each labeller scores the candidates; per prompt, its best vs its worst answer is one pair;
5. label agreement: the share of a source's pairs whose chosen side is the ground-truth-better one
   (:func:`vlalign.experiments.common.label_agreement`, CHAIR's own judgement of the two answers);
6. DPO from the SFT model at each label budget (first N pairs), same steps / hyper-parameters;
   CONTROL: the same steps of SFT on the chosen answers alone, at the largest budget (or the listed
   ones) — a gain the control also gets is extra supervised data, not preference learning;
7. evaluate every model (CHAIR_i, POPE F1, preference accuracy on held-out ground-truth pairs) and
   write ``metrics.json`` + ``report.html`` (tables and metric-vs-budget plots).

Nothing is tuned on the eval split: eval scenes are disjoint from the training scenes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from vlalign.config import BaseConfig
from vlalign.data.records import PreferenceRecord
from vlalign.data.shapes.generate import ShapesConfig, generate_shapes
from vlalign.evaluation.evaluate import EvalConfig, read_records
from vlalign.evaluation.generate import GenerationConfig, generate_answers
from vlalign.evaluation.report import markdown_table
from vlalign.experiments.base import (
    DPOStage,
    ModelSize,
    RecipeConfig,
    Stage,
    StageClock,
    build_tiny_model,
    keeps_global_state,
    start_experiment,
    trainer_config,
    with_absolute_images,
    write_jsonl,
)
from vlalign.experiments.common import label_agreement
from vlalign.experiments.evaluator import Evaluation, device, evaluate_model
from vlalign.experiments.reward_sources_report import (
    labels_table,
    runs_table,
    summarize,
    verdict_text,
    write_report,
)
from vlalign.experiments.sft_base import replay_section
from vlalign.machine import machine_line
from vlalign.models.load import ModelConfig, load_model
from vlalign.registry import Registry
from vlalign.rewards import REWARD_SOURCES
from vlalign.rewards.base import Sample
from vlalign.trainers.dpo import train_dpo
from vlalign.trainers.sft import train_sft

# ------------------------------------------------------------------------------------------ config


class PolicyConfig(BaseConfig):
    """Where the policy starts. CPU: a random tiny LLaVA of ``size`` (SFT teaches it Shapes).
    GPU: ``name_or_path`` of a real checkpoint; ``model`` holds extra ``ModelConfig`` keys
    (lora, dtype, gradient_checkpointing, max_pixels) used by every stage."""

    name_or_path: str | None = None
    family: str = "llava"
    size: ModelSize = Field(default_factory=ModelSize)
    model: dict[str, Any] = Field(default_factory=dict)

    def model_extra_for_load(self) -> dict[str, Any]:
        """ModelConfig keys for LOADING a trained model (no LoRA: every stage saves a merged model)."""
        return {k: v for k, v in self.model.items() if k != "lora"}

    def trainer_model(self, start: str | Path) -> dict[str, Any]:
        """The ``model`` section of every trainer config: ``start`` plus the configured extra keys."""
        return {"name_or_path": str(start), **self.model}


class SamplingConfig(BaseConfig):
    """The on-policy candidates: K sampled answers per training caption prompt."""

    n_prompts: int = Field(600, ge=1)
    samples_per_prompt: int = Field(4, ge=2, description="K; a pair needs at least two answers")
    temperature: float = Field(1.0, gt=0)
    max_new_tokens: int = Field(40, ge=1)
    batch_size: int = Field(64, ge=1)


class HumanRMConfig(BaseConfig):
    """"Human" labels = a reward model trained on ground-truth-labelled pairs (Shapes' offline
    ``preference.jsonl`` by default; point ``pairs`` at a human-labelled file on real data)."""

    pairs: str | None = None
    limit: int | None = Field(2000, ge=1)
    train: Stage


class ClipSourceConfig(BaseConfig):
    """AI feedback: ``model`` = a CLIP folder / hub id; None = train one here with ``train`` overrides
    of :class:`vlalign.trainers.clip_train.ClipTrainConfig`."""

    model: str | None = None
    train: dict[str, Any] = Field(default_factory=lambda: {"max_steps": 200, "num_threads": 1})


class EvalSettings(BaseConfig):
    tasks: list[str] = Field(default_factory=lambda: ["chair", "pope", "preference"])
    limit: int | None = Field(150, ge=1, description="rows of each eval file (None = all)")
    generation: GenerationConfig = Field(default_factory=GenerationConfig)


class RewardSourcesConfig(RecipeConfig):
    """Every knob of the experiment (``configs/experiments/reward_sources.yaml``); ``seed`` drives data,
    init, training order and sampling."""

    recipe = "experiments/reward_sources"

    seed: int
    threads: int | None = Field(..., ge=1, description="torch CPU threads; null = torch's default")
    policy: PolicyConfig
    data: ShapesConfig
    data_dir: str | None = Field(None, description="use this existing Shapes folder instead of generating one")
    max_length: int = Field(..., ge=16, description="prompt + image tokens + response, every stage")
    sft: Stage
    sampling: SamplingConfig
    sources: list[str] = Field(..., description="label sources (LABELLERS): human_rm, clip, rules")
    budgets: list[int] = Field(..., description="labelled pairs per arm")
    control_budgets: list[int] | None = Field(..., description="budgets with an SFT control; null = the largest")
    tie_eps: float = Field(1e-6, ge=0, description="best − worst score ≤ this: the source cannot rank, no pair")
    human: HumanRMConfig
    clip: ClipSourceConfig
    rules: dict[str, Any] = Field(..., description="kwargs of the shapes_rules verifier")
    dpo: DPOStage = Field(..., description="the same for every source and budget; the control uses steps/batch/lr/replay")
    eval: EvalSettings

    @field_validator("sources")
    @classmethod
    def _known_sources(cls, v: list[str]) -> list[str]:
        for name in v:
            LABELLERS.get(name)  # did-you-mean error now, not after SFT
        return v

    @field_validator("budgets")
    @classmethod
    def _budgets(cls, v: list[int]) -> list[int]:
        if not v or any(b < 1 for b in v):
            raise ValueError("budgets must be a non-empty list of positive pair counts, e.g. [100, 300, 1000]")
        return sorted(set(v))


# ------------------------------------------------------------------------------------------ context


@dataclass
class Ctx:
    """What a labeller builder may need: the config, folders and the SFT model."""

    cfg: RewardSourcesConfig
    out: Path
    data_dir: Path
    sft_dir: Path
    log: Callable[[str], None] = print
    info: dict[str, Any] = field(default_factory=dict)  # builders record what they trained here


# name -> builder(ctx) -> RewardSource (anything with .score(list[Sample]) -> RewardOutput)
LABELLERS: Registry[Callable[[Ctx], Any]] = Registry("label source")


@LABELLERS.register("human_rm")
def human_rm_labeller(ctx: Ctx) -> Any:
    """`vlalign rm` (Bradley–Terry, initialised from the SFT model) on ground-truth-labelled pairs."""
    from vlalign.rewards.learned import LearnedRewardOnly
    from vlalign.trainers.reward_model import train_reward_model

    h, cfg = ctx.cfg.human, ctx.cfg
    path = Path(h.pairs) if h.pairs else ctx.data_dir / "preference.jsonl"
    pairs = with_absolute_images(read_records(path, h.limit), path.parent)
    held_out = ctx.data_dir / "preference_eval.jsonl"
    rm_cfg = trainer_config("reward_model", ctx.out / "human_rm", cfg.seed, cfg.policy.trainer_model(ctx.sft_dir), path, h.train,
                            cfg.max_length, eval={"data": str(held_out) if held_out.is_file() else None,
                                                  "limit": cfg.eval.limit, "batch_size": 32})  # fmt: skip
    metrics = train_reward_model(rm_cfg, pairs)
    ctx.info["human_rm"] = {"train_pairs": len(pairs), "pairs_file": str(path), "steps": metrics.get("steps"),
                            "heldout_before": metrics.get("before"), "heldout_after": metrics.get("after")}  # fmt: skip
    return LearnedRewardOnly(str(ctx.out / "human_rm"), batch_size=32, device=device())


@LABELLERS.register("clip")
def clip_labeller(ctx: Ctx) -> Any:
    """CLIP score of each answer against its image: a given checkpoint, or one `clip-train` makes here."""
    from vlalign.rewards.clip import ClipReward

    model = ctx.cfg.clip.model
    if model is None:
        from vlalign.trainers.clip_train import ClipTrainConfig, train_clip

        ccfg = ClipTrainConfig(**{"data": str(ctx.data_dir), "output_dir": str(ctx.out / "clip"), "seed": ctx.cfg.seed,
                                  "progress": False, **ctx.cfg.clip.train})  # fmt: skip
        res = train_clip(ccfg)
        ctx.info["clip"] = {"heldout_pair_accuracy": res["pair_accuracy"], "by_error": res["by_error"], "steps": res["steps"]}
        model = res["model_dir"]
    return ClipReward(model=str(model), device=device())


@LABELLERS.register("rules")
def rules_labeller(ctx: Ctx) -> Any:
    """The Shapes rule verifiers (objects, colours, counts) against each image's scene."""
    return REWARD_SOURCES.get("shapes_rules")(**ctx.cfg.rules)


# ------------------------------------------------------------------------------------------ pairs


def best_vs_worst(scores: Sequence[float], tie_eps: float = 1e-6) -> tuple[int, int] | None:
    """(index of the highest, index of the lowest) score; None when the source cannot rank them.

    First occurrence wins ties inside max/min, so the choice is deterministic.
    """
    hi = max(range(len(scores)), key=lambda i: scores[i])
    lo = min(range(len(scores)), key=lambda i: scores[i])
    return None if scores[hi] - scores[lo] <= tie_eps else (hi, lo)


def build_pairs(prompts: Sequence[Any], answers: Sequence[Sequence[str]], scores: Sequence[Sequence[float]],
                source: str, tie_eps: float = 1e-6) -> tuple[list[Any], dict[str, int]]:  # fmt: skip
    """One pair per prompt (its best vs worst answer by ``scores``), in prompt order; prompts the
    source cannot rank, or whose two answers are the same text, are counted, never silently lost."""
    pairs, no_rank, same_text = [], 0, 0
    for rec, ans, sc in zip(prompts, answers, scores, strict=True):
        pick = best_vs_worst(sc, tie_eps)
        if pick is None:
            no_rank += 1
            continue
        hi, lo = pick
        if ans[hi].strip() == ans[lo].strip():
            same_text += 1
            continue
        pairs.append(PreferenceRecord(
            id=f"{source}_{rec.id}", images=list(rec.images), prompt=rec.prompt, chosen=ans[hi], rejected=ans[lo],
            meta={"task": "caption", "scene": rec.meta["scene"], "source": source,
                  "score_chosen": float(sc[hi]), "score_rejected": float(sc[lo])},
        ))  # fmt: skip
    return pairs, {"prompts": len(prompts), "pairs": len(pairs), "unrankable": no_rank, "same_text": same_text}


def score_candidates(source: Any, prompts: Sequence[Any], answers: Sequence[Sequence[str]]) -> list[list[float]]:
    """(P, K) scores of every candidate by ``source`` (one batched call)."""
    flat = [Sample(list(r.images), r.prompt, a, dict(r.meta)) for r, ans in zip(prompts, answers) for a in ans]
    rewards = source.score(flat).rewards.tolist() if flat else []
    k = len(answers[0]) if answers else 0
    return [rewards[i * k : (i + 1) * k] for i in range(len(answers))]


def sample_candidates(sft_dir: Path, prompts: Sequence[Any], cfg: RewardSourcesConfig) -> list[list[str]]:
    """K sampled answers per prompt from the SFT model: (P, K) texts."""
    s = cfg.sampling
    loaded = load_model(ModelConfig(name_or_path=str(sft_dir), **cfg.policy.model_extra_for_load()))
    loaded.model.to(device())
    gen = GenerationConfig(do_sample=True, temperature=s.temperature, max_new_tokens=s.max_new_tokens, batch_size=s.batch_size)
    repeated = [r for r in prompts for _ in range(s.samples_per_prompt)]
    flat = generate_answers(loaded.model, loaded.processor, repeated, gen, None, cfg.seed)
    k = s.samples_per_prompt
    return [flat[i * k : (i + 1) * k] for i in range(len(prompts))]


# ------------------------------------------------------------------------------------------ recipe


def prepare_policy(cfg: RewardSourcesConfig, out: Path, data: Path, log: Callable[[str], None]) -> Path:
    """SFT from the configured start on the benchmark's SFT file; returns the SFT model folder."""
    p = cfg.policy
    start = p.name_or_path or build_tiny_model(p.family, p.size, cfg.data.image_size, cfg.seed, out / "base_model")
    rows = with_absolute_images(read_records(data / "sft.jsonl"), data)
    train_sft(trainer_config("sft", out / "sft", cfg.seed, p.trainer_model(start), data / "sft.jsonl", cfg.sft, cfg.max_length), rows)
    log(f"[reward-sources] SFT done ({len(rows)} rows, {cfg.sft.steps} steps)")
    return out / "sft" / "final"


def train_arm(kind: str, cfg: RewardSourcesConfig, data: Path, sft_dir: Path, pairs: list[Any], pair_file: Path, out: Path) -> Path:
    """DPO (``kind='dpo'``) or the SFT-on-chosen control from the SFT model; returns ``final/``."""
    d = cfg.dpo
    model = cfg.policy.trainer_model(sft_dir)
    replay = replay_section(data, d.replay_yes_no, d.replay_weight, out)
    if kind == "dpo":
        train_dpo(trainer_config("dpo", out, cfg.seed, model, pair_file, d, cfg.max_length, loss=d.loss, beta=d.beta,
                                 sft_weight=d.sft_weight, replay=replay), pairs)  # fmt: skip
    else:
        train_sft(trainer_config("sft", out, cfg.seed, model, pair_file, d, cfg.max_length, replay=replay), pairs)
    return out / "final"


def label_pools(cfg: RewardSourcesConfig, ctx: Ctx, prompts: list[Any], answers: list[list[str]],
                clock: StageClock) -> tuple[dict[str, list[Any]], dict[str, dict[str, Any]]]:  # fmt: skip
    """Each source scores the candidates; its best vs worst answer per prompt is a pair; agreement of
    those pairs with the ground truth at every budget."""
    pools: dict[str, list[Any]] = {}
    pool_stats: dict[str, dict[str, Any]] = {}
    for name in cfg.sources:
        t0 = time.perf_counter()
        source = LABELLERS.get(name)(ctx)
        scores = score_candidates(source, prompts, answers)
        del source
        pairs, stats = build_pairs(prompts, answers, scores, name, cfg.tie_eps)
        pools[name] = pairs
        agree = {str(b): label_agreement(pairs[:b]).to_dict() for b in cfg.budgets}
        pool_stats[name] = {**stats, "agreement_all": label_agreement(pairs).to_dict(), "agreement_by_budget": agree}
        write_jsonl(pairs, ctx.out / "pairs" / f"{name}.jsonl")
        clock(f"label_{name}", t0)
        if len(pairs) < max(cfg.budgets):
            ctx.log(f"[reward-sources] WARNING: {name} made only {len(pairs)} pairs < largest budget {max(cfg.budgets)}; "
                    "larger budgets use all of them (raise sampling.n_prompts)")  # fmt: skip
    return pools, pool_stats


@keeps_global_state
def run_reward_sources(cfg: RewardSourcesConfig, out_dir: str | Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    """The whole experiment; returns (and writes) ``metrics.json``'s content."""
    out = start_experiment(cfg.threads, out_dir)
    clock = StageClock("reward-sources", log)
    t_all = time.perf_counter()
    log(f"[reward-sources] machine: {machine_line()}")

    t0 = time.perf_counter()
    data = Path(cfg.data_dir) if cfg.data_dir else out / "data"
    if not cfg.data_dir:
        generate_shapes(data, cfg.data.model_copy(update={"seed": cfg.seed}))
    clock("data", t0)

    t0 = time.perf_counter()
    sft_dir = prepare_policy(cfg, out, data, log)
    clock("sft", t0)

    t0 = time.perf_counter()
    prompts = [r for r in read_records(data / "sft.jsonl") if r.meta.get("task") == "caption"][: cfg.sampling.n_prompts]
    prompts = with_absolute_images(prompts, data)
    answers = sample_candidates(sft_dir, prompts, cfg)
    clock("sample", t0)

    ctx = Ctx(cfg, out, data, sft_dir, log)
    pools, pool_stats = label_pools(cfg, ctx, prompts, answers, clock)

    ecfg = EvalConfig(tasks=cfg.eval.tasks, limit=cfg.eval.limit, seed=cfg.seed, generation=cfg.eval.generation,
                      beta=cfg.dpo.beta, max_length=max(cfg.max_length, 256))  # fmt: skip
    load_keys = cfg.policy.model_extra_for_load()

    def ev(model_dir: Path, name: str) -> Evaluation:
        return evaluate_model(model_dir, data, out / "eval" / name, ecfg, sft_dir, load_keys)

    t0 = time.perf_counter()
    models: dict[str, Evaluation] = {"sft": ev(sft_dir, "sft")}
    clock("eval_sft", t0)

    runs: dict[str, dict[str, Any]] = {}
    skipped: dict[str, int] = {}  # arm -> pairs it had (fewer than one batch)
    controls = cfg.control_budgets if cfg.control_budgets is not None else [max(cfg.budgets)]
    for name, pool in pools.items():
        for b in cfg.budgets:
            pairs = pool[:b]
            if len(pairs) < cfg.dpo.batch_size:
                log(f"[reward-sources] {name}@{b}: only {len(pairs)} pairs < one batch ({cfg.dpo.batch_size}); arm skipped")
                skipped[f"{name}@{b}"] = len(pairs)
                continue
            pair_file = write_jsonl(pairs, out / "pairs" / f"{name}_{b}.jsonl")
            for kind in ("dpo", "control") if b in controls else ("dpo",):
                key = f"{name}@{b}" + ("" if kind == "dpo" else ":control")
                folder = key.replace("@", "_").replace(":", "_")
                t0 = time.perf_counter()
                final = train_arm(kind, cfg, data, sft_dir, pairs, pair_file, out / "train" / folder)
                models[key] = ev(final, folder)
                runs[key] = {"source": name, "budget": b, "n_pairs": len(pairs), "method": kind}
                clock(key, t0)
    clock.timing["total"] = round(time.perf_counter() - t_all, 1)

    result = summarize(cfg, models, runs, pool_stats, ctx.info, clock.timing,
                       {"prompts": len(prompts), "samples_per_prompt": cfg.sampling.samples_per_prompt,
                        "skipped_arms": skipped})  # fmt: skip
    (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    write_report(out, result, cfg)
    return result


def console_text(result: dict[str, Any], cfg: RewardSourcesConfig) -> str:
    """What the command prints: label quality, every arm (95% CIs over items), the verdict, the machine."""
    return "\n\n".join([markdown_table(labels_table(result)), markdown_table(runs_table(result)), verdict_text(result),
                        f"Machine: {result['machine_line']}"])  # fmt: skip
