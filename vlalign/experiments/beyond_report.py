"""Measurement, verdicts and report of `vlalign experiment beyond-control`.

Targets, checked per seed (:func:`seed_checks`, thresholds in ``targets``): the best method cuts CHAIR_i by
≥ ``chair_cut`` relative to SFT, keeps object recall ≥ ``recall_ratio`` × SFT's, and its POPE F1 is not
lower than SFT's (the paired 95% CI of method − SFT over the POPE probes does not lie below zero); and it
beats the control: the paired CI of method − control on CHAIR_i excludes zero in the method's favour on
every seed (:func:`vlalign.experiments.uncertainty.compare`).

Evidence when nothing beats the control (:func:`perception_probe`): for each hallucinated object of each
greedy eval caption, the policy is asked its own yes/no question about that object ("Is there a red
circle in the image?"). The share it answers "yes" is the share of its remaining hallucinations that are
perception errors — the model believes the object is there, so a caption-level score cannot tell it what
it does not see — rather than errors of saying (it knows better when asked, and preferences could fix it).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import Field

from vlalign.config import BaseConfig
from vlalign.data.records import PromptRecord
from vlalign.data.shapes.grammar import yes_no_question
from vlalign.evaluation.hallucination import parse_yes_no
from vlalign.evaluation.report import (
    Report,
    _figure,
    _png,
    fmt_value,
    markdown_table,
    plot_curves,
    plot_errorbars,
)
from vlalign.experiments.evaluator import Evaluation
from vlalign.experiments.uncertainty import ci_text, compare, spread, spread_text
from vlalign.machine import machine_info, machine_line

KEYS = ["chair_i", "object_recall", "pope_f1", "bias_rate", "perception_share", "answer_length"]
COMPARED = ["chair_i", "object_recall", "pope_f1"]
CONTROL = "rft"
CLAIMS = {"b_better": "method better on every seed", "a_better": "control better on every seed",
          "no_difference": "no difference detectable"}  # fmt: skip


class TargetRule(BaseConfig):
    chair_cut: float = Field(0.8, gt=0, le=1, description="relative CHAIR_i cut vs SFT needed on each seed")
    recall_ratio: float = Field(0.95, gt=0, description="object recall ≥ this × SFT's on each seed")


# ------------------------------------------------------------------------------------------ measurement


def perception_probe(model: Any, processor: Any, ctx: Any) -> dict[str, float]:
    """The evaluator's extra: the policy's own yes/no answer on every object its greedy captions hallucinated.
    ``perception_share`` = share answered "yes" (NaN without hallucinations)."""
    rows = ctx.answers.get("chair", [])
    images = {r.id: list(r.images) for r in ctx.read("eval_captions.jsonl")}
    questions = [PromptRecord(f"{row['id']}:{obj}", images[row["id"]], yes_no_question(tuple(obj.split())))
                 for row in rows for obj in row["hallucinated"]]  # fmt: skip
    if not questions:
        return {"perception_share": float("nan"), "hallucinations_probed": 0.0}
    says_yes = [parse_yes_no(a) == "yes" for a in ctx.generate(questions)]
    return {"perception_share": sum(says_yes) / len(says_yes), "hallucinations_probed": float(len(says_yes))}


# ------------------------------------------------------------------------------------------ verdict maths


def seed_checks(chair: float, recall: float, pope_high: float, sft_chair: float, sft_recall: float,
                rule: TargetRule) -> dict[str, Any]:  # fmt: skip
    """One seed against the target: CHAIR_i cut = 1 − chair / SFT's; recall ratio = recall / SFT's; POPE F1
    not lower = the upper end of the paired CI of (method − SFT) is ≥ 0."""
    cut = 1.0 - chair / sft_chair if sft_chair > 0 else float("nan")
    ratio = recall / sft_recall if sft_recall > 0 else float("nan")
    out = {"chair_cut": cut, "recall_ratio": ratio, "cut_ok": cut >= rule.chair_cut, "recall_ok": ratio >= rule.recall_ratio,
           "pope_ok": pope_high >= 0.0}  # fmt: skip
    out["met"] = out["cut_ok"] and out["recall_ok"] and out["pope_ok"]
    return out


def perception_ceiling(chair_i: float, share: float) -> tuple[float, float]:
    """(CHAIR_i, cut vs ``chair_i``) if every hallucinated mention the model's own perception backs (``share`` of
    them) stayed and every other one were dropped, the right mentions kept: with H hallucinated of M mentions
    (``chair_i`` = H/M), s·H of M − (1 − s)·H, i.e. s·c / (1 − (1 − s)·c). An estimate of the most that feedback on
    what the model *says* can cut without changing what it sees, not a bound: training also moves the probe."""
    if math.isnan(chair_i) or math.isnan(share) or not 0 < chair_i < 1:
        return float("nan"), float("nan")
    left = share * chair_i / (1 - (1 - share) * chair_i)
    return left, 1 - left / chair_i


def checks_passed(per_seed: Sequence[Mapping[str, Any]]) -> int:
    """Single checks (cut, recall, POPE F1) passed over all seeds: how close a method that misses the target came."""
    return sum(int(c["cut_ok"]) + int(c["recall_ok"]) + int(c["pope_ok"]) for c in per_seed)


def best_method(verdicts: Mapping[str, Mapping[str, Any]]) -> str | None:
    """The non-control method that meets the target on most seeds, then beats the control, then passes most
    single checks; remaining ties → lower mean CHAIR_i."""
    cands = [m for m in verdicts if m != CONTROL]
    if not cands:
        return None
    return min(cands, key=lambda m: (-verdicts[m]["seeds_met"], -int(verdicts[m]["beats_control"]),
                                     -checks_passed(verdicts[m]["per_seed"]), verdicts[m]["chair_i"]))  # fmt: skip


# ------------------------------------------------------------------------------------------ summary


def summarise(cfg: Any, sft: Evaluation, evs: Mapping[tuple[str, int], Evaluation], runs: list[dict[str, Any]],
              pool: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """Per method: spread over seeds, paired comparisons vs SFT and vs the control, the target per seed."""
    seeds, methods, rule = cfg.seeds, cfg.methods, cfg.targets
    agg, cmp, verdicts = {}, {}, {}
    for m in methods:
        mine = [evs[m, s] for s in seeds]
        agg[m] = {"n_seeds": len(seeds), "spread": {}}
        for k in KEYS:
            agg[m]["spread"][k] = spread([float(e.metrics.get(k, float("nan"))) for e in mine], seeds)
            agg[m][k], agg[m][f"{k}_std"] = agg[m]["spread"][k]["mean"], agg[m]["spread"][k]["std"]
        cmp[m] = {"vs_sft": {k: compare([sft] * len(seeds), mine, k, "SFT", m.upper(), seeds) for k in COMPARED}}
        if m != CONTROL:
            ctl = [evs[CONTROL, s] for s in seeds]
            cmp[m]["vs_control"] = {k: compare(ctl, mine, k, "the control", m.upper(), seeds) for k in COMPARED}
        pope = cmp[m]["vs_sft"]["pope_f1"]["per_seed"]
        checks = [seed_checks(e.metrics["chair_i"], e.metrics["object_recall"], p["high"], sft.metrics["chair_i"],
                              sft.metrics["object_recall"], rule) for e, p in zip(mine, pope)]  # fmt: skip
        beats = m != CONTROL and cmp[m]["vs_control"]["chair_i"]["claim"] == "b_better"
        verdicts[m] = {"per_seed": checks, "seeds_met": sum(c["met"] for c in checks), "target_met": all(c["met"] for c in checks),
                       "beats_control": beats, "chair_i": agg[m]["chair_i"]}  # fmt: skip
    result = {"sft": sft.metrics, "sft_intervals": sft.intervals, "runs": runs, "aggregate": agg, "comparisons": cmp,
              "verdicts": verdicts, "best": best_method(verdicts), "pool": pool, "base": base, "feedback": cfg.feedback.model_dump(),
              "targets": rule.model_dump(), "seeds": list(seeds), "methods": list(methods),
              "machine": machine_info(), "machine_line": machine_line()}  # fmt: skip
    result["summary"] = verdict_lines(result)
    return result


def _pct(x: float) -> str:
    return "–" if x is None or math.isnan(x) else f"{100 * x:.0f}%"


def verdict_lines(result: Mapping[str, Any]) -> list[str]:
    sft, ivs, agg, ver, tg = result["sft"], result["sft_intervals"], result["aggregate"], result["verdicts"], result["targets"]
    fb = result["feedback"]
    kw = ", ".join(f"{k}={v}" for k, v in (fb.get("kwargs") or {}).items())
    lines = [f"Feedback: {fb['name']}({kw}) (score only). Pool: {result['pool']['answers']} answers scored, "
             f"{result['pool']['pairs']} best-vs-worst pairs; labels differing from the exact judge: "
             f"{_pct(result['pool']['labels_differing_from_exact'])}; pairs ordered right by the exact judge: "
             f"{_pct(result['pool']['pairs_right_by_exact_judge'])}.",
             f"SFT: CHAIR_i {ci_text(ivs.get('chair_i'))}, recall {ci_text(ivs.get('object_recall'))}, POPE F1 "
             f"{ci_text(ivs.get('pope_f1'))}; perception share of its hallucinations {_pct(sft.get('perception_share', float('nan')))}."]  # fmt: skip
    for m, a in agg.items():
        v, sp = ver[m], a["spread"]
        cuts = " / ".join(_pct(c["chair_cut"]) for c in v["per_seed"])
        lines.append(f"{m.upper()}{' (control)' if m == CONTROL else ''}: CHAIR_i {spread_text(sp['chair_i'])} (cut vs SFT "
                     f"{cuts}), recall {spread_text(sp['object_recall'])}, POPE F1 {spread_text(sp['pope_f1'])}; target met on "
                     f"{v['seeds_met']} of {a['n_seeds']} seeds.")  # fmt: skip
        for key in ("vs_control",):
            if key in result["comparisons"][m]:
                lines.append("  " + " ".join(result["comparisons"][m][key][k]["text"] for k in COMPARED))
    rule = (f"≥ {_pct(tg['chair_cut'])} CHAIR_i cut vs SFT, recall ≥ {tg['recall_ratio']:g} × SFT's, POPE F1 not "
            "detectably lower, on each seed")
    met = [m for m, v in ver.items() if v["target_met"]]
    best = result["best"]
    lines.append(f"TARGET ({rule}): " + (f"met by {', '.join(x.upper() for x in met)}." if met else
                 f"met by no method; closest: {best.upper() if best else '–'}."))  # fmt: skip
    shares = ", ".join(f"{m.upper()} {_pct(a['perception_share'])}" for m, a in agg.items())
    evidence = (f"share of the remaining hallucinations that are perception errors (the policy's own yes/no probe on the "
                f"object also says present; mean over seeds): SFT {_pct(sft.get('perception_share', float('nan')))}, {shares}. "
                "A high share means the model believes what it says: a score on its captions does not show it what it "
                "fails to see.")  # fmt: skip
    if not met:
        lines.append(f"Why the target is missed, evidence: {evidence}")
        left, cut = perception_ceiling(float(sft.get("chair_i", float("nan"))), float(sft.get("perception_share", float("nan"))))
        if not math.isnan(cut):
            lines.append(f"Perception ceiling (estimate): if SFT kept only the hallucinations its own probe backs and dropped "
                         f"the rest, its CHAIR_i would be {left:.3f}, a {_pct(cut)} cut (target {_pct(tg['chair_cut'])}).")  # fmt: skip
    beat = [m for m, v in ver.items() if v["beats_control"]]
    if beat:
        lines.append(f"BEATS THE CONTROL (paired CI of CHAIR_i excluding zero on every seed): {', '.join(x.upper() for x in beat)}.")
    else:
        lines.append("BEATS THE CONTROL: no method beats the control (no paired CI of CHAIR_i excludes zero in the method's "
                     f"favour on every seed). Evidence: {evidence}")  # fmt: skip
    return lines


# ------------------------------------------------------------------------------------------ report


def plot_vs_control(cmp: Mapping[str, Any], seeds: Sequence[int], key: str = "chair_i") -> bytes:
    """Each method's paired difference vs the control on ``key``, one point with its 95% CI per seed."""
    fig, (ax,) = _figure(1, width_per_panel=6.0)
    names = [m for m in cmp if "vs_control" in cmp[m]]
    for i, m in enumerate(names):
        per = cmp[m]["vs_control"][key]["per_seed"]
        for j, iv in enumerate(per):
            x = i + (j - (len(per) - 1) / 2) * 0.12
            ax.errorbar([x], [iv["value"]], yerr=[[iv["value"] - iv["low"]], [iv["high"] - iv["value"]]], fmt="o", color="C0", capsize=2)
    ax.axhline(0.0, ls="--", color="grey")
    ax.set_xticks(range(len(names)), names, fontsize=8)
    ax.set_title(f"{key}: method − control, per seed ({', '.join(map(str, seeds))}), paired 95% CI", fontsize=9)
    return _png(fig)


def rollout_curves(out: Path, methods: Sequence[str], seed: int) -> dict[str, list[dict[str, float]]]:
    """Per online method (seed ``seed``), the feedback's mean score of each rollout batch by update: ``gold/mean``
    where the run's reward was something else (the ensemble arm logs the feedback as gold), else ``reward/mean``
    (the feedback itself). Methods with no rollout log (the offline ones) are left out."""
    curves = {}
    for m in methods:
        log = out / "runs" / f"{m}_seed{seed}" / "metrics.jsonl"
        rows = [json.loads(x) for x in log.read_text().splitlines()] if log.is_file() else []
        pts = [{"step": r["step"], "feedback score": r.get("gold/mean", r.get("reward/mean"))} for r in rows
               if "step" in r and ("gold/mean" in r or "reward/mean" in r)]  # fmt: skip
        if pts:
            curves[m] = pts
    return curves


def examples(out: Path, methods: Sequence[str], seed: int, n: int = 3) -> list[list[str]]:
    """The first ``n`` eval captions SFT hallucinated on, as each method (seed ``seed``) answered them."""

    def answers(folder: Path) -> dict[str, dict[str, Any]]:
        path = folder / "answers.jsonl"
        rows = [json.loads(x) for x in path.read_text().splitlines()] if path.is_file() else []
        return {r["id"]: r for r in rows if r.get("task") == "chair"}

    sft = answers(out / "eval" / "sft")
    ids = [i for i, r in sft.items() if r["hallucinated"]][:n]
    table = [["model", *[f"{i} (truth: {sft[i]['truth']})" for i in ids]]]
    for name, rows in [("sft", sft), *[(m, answers(out / "eval" / f"{m}_seed{seed}")) for m in methods]]:
        cells = [f"{rows[i]['answer']} [wrong: {', '.join(rows[i]['hallucinated']) or '–'}]" if i in rows else "–" for i in ids]
        table.append([name, *cells])
    return table


def wall_text(timing: Mapping[str, Any]) -> str:
    """The invocation's wall time, and when runs were reused from an earlier invocation, how many."""
    text = f"Wall: {timing.get('total', '–')} s"
    if timing.get("runs_reused"):
        text += (f" for this invocation, which reused {timing['runs_reused']} of its {timing['runs']} runs from an earlier one "
                 f"(training time of all runs: {timing['runs_train_s']} s)")  # fmt: skip
    return text + "."


def write_reports(out: Path, result: Mapping[str, Any]) -> None:
    """``report.md`` and ``report.html``: verdicts, per-method table with CIs and spreads, the paired
    differences vs the control per seed, every run, examples."""
    agg, sft, ivs, cmp = result["aggregate"], result["sft"], result["sft_intervals"], result["comparisons"]
    rows = [["metric", "sft", *agg]]
    for k in KEYS:
        rows.append([k, ci_text(ivs[k]) if k in ivs else fmt_value(sft.get(k)), *[spread_text(a["spread"][k]) for a in agg.values()]])
    diffs = [["method", "metric", *[f"seed {s}" for s in result["seeds"]], "verdict"]]
    for m, c in cmp.items():
        for k in COMPARED if "vs_control" in c else []:
            v = c["vs_control"][k]
            diffs.append([m, k, *[ci_text(iv) for iv in v["per_seed"]], CLAIMS[v["claim"]]])
    every = [["method", "seed", "chair_i", "object_recall", "pope_f1", "perception", "labels", "updates", "train s"]]
    for r in result["runs"]:
        iv, mt, tr = r["intervals"], r["metrics"], r["train"]
        every.append([r["method"], str(r["seed"]), *[ci_text(iv.get(k)) for k in COMPARED], fmt_value(mt.get("perception_share")),
                      fmt_value(tr.get("labels")), fmt_value(tr.get("updates")), fmt_value(tr.get("seconds"))])  # fmt: skip
    ex = examples(out, result["methods"], result["seeds"][0])
    note = (f"Means ± sample std over seeds (each seed in brackets); SFT with its 95% CI over items. Machine: "
            f"{result['machine_line']}. {wall_text(result.get('timing_s', {}))}")  # fmt: skip
    md = ["# Beyond the control: score-only feedback on Shapes", "", *[f"- {x}" for x in result["summary"]], "", note, "",
          "## Per method", "", markdown_table(rows), "", "## Paired difference vs the control (method − control, 95% CI)", "",
          markdown_table(diffs), "", "## Every run", "", markdown_table(every), "", f"## Examples (seed {result['seeds'][0]})", "",
          markdown_table(ex), ""]  # fmt: skip
    (out / "report.md").write_text("\n".join(md))
    rep = Report("Beyond the control: score-only feedback on Shapes")
    rep.text("\n\n".join(result["summary"]), note=True)
    rep.text(note)
    rep.heading("Per method")
    rep.figure(plot_errorbars(agg, sft, ["chair_i", "object_recall", "pope_f1"]), "SFT dashed, seeds as dots")
    rep.table(rows)
    curves = rollout_curves(out, result["methods"], result["seeds"][0])
    if curves:
        rep.heading(f"Rollouts (seed {result['seeds'][0]})")
        rep.figure(plot_curves(curves, ["feedback score"]), "the feedback's mean score of each rollout batch (higher = fewer "
                   "errors); the ensemble arm trains on its reward model and is scored by the feedback only for this plot")
    rep.heading("Paired difference vs the control")
    if len(diffs) > 1:
        rep.figure(plot_vs_control(cmp, result["seeds"]), "below zero: fewer hallucinations than the control")
    rep.table(diffs)
    rep.heading("Every run (95% CIs over items)")
    rep.table(every)
    rep.heading(f"Examples (seed {result['seeds'][0]})")
    rep.table(ex)
    rep.code(json.dumps({"pool": result["pool"], "timing_s": result.get("timing_s")}, indent=2, default=str))
    rep.write(out / "report.html")


def console_text(result: Mapping[str, Any], cfg: Any) -> str:
    return "\n".join([*result["summary"], f"Machine: {result['machine_line']}"])
