"""`vlalign experiment dpo-vs-rl`: DPO vs PPO vs GRPO from the same SFT model, on the same prompts,
with the same budget — final metrics, wall-clock and compute per improvement, and stability over seeds —
beside ``sft_control``: DPO's budget of plain SFT on the pairs' corrected answers.

Same data: the training caption prompts. DPO trains on verifier-corrected pairs sampled once from
the SFT model on those prompts (on-policy RLHF-V style); GRPO/PPO sample the same prompts online
and are rewarded by the same verifier (``shapes_rules``).

Same budget (checked by :func:`budget_problems`, a mismatch is a config error):
- the same number of policy updates: DPO ``dpo.steps`` optimizer steps = RL ``steps`` rollouts ×
  one update each (``ppo_epochs`` = ``num_minibatches`` = 1);
- the same number of responses per update: DPO ``batch_size`` pairs × 2 answers = RL
  ``prompts_per_step`` × ``num_samples``.
DPO's one-off pair sampling is charged to every DPO run (wall-clock and tokens).

Cost per improvement (:func:`cost_per_improvement`): seconds (and forward tokens) per 0.01 of
CHAIR_i removed relative to SFT, from the seed means; undefined (—) when the method does not
lower CHAIR_i on average. Stability: mean ± sample std (n−1) and each seed's value; a seed changes the
method's own randomness (batch order, online sampling) — data, SFT model and pairs are shared, so the
spread is the method's, not the base model's. Verdicts (each method vs SFT and vs the control): claimed
only when the paired bootstrap over the same eval items shows the difference on every seed.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from vlalign.evaluation.report import (
    Report,
    fmt_value,
    plot_curves,
    plot_errorbars,
    read_metrics_jsonl,
)
from vlalign.experiments.base import keeps_global_state, start_experiment
from vlalign.experiments.evaluator import Evaluation
from vlalign.experiments.method_runs import (
    RL_TRAINERS,
    ExperimentBase,
    available_methods,
    get_measured_base,
    train_method,
)
from vlalign.experiments.uncertainty import ci_text, compare, spread, spread_text
from vlalign.machine import machine_info, machine_line

KEYS = ["chair_i", "object_recall", "pope_f1", "gold_reward", "sample_distinct_2", "sample_self_bleu",
        "sample_entropy", "kl_to_sft", "answer_length", "seconds", "forward_tokens"]  # fmt: skip
COMPARED = ["chair_i", "pope_f1"]  # every verdict line compares these, per seed, by paired bootstraps
CONTROL = "sft_control"


class DPOvsRLConfig(ExperimentBase):
    """Every knob of the comparison (``configs/experiments/dpo_vs_rl.yaml``)."""

    recipe = "experiments/dpo_vs_rl"

    methods: list[str] = Field(..., description="dpo, sft_control (DPO's budget of SFT on the corrected answers), grpo, ppo")
    seeds: list[int] = Field(..., min_length=1, description="each method once per seed, from the one SFT model")
    coefs: dict[str, float] = Field(..., description="β of DPO / KL coefficient of each RL method")

    @model_validator(mode="after")
    def _same_budget(self) -> DPOvsRLConfig:
        problems = budget_problems(self)
        if problems:
            raise ValueError("unequal budgets: " + "; ".join(problems))
        missing = [m for m in self.methods if m not in self.coefs and m != CONTROL]
        if missing:
            raise ValueError(f"coefs has no entry for {missing}; add e.g. coefs.{missing[0]}=0.1")
        return self


def budget_problems(cfg: DPOvsRLConfig) -> list[str]:
    """Each way an RL method's budget differs from DPO's, as a message with the fix."""
    d, out = cfg.dpo, []  # sft_control runs DPO's own stage, so only the RL methods can differ
    for m in (m for m in cfg.methods if m in RL_TRAINERS):
        s = getattr(cfg, m)
        if s.steps != d.steps:
            out.append(f"{m}.steps={s.steps} but dpo.steps={d.steps}; set both to the same number of updates")
        if s.prompts_per_step * s.num_samples != 2 * d.batch_size:
            out.append(f"{m}: prompts_per_step × num_samples = {s.prompts_per_step * s.num_samples} responses per update "
                       f"but DPO sees 2 × dpo.batch_size = {2 * d.batch_size}; make them equal")  # fmt: skip
        for key in ("ppo_epochs", "num_minibatches"):
            if s.extra.get(key, 1) != 1:
                out.append(f"{m}.extra.{key}={s.extra[key]} gives more than one update per rollout; use 1")
    return out


# ------------------------------------------------------------------------------------------ maths


def cost_per_improvement(cost: float, before: float, after: float, unit: float = 0.01) -> float:
    """``cost`` per ``unit`` of CHAIR_i removed: cost / ((before − after) / unit); NaN if no improvement."""
    gain = (before - after) / unit
    return cost / gain if gain > 0 else float("nan")


def aggregate(runs: list[dict[str, Any]], sft: dict[str, float], recall_floor: float = 0.9) -> dict[str, dict[str, Any]]:
    """Per method: mean, sample std and each seed's value of every key (``spread``; ``key`` and
    ``key_std`` for the tables), and the cost per 0.01 CHAIR_i from the means.

    A CHAIR_i drop bought by naming fewer objects (mean recall < ``recall_floor`` × SFT's) is no
    improvement — a policy that names nothing has CHAIR_i 0 — so it gets no cost per improvement."""
    out: dict[str, dict[str, Any]] = {}
    for method in dict.fromkeys(r["method"] for r in runs):
        mine = [r for r in runs if r["method"] == method]
        rows = [{**r["metrics"], **{k: r["train"][k] for k in ("seconds", "forward_tokens")}} for r in mine]
        agg: dict[str, Any] = {"n_seeds": len(rows), "spread": {}}
        for k in KEYS:
            agg["spread"][k] = spread([float(x[k]) for x in rows], [r["seed"] for r in mine])
            agg[k], agg[f"{k}_std"] = agg["spread"][k]["mean"], agg["spread"][k]["std"]
        agg["content_lost"] = bool(agg["object_recall"] < recall_floor * sft["object_recall"])
        after = float("nan") if agg["content_lost"] else agg["chair_i"]
        agg["seconds_per_0.01_chair_i"] = cost_per_improvement(agg["seconds"], sft["chair_i"], after)
        agg["tokens_per_0.01_chair_i"] = cost_per_improvement(agg["forward_tokens"], sft["chair_i"], after)
        out[method] = agg
    return out


def comparisons(evs: dict[tuple[str, int], Evaluation], sft: Evaluation, methods: list[str], seeds: list[int]) -> dict[str, Any]:
    """Per method, on each compared metric, paired over the same items on every seed: vs the SFT start and
    (when it ran) vs the same-budget control."""
    out: dict[str, Any] = {}
    for m in methods:
        runs = [evs[m, s] for s in seeds]
        out[m] = {"vs_sft": {k: compare([sft] * len(seeds), runs, k, "SFT", m.upper(), seeds) for k in COMPARED}}
        if CONTROL in methods and m != CONTROL:
            ctl = [evs[CONTROL, s] for s in seeds]
            out[m]["vs_control"] = {k: compare(ctl, runs, k, "the control", m.upper(), seeds) for k in COMPARED}
    return out


def cost_text(a: dict[str, Any]) -> str:
    cost = a["seconds_per_0.01_chair_i"]
    if math.isnan(cost):
        return "no genuine average CHAIR_i improvement, so no cost per improvement."
    return f"{cost:.1f} s and {a['tokens_per_0.01_chair_i'] / 1e3:.0f} k tokens per 0.01 CHAIR_i."


def verdict_lines(result: dict[str, Any]) -> list[str]:
    sft, ivs, agg = result["sft"], result["sft_intervals"], result["aggregate"]
    lines = [f"SFT start: CHAIR_i {ci_text(ivs.get('chair_i'))}, POPE F1 {ci_text(ivs.get('pope_f1'))}, gold reward "
             f"{ci_text(ivs.get('gold_reward'))} (95% CIs over items). Per method: mean ± std over seeds (each seed)."]  # fmt: skip
    for m, a in agg.items():
        sp = a["spread"]
        lines.append(
            f"{m.upper()} ({a['n_seeds']} seeds): CHAIR_i {spread_text(sp['chair_i'])}, POPE F1 {spread_text(sp['pope_f1'])}, "
            f"gold reward {spread_text(sp['gold_reward'])}, KL {a['kl_to_sft']:.2f}; {a['seconds']:.0f} s and "
            f"{a['forward_tokens'] / 1e6:.2f} M forward tokens per run; " + cost_text(a)
        )
        cmp = result["comparisons"].get(m, {})
        for key in ("vs_sft", "vs_control"):
            if key in cmp:
                lines.append("  " + " ".join(cmp[key][k]["text"] for k in COMPARED))
        if a["content_lost"]:
            lines.append(f"  {m.upper()}: object recall fell to {a['object_recall']:.3f} (SFT {sft['object_recall']:.3f}): "
                         "its CHAIR_i comes from naming fewer objects, not from naming them correctly.")
    for m, why in result.get("skipped", {}).items():
        lines.append(f"{m.upper()} was not run: {why}.")
    return lines


# ------------------------------------------------------------------------------------------ report


def write_report(out: Path, result: dict[str, Any], cfg: DPOvsRLConfig) -> Path:
    agg, sft, ivs = result["aggregate"], result["sft"], result["sft_intervals"]
    rep = Report("DPO vs RL on Shapes: same data, same budget")
    rep.text("\n\n".join(verdict_lines(result)), note=True)
    d = cfg.dpo
    rep.text(f"Budget per run: {d.steps} policy updates × {2 * d.batch_size} responses per update (DPO: {d.batch_size} "
             f"pairs; RL: prompts × K samples). Seeds {cfg.seeds}; one SFT model and one set of on-policy pairs shared by "
             "all runs. Costs: wall-clock of training (+ DPO's pair sampling) and token positions through the language "
             "model's forward passes (generation, reference and policy forwards; backward not counted). "
             f"Machine: {result['machine_line']}.")  # fmt: skip
    rep.heading("Final metrics (mean ± std over seeds, each seed in brackets; SFT with its 95% CI over items)")
    rep.figure(plot_errorbars(agg, sft, ["chair_i", "pope_f1", "gold_reward", "sample_distinct_2", "kl_to_sft"]),
               "SFT dashed, seeds as dots")  # fmt: skip
    rows = [["metric", "sft", *agg]]
    for k in KEYS:
        rows.append([k, ci_text(ivs[k]) if k in ivs else fmt_value(sft.get(k)), *[spread_text(a["spread"][k]) for a in agg.values()]])
    for k in ("seconds_per_0.01_chair_i", "tokens_per_0.01_chair_i"):
        rows.append([k, "–", *[fmt_value(a[k]) for a in agg.values()]])
    rep.table(rows)
    rep.heading("Training curves (first seed)")
    first = {r["method"]: read_metrics_jsonl(Path(r["dir"]) / "metrics.jsonl") for r in result["runs"] if r["seed"] == cfg.seeds[0]
             and (Path(r["dir"]) / "metrics.jsonl").is_file()}  # fmt: skip
    rl = {m: rows_ for m, rows_ in first.items() if m in RL_TRAINERS}
    if rl:
        rep.figure(plot_curves(rl, ["reward/mean", "kl/mean", "policy/entropy"], smooth_window=3), "RL rollouts")
    if "dpo" in first:
        rep.figure(plot_curves({"dpo": first["dpo"]}, ["loss", "accuracy", "kl_ref"], smooth_window=3), "DPO")
    rep.heading("Every run (95% CIs over items)")
    rows = [["method", "seed", "chair_i", "pope_f1", "gold_reward", "kl_to_sft", "seconds", "forward tokens", "stop"]]
    for r in result["runs"]:
        m, iv = r["metrics"], r["intervals"]
        rows.append([r["method"], str(r["seed"]), *[ci_text(iv[k]) if k in iv else fmt_value(m[k]) for k in ("chair_i", "pope_f1", "gold_reward")],
                     fmt_value(m["kl_to_sft"]), fmt_value(r["train"]["seconds"]), str(r["train"]["forward_tokens"]),
                     str(r["train"]["stop_reason"] or "–")])  # fmt: skip
    rep.table(rows)
    rep.code(json.dumps({"base": result["base"], "timing_s": result["timing_s"]}, indent=2))
    return rep.write(out / "report.html")


# ------------------------------------------------------------------------------------------ recipe


@keeps_global_state
def run_dpo_vs_rl(cfg: DPOvsRLConfig, out_dir: str | Path, log: Any = print) -> dict[str, Any]:
    """The whole comparison; returns (and writes) ``metrics.json``'s content."""
    out = start_experiment(cfg.threads, out_dir)
    t_all = time.perf_counter()
    log(f"[dpo-vs-rl] machine: {machine_line()}")
    methods, skipped = available_methods(cfg.methods)
    for m, why in skipped.items():
        log(f"[dpo-vs-rl] skipping {m}: {why}")
    base, measure, sft = get_measured_base(cfg, out, log)
    runs, evs = [], {}
    for seed in cfg.seeds:
        for method in methods:
            run_dir = out / "runs" / f"{method}_seed{seed}"
            train = train_method(method, base, cfg, cfg.coefs.get(method, float("nan")), seed, run_dir)
            ev = evs[method, seed] = measure(run_dir / "final", out / "eval" / f"{method}_seed{seed}")
            runs.append({"method": method, "seed": seed, "dir": str(run_dir), "metrics": ev.metrics, "intervals": ev.intervals,
                         "train": train})  # fmt: skip
            (out / "runs_partial.json").write_text(json.dumps(runs, indent=2) + "\n")  # survives an interruption
            log(f"[dpo-vs-rl] {method} seed {seed}: CHAIR_i {ci_text(ev.intervals.get('chair_i'))}, gold "
                f"{ev.metrics['gold_reward']:.3f} ({train['seconds']:.0f} s)")  # fmt: skip
    result = {"sft": sft.metrics, "sft_intervals": sft.intervals, "runs": runs, "aggregate": aggregate(runs, sft.metrics),
              "comparisons": comparisons(evs, sft, methods, cfg.seeds), "skipped": skipped, "base": base.info,
              "budget": {"updates": cfg.dpo.steps, "responses_per_update": 2 * cfg.dpo.batch_size},
              "machine": machine_info(), "machine_line": machine_line()}  # fmt: skip
    result["timing_s"] = {"total": round(time.perf_counter() - t_all, 1)}
    result["summary"] = verdict_lines(result)
    (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    write_report(out, result, cfg)
    return result


def console_text(result: dict[str, Any], cfg: Any) -> str:
    """What the command prints: the summary lines (verdicts with their intervals) and the machine."""
    return "\n".join([*result["summary"], f"Machine: {result['machine_line']}"])
