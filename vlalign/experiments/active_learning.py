"""`vlalign experiment active-learning`: how many labels a reward model needs to reach a held-out accuracy
when the pairs to label are chosen by uncertainty (active) rather than at random — the seeds' open
question about active learning for human feedback, measured on Shapes.

Per seed, both strategies start from the SAME random initial labels. Each round trains a Bradley–Terry
reward model from the same base model on the labels so far (``vlalign rm``), measures its accuracy on
held-out pairs (per-pair hits, so intervals come from a bootstrap over pairs), and buys the next batch
of labels: ``random`` uniformly from the unlabelled pool, ``active`` the pairs whose predicted
preference is closest to a coin flip, min |σ(r_a − r_b) − 0.5| (:func:`vlalign.annotate.scoring.uncertainty`),
the rule the labelling app's active queue uses. The labeller is simulated by the ground truth of the
Shapes pairs (their ``chosen`` side), so a label costs one pair and is always right.

Reported: the accuracy curve of each strategy (95% bootstrap CI over held-out pairs per seed, mean ±
std over seeds), the paired difference active − random at every budget with the every-seed verdict
rule (:func:`vlalign.evaluation.stats.compare_over_seeds`), and the labels each strategy needed to
reach ``target_accuracy`` (per seed, mean ± std; "not reached" within the budgets is reported as such).
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

from pydantic import Field

from vlalign.config import BaseConfig
from vlalign.experiments.base import (
    RecipeConfig,
    keeps_global_state,
    start_experiment,
    with_absolute_images,
    write_jsonl,
)

STRATEGIES = ("random", "active")


class ALDataConfig(BaseConfig):
    n_train: int = Field(150, ge=1, description="Shapes training scenes (the pool of pairs to label comes from them)")
    n_eval: int = Field(60, ge=1, description="Shapes held-out scenes (the accuracy pairs)")
    pool: int = Field(300, ge=2, description="at most this many candidate pairs in the pool")
    eval_pairs: int = Field(120, ge=1, description="at most this many held-out pairs")


class ALTrainConfig(BaseConfig):
    steps: int = Field(16, ge=1, description="optimizer steps per round (each round trains from the base model)")
    batch_size: int = Field(16, ge=1)
    learning_rate: float = Field(1e-3, gt=0)
    max_length: int = Field(160, ge=8)


class ActiveLearningConfig(RecipeConfig):
    """Top-level keys come from the packaged recipe ``experiments/active_learning``."""

    recipe = "experiments/active_learning"

    seed: int
    seeds: list[int] = Field(..., description="one full comparison per seed")
    threads: int = Field(..., ge=1, description="torch threads (tiny matmuls run faster on one on a shared CPU)")
    model_family: str = Field(..., description="tiny model family of the reward model's backbone")
    model: str | None = Field(..., description="backbone folder; None = build a tiny random one")
    data: ALDataConfig
    budgets: list[int] = Field(..., description="labels after each round")
    target_accuracy: float = Field(..., gt=0, lt=1, description="the accuracy 'labels needed' refers to")
    train: ALTrainConfig


def _hits(model: Any, records: list[Any]) -> list[float]:
    scores = model.score_records(records, batch_size=32)  # (N, 2): chosen, rejected
    return [float(a > b) for a, b in scores.tolist()]


def _train(cfg: ActiveLearningConfig, base: Path, records: list[Any], out: Path, seed: int) -> Any:
    from vlalign.rewards.learned import load_reward_model
    from vlalign.trainers.reward_model import RewardModelConfig, train_reward_model

    t = cfg.train
    data = write_jsonl(records, out / "train.jsonl")
    rm = RewardModelConfig(output_dir=str(out / "rm"), seed=seed, model={"name_or_path": str(base)},
                           data={"train": str(data), "max_length": t.max_length}, max_steps=t.steps,
                           per_device_batch_size=min(t.batch_size, len(records)), learning_rate=t.learning_rate,
                           lr_scheduler="constant", progress=False, eval={"data": None, "before_training": False})
    train_reward_model(rm, records)
    return load_reward_model(out / "rm")


def _next_batch(strategy: str, model: Any, pool: list[Any], labelled: list[int], k: int, rng: random.Random) -> list[int]:
    from vlalign.annotate.scoring import uncertainty

    rest = [i for i in range(len(pool)) if i not in set(labelled)]
    if k >= len(rest):
        return rest
    if strategy == "random":
        return rng.sample(rest, k)
    scores = model.score_records([pool[i] for i in rest], batch_size=32).tolist()
    ranked = sorted(zip(rest, scores), key=lambda x: (uncertainty(x[1][0], x[1][1]), x[0]))
    return [i for i, _s in ranked[:k]]


def run_seed(cfg: ActiveLearningConfig, seed: int, base: Path, pool: list[Any], held_out: list[Any], out: Path,
             log: Any) -> dict[str, Any]:
    """Both strategies on one seed: {strategy: [{"labels", "hits"}...]} over the budgets."""
    init = random.Random(seed).sample(range(len(pool)), min(cfg.budgets[0], len(pool)))
    curves: dict[str, list[dict[str, Any]]] = {}
    for strategy in STRATEGIES:
        rng, labelled, curve = random.Random(f"{seed}:{strategy}"), list(init), []
        for r, budget in enumerate(cfg.budgets):
            t0 = time.perf_counter()
            model = _train(cfg, base, [pool[i] for i in labelled], out / f"seed{seed}" / strategy / f"round{r}", seed)
            hits = _hits(model, held_out)
            curve.append({"labels": len(labelled), "hits": hits})
            log(f"[active-learning] seed {seed} {strategy}: {len(labelled)} labels -> accuracy "
                f"{sum(hits) / len(hits):.3f} ({time.perf_counter() - t0:.1f} s)")
            if r + 1 < len(cfg.budgets):
                labelled += _next_batch(strategy, model, pool, labelled, cfg.budgets[r + 1] - len(labelled), rng)
        curves[strategy] = curve
    return curves


def labels_needed(curve: list[dict[str, Any]], target: float) -> int | None:
    """The first budget whose held-out accuracy reaches ``target``; None if none does."""
    for point in curve:
        if sum(point["hits"]) / len(point["hits"]) >= target:
            return point["labels"]
    return None


def summarize(cfg: ActiveLearningConfig, per_seed: dict[int, dict[str, list[dict[str, Any]]]]) -> dict[str, Any]:
    from vlalign.evaluation.stats import bootstrap_ci, compare_over_seeds, paired_bootstrap_diff, seed_spread

    seeds = sorted(per_seed)
    curves: dict[str, list[dict[str, Any]]] = {}
    for s in STRATEGIES:
        rows = []
        for r, budget in enumerate(cfg.budgets):
            ivs = [bootstrap_ci("mean", per_seed[seed][s][r]["hits"], seed=seed) for seed in seeds]
            rows.append({"budget": budget, "accuracy": seed_spread([iv.value for iv in ivs]),
                         "ci95_per_seed": [[iv.low, iv.high] for iv in ivs]})
        curves[s] = rows
    comparison = []
    for r, budget in enumerate(cfg.budgets):
        diffs = [paired_bootstrap_diff("mean", [per_seed[seed]["random"][r]["hits"]],
                                       [per_seed[seed]["active"][r]["hits"]], seed=seed) for seed in seeds]
        verdict = compare_over_seeds(diffs, "held-out accuracy", "random", "active", better="higher")
        comparison.append({"budget": budget, "claim": verdict.claim, "text": verdict.text,
                           "diff_per_seed": [d.to_dict() for d in diffs]})
    needed = {s: {str(seed): labels_needed(per_seed[seed][s], cfg.target_accuracy) for seed in seeds}
              for s in STRATEGIES}
    needed_summary = {}
    for s in STRATEGIES:
        reached = [v for v in needed[s].values() if v is not None]
        needed_summary[s] = {"per_seed": needed[s], "reached_on": f"{len(reached)}/{len(seeds)} seeds",
                             **({"labels": seed_spread(reached)} if reached else {})}
    return {"target_accuracy": cfg.target_accuracy, "seeds": seeds, "curves": curves, "active_minus_random": comparison,
            "labels_needed": needed_summary}


def report_lines(summary: dict[str, Any]) -> list[str]:
    lines = ["| labels | random accuracy (mean ± std over seeds) | active accuracy | active − random (every-seed rule) |",
             "|---|---|---|---|"]
    for r, cmp in enumerate(summary["active_minus_random"]):
        ra, ac = summary["curves"]["random"][r]["accuracy"], summary["curves"]["active"][r]["accuracy"]
        diffs = ", ".join(f"{d['value']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]" for d in cmp["diff_per_seed"])
        lines.append(f"| {cmp['budget']} | {ra['mean']:.3f} ± {ra['std']:.3f} | {ac['mean']:.3f} ± {ac['std']:.3f} | "
                     f"{cmp['claim']}: {diffs} |")
    for s, row in summary["labels_needed"].items():
        lab = row.get("labels")
        text = f"{lab['mean']:.1f} ± {lab['std']:.1f}" if lab else "not reached"
        lines.append(f"\nlabels to reach accuracy {summary['target_accuracy']}: {s} {text} "
                     f"(reached on {row['reached_on']}; per seed {row['per_seed']})")
    return lines


def write_report(summary: dict[str, Any], out: Path) -> None:
    """``report.md`` (the table as text) and ``report.html`` (the same table + the accuracy curves)."""
    from vlalign.evaluation.report import Report, plot_curves

    title = "Active vs random label selection (Shapes)"
    (out / "report.md").write_text(f"# {title}\n\n" + "\n".join(report_lines(summary)) + "\n")
    curves = {s: [{"labels": r["budget"], "accuracy": r["accuracy"]["mean"]} for r in rows]
              for s, rows in summary["curves"].items()}
    rep = Report(title)
    rep.figure(plot_curves(curves, ["accuracy"], x_key="labels"),
               "Held-out pairwise accuracy of the reward model against the number of labels bought.")
    rep.code("\n".join(report_lines(summary)))
    rep.write(out / "report.html")


@keeps_global_state
def run_active_learning(cfg: ActiveLearningConfig, out_dir: str | Path, log: Any = print) -> dict[str, Any]:
    from vlalign.data.shapes.generate import ShapesConfig, generate_shapes
    from vlalign.data.validate import load_records
    from vlalign.models.tiny import build_tiny

    t_start = time.perf_counter()
    out = start_experiment(cfg.threads, out_dir)
    data_dir = out / "shapes"
    if not (data_dir / "preference_eval.jsonl").is_file():
        generate_shapes(data_dir, ShapesConfig(seed=cfg.seed, n_train=cfg.data.n_train, n_eval=cfg.data.n_eval,
                                               n_safety=0, n_safety_eval=0))
    pool = with_absolute_images(load_records(data_dir / "preference.jsonl").records[: cfg.data.pool], data_dir)
    held_out = with_absolute_images(load_records(data_dir / "preference_eval.jsonl").records[: cfg.data.eval_pairs],
                                    data_dir)
    if len(pool) < cfg.budgets[-1]:
        raise ValueError(f"the pool has {len(pool)} pairs, fewer than the largest budget {cfg.budgets[-1]} "
                         "(fix: raise data.n_train / data.pool or lower budgets)")
    base = Path(cfg.model) if cfg.model else build_tiny(cfg.model_family, out / "base_model", size="tiny", seed=cfg.seed)
    per_seed = {seed: run_seed(cfg, seed, base, pool, held_out, out, log) for seed in cfg.seeds}
    summary = summarize(cfg, per_seed)
    summary.update(pool_pairs=len(pool), eval_pairs=len(held_out), timing_s={"total": round(time.perf_counter() - t_start, 1)})
    (out / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_report(summary, out)
    return summary


def console_text(result: dict[str, Any], cfg: ActiveLearningConfig) -> str:
    """What `vlalign experiment active-learning` prints: the table and the labels needed."""
    return "\n".join(report_lines(result))
