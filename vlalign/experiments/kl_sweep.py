"""`vlalign experiment kl-sweep`: how hard should the KL leash be? Sweep DPO's β and the RL KL
coefficient (GRPO, and PPO when its trainer exists) from ONE SFT model on Shapes, and plot
alignment fidelity against diversity and KL to the reference.

Recipe (:func:`run_kl_sweep`): data → SFT → on-policy verifier-corrected pairs (shared by every
DPO run) → for each method and coefficient, train from the SFT model with the same seed → measure
(:class:`vlalign.experiments.method_runs.Measurer`: CHAIR_i, POPE F1, gold reward, distinct-2,
self-BLEU, token entropy, KL to the SFT model) → metrics.json, report.html.

The stable operating range (:func:`stable_points`) — a coefficient c of a method is *stable* when
all three hold:

1. near-best fidelity: CHAIR_i(c) ≤ (1 + ``chair_tolerance``) × the method's best CHAIR_i in the sweep;
2. it improves on SFT: the paired bootstrap of CHAIR_i(c) − CHAIR_i(SFT) over the same eval captions
   excludes zero, below it (a lower point estimate alone may be item noise);
3. diversity kept: sample distinct-2(c) ≥ ``diversity_floor`` × SFT's AND token entropy(c) ≥
   ``diversity_floor`` × SFT's (a collapsed policy can look "faithful" by saying one safe thing);
4. content kept: object recall(c) ≥ ``recall_floor`` × SFT's. WHY: CHAIR_i counts wrong objects
   among the objects named, so a policy that names none — e.g. one that degenerated into random
   tokens, whose "diversity" is then maximal — scores a perfect CHAIR_i of 0.

Coefficients are compared within a method only: β of DPO and the RL KL coefficient are on
different scales (β multiplies a log-ratio inside a sigmoid; the RL coefficient is a penalty
weight against a reward in [−2, 2]).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from vlalign.config import BaseConfig
from vlalign.evaluation.report import Report, _figure, _png, fmt_value
from vlalign.experiments.base import keeps_global_state, start_experiment
from vlalign.experiments.method_runs import ExperimentBase, available_methods, get_measured_base, train_method
from vlalign.experiments.uncertainty import ci_text, compare
from vlalign.machine import machine_info, machine_line

FIDELITY = ["chair_i", "pope_f1", "gold_reward"]
DIVERSITY = ["sample_distinct_2", "sample_self_bleu", "sample_entropy"]
TABLE_KEYS = ["chair_i", "object_recall", "pope_f1", "gold_reward", "sample_distinct_2", "sample_self_bleu",
              "sample_entropy", "kl_to_sft", "answer_length"]  # fmt: skip


class StableRule(BaseConfig):
    """Which coefficients count as the stable operating range (see the module docstring)."""

    chair_tolerance: float = Field(0.10, ge=0, description="x: CHAIR_i within (1+x) × the method's best")
    diversity_floor: float = Field(0.90, ge=0, le=1, description="y: distinct-2 and entropy ≥ y × SFT's")
    recall_floor: float = Field(0.90, ge=0, le=1, description="object recall ≥ this × SFT's (naming nothing is not faithful)")


class KLSweepConfig(ExperimentBase):
    """Every knob of the sweep (``configs/experiments/kl_sweep.yaml``); the shared pieces (data, SFT,
    pairs, probe, eval) are in ExperimentBase."""

    recipe = "experiments/kl_sweep"

    methods: list[str] = Field(..., description="methods to sweep; an RL method whose trainer is missing is skipped and reported")
    dpo_betas: list[float]
    grpo_kl_coefs: list[float]
    ppo_kl_coefs: list[float]
    rule: StableRule

    @model_validator(mode="after")
    def _sweepable(self) -> KLSweepConfig:
        bad = [m for m in self.methods if m not in ("dpo", "grpo", "ppo")]
        if bad:
            raise ValueError(f"kl-sweep methods {bad} have no coefficient to sweep; choose from dpo, grpo, ppo")
        return self

    def coefs(self, method: str) -> list[float]:
        return {"dpo": self.dpo_betas, "grpo": self.grpo_kl_coefs, "ppo": self.ppo_kl_coefs}[method]


# ------------------------------------------------------------------------------------------ the rule


def stable_points(points: list[dict[str, Any]], sft: dict[str, float], rule: StableRule) -> list[dict[str, Any]]:
    """Flag each sweep point of ONE method; ``points`` hold ``coef``, ``chair_i``, ``object_recall``,
    ``sample_distinct_2``, ``sample_entropy`` and ``beats_sft`` (the paired bootstrap over the eval
    captions says its CHAIR_i is below SFT's). Returns them with ``near_best``, ``improves``, ``diverse``,
    ``content``, ``stable``."""
    finite = [p["chair_i"] for p in points if math.isfinite(p["chair_i"])]
    best = min(finite) if finite else float("nan")
    out = []
    for p in points:
        near = math.isfinite(p["chair_i"]) and p["chair_i"] <= best * (1 + rule.chair_tolerance) + 1e-12
        improves = bool(p["beats_sft"])  # a lower point estimate alone may be item noise
        diverse = (p["sample_distinct_2"] >= rule.diversity_floor * sft["sample_distinct_2"]
                   and p["sample_entropy"] >= rule.diversity_floor * sft["sample_entropy"])  # fmt: skip
        content = p["object_recall"] >= rule.recall_floor * sft["object_recall"]
        out.append({**p, "near_best": bool(near), "improves": bool(improves), "diverse": bool(diverse),
                    "content": bool(content), "stable": bool(near and improves and diverse and content)})  # fmt: skip
    return out


def stable_range(flagged: list[dict[str, Any]]) -> dict[str, Any]:
    """[lowest, highest] stable coefficient and whether every coefficient between them is stable."""
    ordered = sorted(flagged, key=lambda p: p["coef"])
    idx = [i for i, p in enumerate(ordered) if p["stable"]]
    if not idx:
        return {"low": None, "high": None, "contiguous": False, "coefs": []}
    return {"low": ordered[idx[0]]["coef"], "high": ordered[idx[-1]]["coef"],
            "contiguous": idx == list(range(idx[0], idx[-1] + 1)), "coefs": [ordered[i]["coef"] for i in idx]}  # fmt: skip


def summary_lines(result: dict[str, Any], cfg: KLSweepConfig) -> list[str]:
    """Plain-number findings per method (no spin: 'no stable coefficient' is said as such); each
    comparison with SFT is the paired bootstrap's verdict over the eval captions."""
    sft, ivs = result["sft"], result["sft_intervals"]
    first = (f"SFT: CHAIR_i {ci_text(ivs.get('chair_i'))}, POPE F1 {ci_text(ivs.get('pope_f1'))}, gold reward "
             f"{ci_text(ivs.get('gold_reward'))}, sample distinct-2 {sft['sample_distinct_2']:.3f}, entropy "
             f"{sft['sample_entropy']:.2f} (95% CIs over items; one seed, {cfg.seed}).")  # fmt: skip
    lines = [first]
    for method, info in result["stable"].items():
        pts = info["points"]
        best = min(pts, key=lambda p: p["chair_i"])
        run = next(r for r in result["runs"] if r["method"] == method and r["coef"] == best["coef"])
        rng = info["range"]
        where = ("no coefficient is stable (none is near-best, shown better than SFT, diverse and recall-keeping at once)"
                 if rng["low"] is None
                 else f"stable range {rng['low']:g} … {rng['high']:g}" + ("" if rng["contiguous"] else " (not contiguous)"))  # fmt: skip
        lines.append(
            f"{method.upper()}: best CHAIR_i {ci_text(run['intervals'].get('chair_i'))} at coefficient {best['coef']:g} "
            f"(KL to SFT {best['kl_to_sft']:.2f} nats/answer); {where}. {run['vs_sft']['chair_i']['text']}"
        )
    for method, why in result.get("skipped", {}).items():
        lines.append(f"{method.upper()} was not run: {why}.")
    return lines


# ------------------------------------------------------------------------------------------ plots


def plot_vs_coef(result: dict[str, Any], keys: list[str]) -> bytes:
    """One panel per metric: the metric against the coefficient, one line per method, SFT dashed."""
    fig, axes = _figure(len(keys), width_per_panel=3.4)
    for ax, key in zip(axes, keys):
        for method, info in result["stable"].items():
            pts = sorted(info["points"], key=lambda p: p["coef"])
            xs, ys = [p["coef"] for p in pts], [p[key] for p in pts]
            line = ax.plot(xs, ys, marker="o", label=method)[0]
            st = [(p["coef"], p[key]) for p in pts if p["stable"]]
            if st:
                ax.scatter(*zip(*st), s=120, facecolors="none", edgecolors=line.get_color(), linewidths=2)
        ax.axhline(result["sft"][key], ls="--", color="grey", label="SFT")
        ax.set_xscale("symlog", linthresh=0.01)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("β (DPO) / KL coef (RL)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return _png(fig)


def plot_tradeoff(result: dict[str, Any]) -> bytes:
    """CHAIR_i (lower = more faithful) against diversity and against KL to the SFT model."""
    fig, axes = _figure(3, width_per_panel=4.0, height=3.4)
    for ax, x in zip(axes, ["sample_distinct_2", "sample_entropy", "kl_to_sft"]):
        for method, info in result["stable"].items():
            pts = info["points"]
            sc = ax.scatter([p[x] for p in pts], [p["chair_i"] for p in pts], label=method)
            for p in pts:
                ax.annotate(f"{p['coef']:g}" + ("*" if p["stable"] else ""), (p[x], p["chair_i"]), fontsize=7,
                            color=sc.get_facecolor()[0])  # fmt: skip
        ax.scatter([result["sft"][x]], [result["sft"]["chair_i"]], marker="*", s=150, color="black", label="SFT")
        ax.set_xlabel(x)
        ax.set_ylabel("chair_i")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return _png(fig)


def write_report(out: Path, result: dict[str, Any], cfg: KLSweepConfig) -> Path:
    rep = Report("KL sweep on Shapes: fidelity vs diversity")
    rep.text("\n\n".join(summary_lines(result, cfg)), note=True)
    r = cfg.rule
    rep.text(
        f"Stable rule: a coefficient is stable when its CHAIR_i is within {r.chair_tolerance:.0%} of the method's best "
        f"in this sweep, below SFT's by the paired bootstrap over the eval captions, and its sampled answers keep distinct-2 and token entropy at ≥ "
        f"{r.diversity_floor:.0%} of SFT's, and its object recall stays ≥ {r.recall_floor:.0%} of SFT's (naming no object "
        f"gives CHAIR_i 0 for free). Stable points are circled (plots) or starred (scatter). Every run starts from "
        f"the same SFT model with seed {cfg.seed}; one seed per point (the table gives each rate's 95% interval over items)."
    )
    rep.heading("Fidelity and diversity against the coefficient")
    rep.figure(plot_vs_coef(result, FIDELITY), "fidelity: CHAIR_i (lower is better), POPE F1, gold reward (higher is better)")
    rep.figure(plot_vs_coef(result, [*DIVERSITY, "kl_to_sft"]), "diversity of sampled answers and KL to the SFT model")
    rep.heading("Trade-off")
    rep.figure(plot_tradeoff(result), "CHAIR_i vs diversity and KL (labels: coefficient, * = stable)")
    rep.heading("All points")
    rep.text("Rates with per-item values show their 95% bootstrap interval over the evaluated items; "
             "\"vs SFT\" is the paired interval of the CHAIR_i difference over the same captions.")
    rows = [["method", "coef", *TABLE_KEYS, "CHAIR_i − SFT [paired CI]", "stable", "train s", "fwd tokens"],
            ["sft", "–", *[cell(result["sft"], result["sft_intervals"], k) for k in TABLE_KEYS], "–", "–", "–", "–"]]  # fmt: skip
    for run in result["runs"]:
        flags = next(p for p in result["stable"][run["method"]]["points"] if p["coef"] == run["coef"])
        rows.append([run["method"], f"{run['coef']:g}", *[cell(run["metrics"], run["intervals"], k) for k in TABLE_KEYS],
                     ci_text(run["vs_sft"]["chair_i"]["per_seed"][0]), "yes" if flags["stable"] else "no",
                     fmt_value(run["train"]["seconds"]), str(run["train"]["forward_tokens"])])  # fmt: skip
    rep.table(rows)
    rep.heading("Setup")
    rep.text(f"Machine: {result['machine_line']}")
    rep.code(json.dumps({"base": result["base"], "timing_s": result["timing_s"], "skipped": result.get("skipped", {})}, indent=2))
    return rep.write(out / "report.html")


# ------------------------------------------------------------------------------------------ recipe


def cell(metrics: dict[str, float], intervals: dict[str, Any], key: str) -> str:
    """A table cell: the value with its 95% CI when it has one."""
    return ci_text(intervals[key]) if key in intervals else fmt_value(metrics.get(key))


@keeps_global_state
def run_kl_sweep(cfg: KLSweepConfig, out_dir: str | Path, log: Any = print) -> dict[str, Any]:
    """The whole sweep; returns (and writes) ``metrics.json``'s content."""
    out = start_experiment(cfg.threads, out_dir)
    t_all = time.perf_counter()
    log(f"[kl-sweep] machine: {machine_line()}")
    methods, skipped = available_methods(cfg.methods)
    for m, why in skipped.items():
        log(f"[kl-sweep] skipping {m}: {why}")
    base, measure, sft = get_measured_base(cfg, out, log)
    runs = []
    for method in methods:
        for coef in cfg.coefs(method):
            name = f"{method}_{coef:g}"
            train = train_method(method, base, cfg, coef, cfg.seed, out / "runs" / name)
            ev = measure(out / "runs" / name / "final", out / "eval" / name)
            vs_sft = {"chair_i": compare([sft], [ev], "chair_i", "SFT", f"{method.upper()} {coef:g}", [cfg.seed])}
            runs.append({"method": method, "coef": coef, "metrics": ev.metrics, "intervals": ev.intervals, "vs_sft": vs_sft,
                         "train": train})  # fmt: skip
            log(f"[kl-sweep] {name}: CHAIR_i {ci_text(ev.intervals.get('chair_i'))}, distinct-2 "
                f"{ev.metrics['sample_distinct_2']:.3f}, KL {ev.metrics['kl_to_sft']:.2f} ({train['seconds']:.0f} s)")  # fmt: skip
    stable = {}
    for method in methods:
        pts = [{"coef": r["coef"], **{k: r["metrics"][k] for k in TABLE_KEYS + ["pope_f1"]},
                "beats_sft": r["vs_sft"]["chair_i"]["claim"] == "b_better"} for r in runs if r["method"] == method]  # fmt: skip
        flagged = stable_points(pts, sft.metrics, cfg.rule)
        stable[method] = {"points": flagged, "range": stable_range(flagged)}
    result = {"sft": sft.metrics, "sft_intervals": sft.intervals, "runs": runs, "stable": stable, "rule": cfg.rule.model_dump(),
              "skipped": skipped, "base": base.info, "machine": machine_info(), "machine_line": machine_line(),
              "timing_s": {"total": round(time.perf_counter() - t_all, 1)}}  # fmt: skip
    result["summary"] = summary_lines(result, cfg)
    (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    write_report(out, result, cfg)
    return result


def console_text(result: dict[str, Any], cfg: Any) -> str:
    """What the command prints: the summary lines (verdicts with their intervals) and the machine."""
    return "\n".join([*result["summary"], f"Machine: {result['machine_line']}"])
