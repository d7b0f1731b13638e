"""Run the configured evaluation tasks on a model; write ``metrics.json``, ``items.json``, ``summary.md``,
``answers.jsonl`` and ``report.html``.

The tasks live in :mod:`vlalign.evaluation.tasks` (Shapes and the benchmarks in their official
layouts), :mod:`vlalign.evaluation.judging` (judge-scored open answers) and
:mod:`vlalign.evaluation.trust` (calibration, sycophancy, consistency); each is a registered name in
:data:`EVAL_TASKS`, so a config picks a subset. Every metric is a flat ``name → number`` entry so that
reports and before/after tables need no special cases. Beside each rate ``metrics.json`` holds its 95%
bootstrap interval over the evaluated items (``intervals``); a number that is not a rate over items
(a count, a time, a corpus-level statistic) is listed under ``no_interval`` with the reason.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from vlalign.evaluation import judging, tasks, trust  # noqa: F401  (registers the tasks)
from vlalign.evaluation.context import (  # noqa: F401  (the public names of this module)
    EVAL_TASKS,
    EvalConfig,
    EvalContext,
    EvalDataError,
    JudgeConfig,
    TrustConfig,
    read_records,
)
from vlalign.evaluation.items import ITEMS_FILE, intervals, save_items
from vlalign.evaluation.report import Report, fmt_value, markdown_table
from vlalign.evaluation.tasks import POPE_SPLITS, implicit_reward_margins, sequence_logps  # noqa: F401


def evaluate(model: Any, processor: Any, data_dir: str | Path, cfg: EvalConfig, ref_model: Any = None,
             ref_processor: Any = None) -> tuple[dict[str, float], EvalContext]:
    """Run the configured tasks; return (flat metrics, context holding answers, per-item values, figures).

    Two tasks writing the same metric name is an error (the second would silently overwrite the first)."""
    for name in cfg.tasks:
        EVAL_TASKS.get(name)  # unknown task → did-you-mean error before any work
    repeated = sorted({t for t in cfg.tasks if cfg.tasks.count(t) > 1})
    if repeated:
        raise EvalDataError(f"tasks {repeated} are listed twice; run one evaluation per data set of the same task")
    unknown = sorted(set(cfg.task_data) - set(cfg.tasks))
    if unknown:
        raise EvalDataError(f"task_data names tasks {unknown} that are not in tasks {cfg.tasks}")
    ctx = EvalContext(model, processor, Path(data_dir), cfg, ref_model, ref_processor=ref_processor)
    metrics: dict[str, float] = {}
    for name in cfg.tasks:
        ctx.task = name
        t0 = time.perf_counter()
        produced = EVAL_TASKS.get(name)(ctx)
        clash = sorted(set(produced) & set(metrics))
        if clash:
            raise EvalDataError(f"task {name} writes metrics {clash[:5]} that an earlier task wrote; run them separately")
        metrics.update(produced)
        metrics[f"time_{name}_s"] = round(time.perf_counter() - t0, 2)
        ctx.no_interval[f"time_{name}_s"] = "wall time"
    return metrics, ctx


HEADLINE = [
    "chair_i", "chair_s", "object_recall", "bias_rate", "pope_f1", "pope_accuracy", "pope_yes_ratio",
    "pope_adversarial_f1", "preference_accuracy", "preference_accuracy_policy_logp", "answer_length",
    "distinct_2", "harmful_compliance_rate", "benign_refusal_rate", "image_harmful_compliance_rate",
    "image_benign_refusal_rate", "coco_cap_chair_i", "coco_cap_chair_s", "coco_cap_recall", "pope_f1_score",
    "amber_chair", "amber_f1", "amber_score", "mmhal_score", "mmhal_hallucination_rate", "calibration_ece",
    "sycophancy_flip_rate", "consistency_paraphrase", "consistency_image", "judge_win_rate",
]  # fmt: skip


def ci_text(ci: dict[str, float] | None, reason: str | None = None) -> str:
    """``[low, high]`` of an interval dict, the reason a metric has none, or "" ."""
    if ci:
        return f"[{fmt_value(ci['low'])}, {fmt_value(ci['high'])}]"
    return f"none: {reason}" if reason else ""


def summary_rows(metrics: dict[str, float], cis: dict[str, dict[str, float]],
                 no_interval: dict[str, str] | None = None) -> tuple[list[list[str]], list[list[str]]]:
    """(headline rows, other rows) of ``[metric, value, 95% CI over items, n]``."""
    no_interval = no_interval or {}

    def row(k: str) -> list[str]:
        ci = cis.get(k)
        return [k, fmt_value(metrics[k]), ci_text(ci, no_interval.get(k)), str(ci["n"]) if ci else ""]

    return [row(k) for k in HEADLINE if k in metrics], [row(k) for k in sorted(metrics) if k not in HEADLINE]


def summary_markdown(metrics: dict[str, float], title: str, notes: list[str] | None = None,
                     cis: dict[str, dict[str, float]] | None = None, no_interval: dict[str, str] | None = None) -> str:
    """Readable summary: headline metrics first, then every metric (with its 95% CI over items where
    the metric has per-item values, or the reason it has none), then notes."""
    header = ["metric", "value", "95% CI over items", "items"]
    head, rest = summary_rows(metrics, cis or {}, no_interval)
    lines = [f"# {title}", "", "## Headline", "", markdown_table([header, *head]), ""]
    lines += ["## All metrics", "", markdown_table([header, *rest]), ""]
    for n in notes or []:
        lines.append(f"- {n}")
    return "\n".join(lines) + "\n"


def _missing_intervals(metrics: dict[str, float], cis: dict[str, Any], no_interval: dict[str, str]) -> list[str]:
    return [k for k, v in metrics.items() if k not in cis and k not in no_interval and not (isinstance(v, float) and math.isnan(v))]


def write_outputs(out_dir: str | Path, metrics: dict[str, float], ctx: EvalContext, info: dict[str, Any]) -> Path:
    """metrics.json (metrics, intervals, what was evaluated), items.json, summary.md, answers.jsonl,
    report.html and any figures (PNG) into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cis = {k: v.to_dict() for k, v in intervals(ctx.items, n_boot=ctx.cfg.n_boot, seed=ctx.cfg.seed).items()}
    no_interval = dict(ctx.no_interval)
    for k in _missing_intervals(metrics, cis, no_interval):
        no_interval[k] = "no per-item values recorded for this metric"
    (out / "metrics.json").write_text(json.dumps({"metrics": metrics, "intervals": cis, "no_interval": no_interval,
                                                  **info}, indent=2) + "\n")
    save_items(ctx.items, out / ITEMS_FILE)
    notes = []
    if "preference_accuracy_policy_logp" in metrics:
        notes.append("no --ref given: preference accuracy uses the policy's own log-prob margin, not the implicit reward")
    title = f"Evaluation of {info.get('model', 'model')}"
    (out / "summary.md").write_text(summary_markdown(metrics, title, notes, cis, no_interval))
    with (out / "answers.jsonl").open("w", encoding="utf-8") as f:
        for task, rows in ctx.answers.items():
            for row in rows:
                f.write(json.dumps({"task": task, **row}, default=str) + "\n")
    rep = Report(title)
    rep.text(f"Data: {info.get('data')}. Tasks: {', '.join(ctx.cfg.tasks)}. Intervals: 95% percentile bootstrap "
             f"over the evaluated items ({ctx.cfg.n_boot} resamples).")
    head, rest = summary_rows(metrics, cis, no_interval)
    rep.table([["metric", "value", "95% CI over items", "items"], *head, *rest])
    for caption, png in ctx.figures.items():
        name = "".join(c if c.isalnum() else "_" for c in caption.split("(")[0].strip()).strip("_") + ".png"
        (out / name).write_bytes(png)
        rep.figure(png, caption)
    for n in notes:
        rep.text(n, note=True)
    rep.write(out / "report.html")
    return out
