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
2. it improves on SFT: CHAIR_i(c) < CHAIR_i(SFT);
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

import typer
from pydantic import Field, model_validator

from vlalign.cli_common import CONFIG_OPTION, OVERRIDES_ARG
from vlalign.config import BaseConfig
from vlalign.experiments.common import experiment_config, start_experiment, written_line
from vlalign.experiments.method_runs import ExperimentBase

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "experiments" / "kl_sweep.yaml"
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
    """Every knob of the sweep; the shared pieces (data, SFT, pairs, probe, eval) are in ExperimentBase."""

    methods: list[str] = Field(default_factory=lambda: ["dpo", "grpo", "ppo"],
                               description="methods to sweep; an RL method whose trainer is missing is skipped and reported")  # fmt: skip
    dpo_betas: list[float] = Field(default_factory=lambda: [0.03, 0.1, 0.3, 1.0])
    grpo_kl_coefs: list[float] = Field(default_factory=lambda: [0.0, 0.02, 0.1, 0.5])
    ppo_kl_coefs: list[float] = Field(default_factory=lambda: [0.0, 0.02, 0.1, 0.5])
    rule: StableRule = Field(default_factory=StableRule)

    @model_validator(mode="after")
    def _sweepable(self) -> KLSweepConfig:
        bad = [m for m in self.methods if m not in ("dpo", "grpo", "ppo")]
        if bad:
            raise ValueError(f"kl-sweep methods {bad} have no coefficient to sweep; choose from dpo, grpo, ppo")
        return self

    def coefs(self, method: str) -> list[float]:
        return {"dpo": self.dpo_betas, "grpo": self.grpo_kl_coefs, "ppo": self.ppo_kl_coefs}[method]


# ------------------------------------------------------------------------------------------ the rule


def stable_points(points: list[dict[str, float]], sft: dict[str, float], rule: StableRule) -> list[dict[str, Any]]:
    """Flag each sweep point of ONE method; ``points`` hold ``coef``, ``chair_i``, ``object_recall``,
    ``sample_distinct_2``, ``sample_entropy``. Returns them with ``near_best``, ``improves``, ``diverse``,
    ``content``, ``stable``."""
    finite = [p["chair_i"] for p in points if math.isfinite(p["chair_i"])]
    best = min(finite) if finite else float("nan")
    out = []
    for p in points:
        near = math.isfinite(p["chair_i"]) and p["chair_i"] <= best * (1 + rule.chair_tolerance) + 1e-12
        improves = p["chair_i"] < sft["chair_i"]
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
    """Plain-number findings per method (no spin: 'no stable coefficient' is said as such)."""
    sft = result["sft"]
    first = (f"SFT: CHAIR_i {sft['chair_i']:.3f}, POPE F1 {sft['pope_f1']:.3f}, gold reward {sft['gold_reward']:.3f}, "
             f"sample distinct-2 {sft['sample_distinct_2']:.3f}, entropy {sft['sample_entropy']:.2f}.")
    lines = [first]
    for method, info in result["stable"].items():
        pts = info["points"]
        best = min(pts, key=lambda p: p["chair_i"])
        rng = info["range"]
        where = ("no coefficient is stable (none is near-best, better than SFT, diverse and recall-keeping at once)" if rng["low"] is None
                 else f"stable range {rng['low']:g} … {rng['high']:g}" + ("" if rng["contiguous"] else " (not contiguous)"))  # fmt: skip
        lines.append(
            f"{method.upper()}: best CHAIR_i {best['chair_i']:.3f} at coefficient {best['coef']:g} "
            f"({best['chair_i'] - sft['chair_i']:+.3f} vs SFT; KL to SFT {best['kl_to_sft']:.2f} nats/answer); {where}."
        )
    for method, why in result.get("skipped", {}).items():
        lines.append(f"{method.upper()} was not run: {why}.")
    return lines


# ------------------------------------------------------------------------------------------ plots


def plot_vs_coef(result: dict[str, Any], keys: list[str]) -> bytes:
    """One panel per metric: the metric against the coefficient, one line per method, SFT dashed."""
    from vlalign.evaluation.report import _figure, _png

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
    from vlalign.evaluation.report import _figure, _png

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
    from vlalign.evaluation.report import Report, fmt_value

    rep = Report("KL sweep on Shapes: fidelity vs diversity")
    rep.text("\n\n".join(summary_lines(result, cfg)), note=True)
    r = cfg.rule
    rep.text(
        f"Stable rule: a coefficient is stable when its CHAIR_i is within {r.chair_tolerance:.0%} of the method's best "
        f"in this sweep, below SFT's, and its sampled answers keep distinct-2 and token entropy at ≥ "
        f"{r.diversity_floor:.0%} of SFT's, and its object recall stays ≥ {r.recall_floor:.0%} of SFT's (naming no object "
        f"gives CHAIR_i 0 for free). Stable points are circled (plots) or starred (scatter). Every run starts from "
        f"the same SFT model with seed {cfg.seed}; one seed per point, so differences of a few thousandths are noise."
    )
    rep.heading("Fidelity and diversity against the coefficient")
    rep.figure(plot_vs_coef(result, FIDELITY), "fidelity: CHAIR_i (lower is better), POPE F1, gold reward (higher is better)")
    rep.figure(plot_vs_coef(result, [*DIVERSITY, "kl_to_sft"]), "diversity of sampled answers and KL to the SFT model")
    rep.heading("Trade-off")
    rep.figure(plot_tradeoff(result), "CHAIR_i vs diversity and KL (labels: coefficient, * = stable)")
    rep.heading("All points")
    rows = [["method", "coef", *TABLE_KEYS, "stable", "train s", "fwd tokens"],
            ["sft", "–", *[fmt_value(result["sft"].get(k)) for k in TABLE_KEYS], "–", "–", "–"]]  # fmt: skip
    for run in result["runs"]:
        flags = next(p for p in result["stable"][run["method"]]["points"] if p["coef"] == run["coef"])
        rows.append([run["method"], f"{run['coef']:g}", *[fmt_value(run["metrics"].get(k)) for k in TABLE_KEYS],
                     "yes" if flags["stable"] else "no", fmt_value(run["train"]["seconds"]),
                     str(run["train"]["forward_tokens"])])  # fmt: skip
    rep.table(rows)
    rep.heading("Setup")
    rep.code(json.dumps({"base": result["base"], "timing_s": result["timing_s"], "skipped": result.get("skipped", {})}, indent=2))
    return rep.write(out / "report.html")


# ------------------------------------------------------------------------------------------ recipe


def available_methods(methods: list[str]) -> tuple[list[str], dict[str, str]]:
    """(methods to run, {skipped method: why}) — an RL trainer still missing is reported, not hidden."""
    from vlalign.experiments.method_runs import METHODS, RL_TRAINERS, rl_available

    run, skipped = [], {}
    for m in methods:
        METHODS.get(m)  # unknown name → did-you-mean error
        if m in RL_TRAINERS and not rl_available(m):
            skipped[m] = f"its trainer ({RL_TRAINERS[m][0]}) is not available in this installation"
        else:
            run.append(m)
    return run, skipped


def run_kl_sweep(cfg: KLSweepConfig, out_dir: str | Path, log: Any = print) -> dict[str, Any]:
    """The whole sweep; returns (and writes) ``metrics.json``'s content."""

    from vlalign.experiments.method_runs import Measurer, get_base, train_method

    out = start_experiment(cfg.threads, out_dir)
    t_all = time.perf_counter()
    methods, skipped = available_methods(cfg.methods)
    for m, why in skipped.items():
        log(f"[kl-sweep] skipping {m}: {why}")
    base = get_base(cfg, out, log)
    measure = Measurer(base, cfg)
    sft = measure(base.sft_model, out / "eval" / "sft")
    runs = []
    for method in methods:
        for coef in cfg.coefs(method):
            name = f"{method}_{coef:g}"
            train = train_method(method, base, cfg, coef, cfg.seed, out / "runs" / name)
            metrics = measure(out / "runs" / name / "final", out / "eval" / name)
            runs.append({"method": method, "coef": coef, "metrics": metrics, "train": train})
            log(f"[kl-sweep] {name}: CHAIR_i {metrics['chair_i']:.3f}, distinct-2 {metrics['sample_distinct_2']:.3f}, "
                f"KL {metrics['kl_to_sft']:.2f} ({train['seconds']:.0f} s)")  # fmt: skip
    stable = {}
    for method in methods:
        pts = [{"coef": r["coef"], **{k: r["metrics"][k] for k in TABLE_KEYS + ["pope_f1"]}} for r in runs if r["method"] == method]
        flagged = stable_points(pts, sft, cfg.rule)
        stable[method] = {"points": flagged, "range": stable_range(flagged)}
    result = {"sft": sft, "runs": runs, "stable": stable, "rule": cfg.rule.model_dump(), "skipped": skipped,
              "base": base.info, "timing_s": {"total": round(time.perf_counter() - t_all, 1)}}  # fmt: skip
    result["summary"] = summary_lines(result, cfg)
    (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    write_report(out, result, cfg)
    return result


# ------------------------------------------------------------------------------------------ CLI


def kl_sweep_command(
    out: Path = typer.Option(Path("runs/kl_sweep"), "--out", "-o", help="output folder"),
    seed: int | None = typer.Option(None, "--seed", help="seed of data, SFT, pairs and every run"),
    config: Path | None = CONFIG_OPTION,
    overrides: list[str] | None = OVERRIDES_ARG,
) -> None:
    """Sweep DPO's β and the RL KL coefficient from one SFT model: fidelity vs diversity vs KL."""
    cfg = experiment_config(KLSweepConfig, DEFAULT_CONFIG, config, overrides, out, seed)
    result = run_kl_sweep(cfg, out, log=lambda s: typer.echo(s, err=True))
    typer.echo("\n".join(result["summary"]))
    typer.echo(written_line(out, result))
