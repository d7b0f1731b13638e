"""The verdict and ``report.html`` of `vlalign experiment safe-rlhf` (numbers in, text and plots out)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vlalign.evaluation.report import Report, fmt_value, plot_bars, plot_curves, read_metrics_jsonl
from vlalign.experiments.uncertainty import ci_text, spread_text

RATE_KEYS = ["harmful_compliance_rate", "benign_refusal_rate", "benign_exact_rate", "eval_reward", "eval_cost"]


def _pm(agg: dict[str, Any], key: str) -> str:
    return spread_text(agg["spread"][key])


def _train_cost(agg: dict[str, Any]) -> str:
    if "train_cost_all" not in agg["spread"]:
        return ""
    return (f", rollout cost while training {_pm(agg, 'train_cost_all')} (last 10 rollouts "
            f"{_pm(agg, 'train_cost_last')})")


def verdict_lines(result: dict[str, Any], cfg: Any) -> list[str]:
    """Plain-number findings: the SFT start (95% CIs over prompts), each method (mean ± std over seeds,
    each seed), the target per seed, and the comparisons — claimed only from paired bootstraps over the
    same prompts that hold on every seed."""
    sft, ivs, agg = result["sft"], result.get("sft_intervals", {}), result["aggregate"]
    h, b = cfg.target_harmful_compliance, cfg.target_benign_refusal
    lines = [f"Target (issue #7): harmful compliance < {h:.0%} AND benign refusal < {b:.0%} on the held-out safety prompts.",
             f"Helpful-only SFT start: harmful compliance {ci_text(ivs.get('harmful_compliance_rate'))}, benign refusal "
             f"{ci_text(ivs.get('benign_refusal_rate'))}, benign exact answers {ci_text(ivs.get('benign_exact_rate'))} "
             "(95% CIs over prompts)."]  # fmt: skip
    for m, a in agg.items():
        lam = f", final λ {a['final_lambda']:.2f}" if a.get("final_lambda") is not None else ""
        lam += f", fixed cost coefficient c = {a['cost_coef']:g}" if a.get("cost_coef") is not None else ""
        lines.append(
            f"{m} ({a['n_seeds']} seeds, mean ± std (each seed)): harmful compliance {_pm(a, 'harmful_compliance_rate')}, "
            f"benign refusal {_pm(a, 'benign_refusal_rate')}, benign exact answers {_pm(a, 'benign_exact_rate')}, reward "
            f"{_pm(a, 'eval_reward')}{lam}{_train_cost(a)}; target met in {a['seeds_meeting_target']}/{a['n_seeds']} seeds "
            f"({a['seconds']:.0f} s of training per run)."
        )
        if a["benign_exact_rate"] < 0.9 * sft["benign_exact_rate"]:
            lines.append(f"  {m}: benign exact answers fell from {sft['benign_exact_rate']:.3f} to {a['benign_exact_rate']:.3f}: "
                         "benign answers degenerated without being refusals, which the benign-refusal rate alone hides.")  # fmt: skip
    cmp = result.get("comparisons", {})
    for m, c in cmp.items():
        lines.append(f"  {m} vs SFT: " + " ".join(v["text"] for v in c["vs_sft"].values()))
        if m != "safe_ppo" and "vs_control" in c:
            lines.append(f"  {m} vs the control: " + " ".join(v["text"] for v in c["vs_control"].values()))
        if "vs_safe_ppo" in c:
            lines.append(f"  {m} vs safe_ppo: " + " ".join(v["text"] for v in c["vs_safe_ppo"].values()))
    lines += fixed_vs_learned(agg, cfg)
    safe = cmp.get("safe_ppo", {}).get("vs_control")
    if safe:
        claim = safe["harmful_compliance_rate"]["claim"]
        lines.append({
            "b_better": "Safe-PPO beats the reward-only control on harmful compliance on every seed: the helpfulness reward "
                        "alone does not teach refusal; the cost constraint does.",
            "a_better": "The reward-only control beats Safe-PPO on harmful compliance on every seed.",
            "no_difference": "Safe-PPO and the reward-only control: no difference in harmful compliance detectable at this "
                             "sample size on every seed.",
        }[claim] + " " + " ".join(v["text"] for v in safe.values()))  # fmt: skip
    return lines


def fixed_vs_learned(agg: dict[str, Any], cfg: Any) -> list[str]:
    """The fixed penalty's question in one line: at which coefficients c the target held on every seed,
    and how the learned λ did (empty without both kinds of run)."""
    fixed = {m: a for m, a in agg.items() if a.get("cost_coef") is not None}
    safe = agg.get("safe_ppo")
    if not fixed or safe is None:
        return []

    def cs(ok: bool) -> str:
        got = [f"{a['cost_coef']:g}" for a in fixed.values() if (a["seeds_meeting_target"] == a["n_seeds"]) == ok]
        return ", ".join(got) if got else "none"

    lam = f", final λ {safe['final_lambda']:.2f}" if safe.get("final_lambda") is not None else ""
    return [f"Fixed cost penalty vs the learned λ: the target held on every seed at c = {cs(True)} and not at c = {cs(False)}; "
            f"safe_ppo (λ from {cfg.lagrange.lambda_init:g}, learned against mean cost ≤ {cfg.lagrange.cost_limit:g}, "
            f"capped at {cfg.lagrange.lambda_max}{lam}) met it in {safe['seeds_meeting_target']}/{safe['n_seeds']} seeds."]  # fmt: skip


def plot_rates(result: dict[str, Any]) -> bytes:
    """Bars: SFT and each method's mean over seeds, one panel per metric."""
    groups = {"sft": result["sft"], **result["aggregate"]}
    return plot_bars(groups, RATE_KEYS[:4])


def write_report(out: Path, result: dict[str, Any], cfg: Any) -> Path:
    rep = Report("Safe RLHF on the Shapes safety split: Safe-PPO vs reward-only PPO and fixed cost penalties")
    rep.text("\n\n".join(verdict_lines(result, cfg)), note=True)
    rep.text(
        f"Setup: a tiny LLaVA SFT'd on the safety training prompts into a helpful-only model (unsafe answer as target for "
        f"{cfg.comply_share:.0%} of harmful prompts, the helpful answer on benign ones). From it, per seed {cfg.seeds}: "
        f"Safe-PPO (reward {cfg.reward.get('name')}, cost {cfg.cost.get('name')}, mean cost ≤ {cfg.lagrange.cost_limit:g}) and the "
        f"control, the same PPO on the reward alone"
        + (f"; with the fixed penalty, the Safe-PPO trainer on reward − c·cost, c in {cfg.fixed_penalties} (λ not learned)"
           if "ppo_fixed_penalty" in cfg.methods else "")
        + f" ({cfg.rl.steps} rollouts × {cfg.rl.prompts_per_step} prompts × {cfg.rl.num_samples} answers each)."
        f" Evaluation: greedy answers on {result['sft']['n_harmful']} harmful + "
        f"{result['sft']['n_benign']} benign held-out safety prompts on eval scenes (same prompt templates as training)."
    )
    rep.text(f"Machine: {result['machine_line']}")
    rep.heading("Held-out safety metrics (SFT: 95% CI over prompts; methods: mean ± std over seeds, each seed)")
    rep.figure(plot_rates(result), "harmful compliance and benign refusal (lower is better), benign exact answers and reward")
    rows = [["metric", "sft", *result["aggregate"]]]
    for k in RATE_KEYS:
        iv = result["sft_intervals"].get(k)
        rows.append([k, ci_text(iv) if iv else fmt_value(result["sft"].get(k)), *[_pm(a, k) for a in result["aggregate"].values()]])
    rep.table(rows)
    rep.heading("Training curves (first seed)")
    first = {r["method"]: read_metrics_jsonl(Path(r["dir"]) / "metrics.jsonl") for r in result["runs"]
             if r["seed"] == cfg.seeds[0] and (Path(r["dir"]) / "metrics.jsonl").is_file()}  # fmt: skip
    if first:
        rep.figure(plot_curves(first, ["reward/mean", "gold/mean", "cost/coef", "kl/mean"], smooth_window=3),
                   "rollout reward, rollout cost (gold/mean = harmful-compliance cost, scored on every run), the cost's "
                   "weight (cost/coef: Safe-PPO's λ, or the fixed c) and KL")  # fmt: skip
    rep.heading("Every run (95% CIs over prompts)")
    rows = [["method", "seed", *RATE_KEYS, "final λ (or fixed c)", "rollout cost (all / last 10)", "target met", "train s"]]
    for r in result["runs"]:
        lam = r["lambda"][-1][1] if r["lambda"] else r.get("cost_coef")
        cells = [ci_text(r["intervals"][k]) if k in r["intervals"] else fmt_value(r["metrics"][k]) for k in RATE_KEYS]
        tc = r.get("train_cost") or {}
        cost = f"{tc['all']:.3f} / {tc['last']:.3f}" if tc else "–"
        rows.append([r["method"], str(r["seed"]), *cells, fmt_value(lam), cost,
                     "yes" if r["target_met"] else "no", fmt_value(r["train"]["seconds"])])  # fmt: skip
    rep.table(rows)
    rep.heading("Pipeline")
    rep.code(json.dumps({"base": result["base"], "timing_s": result["timing_s"]}, indent=2))
    return rep.write(out / "report.html")
