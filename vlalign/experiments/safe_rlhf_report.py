"""The verdict and ``report.html`` of `vlalign experiment safe-rlhf` (numbers in, text and plots out)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RATE_KEYS = ["harmful_compliance_rate", "benign_refusal_rate", "benign_exact_rate", "eval_reward", "eval_cost"]


def _pm(agg: dict[str, Any], key: str) -> str:
    return f"{agg[key]:.3f} ± {agg[key + '_std']:.3f}"


def verdict_lines(result: dict[str, Any], cfg: Any) -> list[str]:
    """Plain-number findings: the SFT start, each method (mean ± std over seeds), the target per seed,
    and whether the control does as well (said as such when it does)."""
    sft, agg = result["sft"], result["aggregate"]
    h, b = cfg.target_harmful_compliance, cfg.target_benign_refusal
    lines = [f"Target (issue #7): harmful compliance < {h:.0%} AND benign refusal < {b:.0%} on the held-out safety prompts.",
             f"Helpful-only SFT start: harmful compliance {sft['harmful_compliance_rate']:.3f}, benign refusal "
             f"{sft['benign_refusal_rate']:.3f}, benign exact answers {sft['benign_exact_rate']:.3f}."]  # fmt: skip
    for m, a in agg.items():
        lam = f", final λ {a['final_lambda']:.2f}" if a.get("final_lambda") is not None else ""
        lines.append(
            f"{m} ({a['n_seeds']} seeds): harmful compliance {_pm(a, 'harmful_compliance_rate')}, benign refusal "
            f"{_pm(a, 'benign_refusal_rate')}, benign exact answers {_pm(a, 'benign_exact_rate')}, reward "
            f"{_pm(a, 'eval_reward')}{lam}; target met in {a['seeds_meeting_target']}/{a['n_seeds']} seeds "
            f"({a['seconds']:.0f} s of training per run)."
        )
        if a["benign_exact_rate"] < 0.9 * sft["benign_exact_rate"]:
            lines.append(f"  {m}: benign exact answers fell from {sft['benign_exact_rate']:.3f} to {a['benign_exact_rate']:.3f}: "
                         "benign answers degenerated without being refusals, which the benign-refusal rate alone hides.")  # fmt: skip
    safe, ctl = agg.get("safe_ppo"), agg.get("ppo")
    if safe and ctl:
        if ctl["seeds_meeting_target"] >= safe["seeds_meeting_target"] and ctl["harmful_compliance_rate"] <= safe["harmful_compliance_rate"]:
            lines.append("The reward-only control does as well as Safe-PPO here: the constraint adds nothing measurable.")
        else:
            lines.append(
                f"The reward-only control leaves harmful compliance at {ctl['harmful_compliance_rate']:.3f} "
                f"(SFT {sft['harmful_compliance_rate']:.3f}): the helpfulness reward alone does not teach refusal; "
                "the cost constraint does."
            )
    return lines


def plot_rates(result: dict[str, Any]) -> bytes:
    """Bars: SFT and each method's mean over seeds, one panel per metric."""
    from vlalign.evaluation.report import plot_bars

    groups = {"sft": result["sft"], **result["aggregate"]}
    return plot_bars(groups, RATE_KEYS[:4])


def write_report(out: Path, result: dict[str, Any], cfg: Any) -> Path:
    from vlalign.evaluation.report import Report, fmt_value, plot_curves, read_metrics_jsonl

    rep = Report("Safe RLHF on the Shapes safety split: Safe-PPO vs reward-only PPO")
    rep.text("\n\n".join(verdict_lines(result, cfg)), note=True)
    rep.text(
        f"Setup: a tiny LLaVA SFT'd on the safety training prompts into a helpful-only model (unsafe answer as target for "
        f"{cfg.comply_share:.0%} of harmful prompts, the helpful answer on benign ones). From it, per seed {cfg.seeds}: "
        f"Safe-PPO (reward {cfg.reward.get('name')}, cost {cfg.cost.get('name')}, mean cost ≤ {cfg.lagrange.cost_limit:g}) and the "
        f"control, the same PPO on the reward alone ({cfg.rl.steps} rollouts × {cfg.rl.prompts_per_step} prompts × "
        f"{cfg.rl.num_samples} answers each). Evaluation: greedy answers on {result['sft']['n_harmful']} harmful + "
        f"{result['sft']['n_benign']} benign held-out safety prompts on eval scenes (same prompt templates as training)."
    )
    rep.heading("Held-out safety metrics (mean over seeds)")
    rep.figure(plot_rates(result), "harmful compliance and benign refusal (lower is better), benign exact answers and reward")
    rows = [["metric", "sft", *result["aggregate"]]]
    for k in RATE_KEYS:
        rows.append([k, fmt_value(result["sft"].get(k)), *[_pm(a, k) for a in result["aggregate"].values()]])
    rep.table(rows)
    rep.heading("Training curves (first seed)")
    first = {r["method"]: read_metrics_jsonl(Path(r["dir"]) / "metrics.jsonl") for r in result["runs"]
             if r["seed"] == cfg.seeds[0] and (Path(r["dir"]) / "metrics.jsonl").is_file()}  # fmt: skip
    if first:
        rep.figure(plot_curves(first, ["reward/mean", "gold/mean", "lagrange/lambda", "kl/mean"], smooth_window=3),
                   "rollout reward, rollout cost (gold/mean = harmful-compliance cost, scored on every run), λ and KL")  # fmt: skip
    rep.heading("Every run")
    rows = [["method", "seed", *RATE_KEYS, "final λ", "target met", "train s"]]
    for r in result["runs"]:
        lam = r["lambda"][-1][1] if r["lambda"] else None
        rows.append([r["method"], str(r["seed"]), *[fmt_value(r["metrics"][k]) for k in RATE_KEYS], fmt_value(lam),
                     "yes" if r["target_met"] else "no", fmt_value(r["train"]["seconds"])])  # fmt: skip
    rep.table(rows)
    rep.heading("Pipeline")
    rep.code(json.dumps({"base": result["base"], "timing_s": result["timing_s"]}, indent=2))
    return rep.write(out / "report.html")
