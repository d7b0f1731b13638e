"""metrics.json content and report.html of `vlalign experiment reward-sources`.

Split from the recipe so each file reads in one sitting: here only tables, the verdict (plain
numbers, no spin: a source that does no better than its control is said to do no better) and plots.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from vlalign.evaluation.report import Report, fmt_value
from vlalign.experiments.common import plot_vs_budget
from vlalign.experiments.evaluator import Evaluation
from vlalign.experiments.uncertainty import ci_text, compare
from vlalign.machine import machine_info, machine_line

HEADLINE = ["chair_i", "chair_s", "object_recall", "pope_f1", "preference_accuracy", "answer_length"]
CURVE_METRICS = ["chair_i", "pope_f1", "preference_accuracy", "object_recall"]
VS_CONTROL = ["chair_i", "pope_f1", "object_recall"]  # DPO beats the control only if it wins the first, loses none


def _nan(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else float("nan")


def summarize(cfg: Any, models: dict[str, Evaluation], runs: dict[str, dict[str, Any]],
              pool_stats: dict[str, dict[str, Any]], labellers: dict[str, Any], timing: dict[str, float],
              candidates: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """Everything metrics.json holds: per-run rows (with 95% CIs over items), label agreement,
    sample-efficiency curves, the paired comparisons and the verdict, the machine."""
    rows: dict[str, dict[str, Any]] = {}
    for key, run in runs.items():
        agree = pool_stats[run["source"]]["agreement_by_budget"][str(run["budget"])]
        m = models[key].metrics
        rows[key] = {**run, "label_agreement": agree["agreement"], "gt_tie_rate": agree["gt_tie_rate"],
                     **{k: m.get(k) for k in HEADLINE if k in m}}  # fmt: skip
    curves: dict[str, dict[str, dict[str, float]]] = {}
    for key, r in rows.items():
        if r["method"] != "dpo":
            continue
        for m in CURVE_METRICS + ["label_agreement"]:
            curves.setdefault(r["source"], {}).setdefault(m, {})[str(r["n_pairs"])] = _nan(r.get(m))
    result = {
        "seed": cfg.seed,
        "sft": models["sft"].metrics,
        "runs": rows,
        "label_agreement": pool_stats,
        "sample_efficiency": curves,
        "labellers": labellers,
        "candidates": candidates,
        "timing_s": timing,
        "models": {k: ev.metrics for k, ev in models.items()},
        "intervals": {k: ev.intervals for k, ev in models.items()},
        "machine": machine_info(),
        "machine_line": machine_line(),
    }
    result["verdict"] = verdict(result, models, cfg.seed)
    return result


def verdict(result: dict[str, Any], models: dict[str, Evaluation], seed: int) -> dict[str, Any]:
    """Per source, at each budget that has a control: DPO vs the SFT start and vs the control, each a
    paired bootstrap over the same eval items (one seed)."""
    sft, rows = models["sft"], result["runs"]
    out: dict[str, Any] = {}
    for key, ctl_row in rows.items():
        if ctl_row["method"] != "control":
            continue
        arm = key.replace(":control", "")
        dpo, ctl = models[arm], models[key]
        # "says less" is not "hallucinates less": CHAIR_i of an answer naming nothing is 0
        collapsed = bool(_nan(dpo.metrics.get("object_recall")) < 0.5 * _nan(sft.metrics.get("object_recall")))
        vs_sft = compare([sft], [dpo], "chair_i", "SFT", "DPO", [seed])
        vs_ctl = {m: compare([ctl], [dpo], m, "the control", "DPO", [seed]) for m in VS_CONTROL if m in dpo.items and m in ctl.items}
        wins = vs_ctl.get("chair_i", {}).get("claim") == "b_better"
        loses = any(c["claim"] == "a_better" for c in vs_ctl.values())
        out[arm] = {
            "chair_i_sft": sft.metrics.get("chair_i"), "chair_i_dpo": dpo.metrics.get("chair_i"),
            "chair_i_control": ctl.metrics.get("chair_i"), "pope_f1_dpo": dpo.metrics.get("pope_f1"),
            "pope_f1_control": ctl.metrics.get("pope_f1"), "recall_sft": sft.metrics.get("object_recall"),
            "recall_dpo": dpo.metrics.get("object_recall"), "dpo_collapsed": collapsed,
            "dpo_beats_sft": bool(vs_sft["claim"] == "b_better" and not collapsed),
            "dpo_beats_control": bool(wins and not loses and not collapsed),
            "control_beats_dpo": bool(vs_ctl.get("chair_i", {}).get("claim") == "a_better"),
            "vs_sft": vs_sft, "vs_control": vs_ctl,
        }  # fmt: skip
    return out


def verdict_text(result: dict[str, Any]) -> str:
    lines = []
    for arm, v in result["verdict"].items():
        src = arm.split("@")[0]
        agree = result["runs"][arm]["label_agreement"]
        agree_txt = "undefined (every pair a ground-truth tie)" if math.isnan(_nan(agree)) else f"{agree:.1%}"
        iv = result["intervals"]
        s = (f"{arm}: label agreement with ground truth {agree_txt}. CHAIR_i: DPO {ci_text(iv[arm].get('chair_i'))}, SFT "
             f"{ci_text(iv['sft'].get('chair_i'))}, control {ci_text(iv[arm + ':control'].get('chair_i'))} (95% CIs over items). ")  # fmt: skip
        if v["dpo_collapsed"]:
            s += (f"DPO on {src} labels COLLAPSED: object recall {v['recall_dpo']:.3f} (SFT {v['recall_sft']:.3f}); its "
                  "answers name (almost) no object, so its low CHAIR_i is not an improvement.")  # fmt: skip
        elif v["dpo_beats_control"]:
            s += f"DPO on {src} labels beats the same-budget SFT control on CHAIR_i without losing POPE F1 or recall."
        elif v["control_beats_dpo"]:
            s += f"The control beats DPO on CHAIR_i: at this budget {src} labels add nothing beyond supervised training on the chosen answers."
        else:
            s += (f"DPO on {src} labels and the control: no difference detectable at this sample size, or a trade of one "
                  "metric for another.")  # fmt: skip
        s += " " + " ".join(c["text"] for c in [v["vs_sft"], *v["vs_control"].values()])
        lines.append(s)
    return "\n\n".join(lines) or "No control arm was run: preference learning cannot be told apart from extra SFT data."


def _fmt(v: Any) -> str:
    return fmt_value(v)


def runs_table(result: dict[str, Any]) -> list[list[str]]:
    """One row per arm; rates with their 95% CI over the evaluated items."""
    cols = ["n_pairs", "label_agreement", "gt_tie_rate"]
    iv = result["intervals"]

    def metric(name: str, values: dict[str, Any], k: str) -> str:
        return ci_text(iv[name][k]) if k in iv.get(name, {}) else _fmt(values.get(k))

    rows = [["arm", *cols, *HEADLINE], ["sft (start)", "–", "–", "–", *[metric("sft", result["sft"], k) for k in HEADLINE]]]
    for key, r in result["runs"].items():
        rows.append([key, *[_fmt(r.get(c)) for c in cols], *[metric(key, r, k) for k in HEADLINE]])
    return rows


def labels_table(result: dict[str, Any]) -> list[list[str]]:
    rows = [["source", "prompts", "pairs made", "unrankable", "agreement (all pairs)", "gt tie rate"]]
    for name, st in result["label_agreement"].items():
        a = st["agreement_all"]
        rows.append([name, str(st["prompts"]), str(st["pairs"]), str(st["unrankable"]), _fmt(a["agreement"]),
                     _fmt(a["gt_tie_rate"])])  # fmt: skip
    return rows


def write_report(out: Path, result: dict[str, Any], cfg: Any) -> Path:
    rep = Report(f"vlalign experiment reward-sources (seed {cfg.seed})")
    rep.text(verdict_text(result), note=True)
    rep.text(f"Machine: {result['machine_line']}")
    rep.heading("Label quality (on-policy candidates, best vs worst per prompt)")
    rep.text("Agreement = share of a source's pairs whose chosen answer the ground truth (CHAIR's judgement: fewer "
             "hallucinated object types, then more correct ones) also prefers; pairs the ground truth cannot "
             "separate are excluded from it and counted as the tie rate.")  # fmt: skip
    rep.table(labels_table(result))
    rep.heading("Alignment by source and label budget")
    rep.table(runs_table(result))
    rep.heading("Sample efficiency")
    curves = result["sample_efficiency"]
    for m in CURVE_METRICS + ["label_agreement"]:
        pts = {src: {int(b): v for b, v in c.get(m, {}).items() if not math.isnan(v)} for src, c in curves.items()}
        if not any(pts.values()):
            continue
        controls = None
        if m != "label_agreement":
            controls = {src: {r["n_pairs"]: _nan(r.get(m)) for r in result["runs"].values()
                              if r["method"] == "control" and r["source"] == src} for src in curves}  # fmt: skip
        base = _nan(result["sft"].get(m)) if m in result["sft"] else None
        rep.figure(plot_vs_budget(pts, m, base, controls), f"{m} vs number of labelled pairs")
    rep.heading("Pipeline")
    info = {k: result[k] for k in ("labellers", "candidates", "timing_s")}
    rep.code(json.dumps(info, indent=2))
    return rep.write(out / "report.html")
