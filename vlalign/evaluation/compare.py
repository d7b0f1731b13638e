"""`vlalign eval compare RUN_A RUN_B ...`: one HTML report across evaluation (or red-team) runs.

For every metric the runs share: each run's value with its 95% bootstrap interval over items (from its
``metrics.json``), and each later run's *paired* difference to the first run — a paired bootstrap over
the items both runs evaluated, aligned by item id (:func:`vlalign.evaluation.items.paired_difference`),
so item difficulty cancels. A difference is called "detectable" only when its interval excludes 0;
otherwise the report says "no difference detectable at this sample size". Plots: the headline metrics
with their intervals per run. Examples: items worth reading from each run's ``answers.jsonl`` — captions
with hallucinated objects, successful attacks, answers that flipped under push-back.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlalign.evaluation.items import ItemValues, load_items, paired_difference
from vlalign.evaluation.report import Report, _colours, _figure, _png, fmt_value

EXAMPLES_PER_TASK = 5


class CompareError(ValueError):
    """A run folder lacks what a comparison needs; the message names it."""


@dataclass
class Run:
    name: str
    path: Path
    metrics: dict[str, float]
    intervals: dict[str, dict[str, float]]
    items: dict[str, ItemValues]
    answers: list[dict[str, Any]] = field(default_factory=list)


def load_run(path: Path) -> Run:
    mfile = path / "metrics.json"
    if not mfile.is_file():
        raise CompareError(f"{path}: no metrics.json; give folders written by `vlalign eval` or `vlalign redteam`")
    raw = json.loads(mfile.read_text())
    items = load_items(path) if (path / "items.json").is_file() else {}
    answers = []
    if (path / "answers.jsonl").is_file():
        answers = [json.loads(line) for line in (path / "answers.jsonl").read_text().splitlines() if line.strip()]
    return Run(path.name or str(path), path, raw.get("metrics", {}), raw.get("intervals", {}), items, answers)


def _unique_names(runs: list[Run]) -> None:
    seen: dict[str, int] = {}
    for r in runs:
        if r.name in seen:
            seen[r.name] += 1
            r.name = f"{r.name} ({r.path.parent.name or seen[r.name]})"
        else:
            seen[r.name] = 1


def diff_text(a: Run, b: Run, metric: str, n_boot: int = 2000) -> str:
    """``+0.012 [−0.004, 0.029] (no difference detectable)`` for B − A over their common items."""
    if metric not in a.items or metric not in b.items or a.items[metric].stat != b.items[metric].stat:
        return "– (no per-item values in both runs)"
    common = set(a.items[metric].ids) & set(b.items[metric].ids)
    if not common:
        return "– (no common items)"
    iv = paired_difference(a.items[metric], b.items[metric], n_boot=n_boot)
    if math.isnan(iv.value):
        return "–"
    verdict = "detectable" if iv.excludes_zero() else "no difference detectable at this sample size"
    return f"{iv.value:+.3f} [{iv.low:+.3f}, {iv.high:+.3f}] over {iv.n} common items ({verdict})"


def _value_ci(run: Run, metric: str) -> str:
    v = run.metrics.get(metric)
    ci = run.intervals.get(metric)
    if v is None:
        return "–"
    return f"{fmt_value(v)} [{fmt_value(ci['low'])}, {fmt_value(ci['high'])}]" if ci else fmt_value(v)


def plot_with_intervals(runs: Sequence[Run], metrics: Sequence[str]) -> bytes:
    """One panel per metric, one bar per run with its 95% interval as an error bar."""
    fig, axes = _figure(max(1, len(metrics)), width_per_panel=2.8)
    colours = _colours(len(runs))
    for ax, m in zip(axes, metrics):
        for k, r in enumerate(runs):
            v = r.metrics.get(m, float("nan"))
            ci = r.intervals.get(m)
            err = [[max(0.0, v - ci["low"])], [max(0.0, ci["high"] - v)]] if ci and not math.isnan(v) else None
            ax.bar(k, 0.0 if math.isnan(v) else v, color=colours[k], yerr=err, capsize=4)
        ax.set_xticks(range(len(runs)), [r.name for r in runs], fontsize=7, rotation=20)
        ax.set_title(m, fontsize=9)
        ax.margins(y=0.15)
    return _png(fig)


def interesting(row: dict[str, Any]) -> bool:
    """Rows worth showing: hallucinated objects, successful attacks, flipped answers."""
    return bool(row.get("hallucinated")) or row.get("success") is True or row.get("flipped") is True


def examples(run: Run) -> list[list[str]]:
    rows, per_task = [], {}
    for row in run.answers:
        task = str(row.get("task", ""))
        if interesting(row) and per_task.get(task, 0) < EXAMPLES_PER_TASK:
            per_task[task] = per_task.get(task, 0) + 1
            detail = row.get("hallucinated") or row.get("family") or row.get("answer_after") or ""
            rows.append([task, str(row.get("id")), str(row.get("prompt", ""))[:200], str(row.get("answer", ""))[:200],
                         json.dumps(detail) if not isinstance(detail, str) else detail])
    return rows


def write_comparison(paths: Sequence[Path], out: Path, n_boot: int = 2000) -> Path:
    """The HTML report comparing the runs in ``paths`` (the first is the baseline) → ``out/compare.html``."""
    runs = [load_run(Path(p)) for p in paths]
    _unique_names(runs)
    base = runs[0]
    shared = [m for m in base.metrics if all(m in r.metrics for r in runs[1:]) and not m.startswith("time_")]
    if not shared:
        raise CompareError(f"the runs {[str(p) for p in paths]} share no metric; compare runs of the same tasks")
    rep = Report(f"Comparison of {len(runs)} runs")
    rep.text("Runs: " + "; ".join(f"{r.name} = {r.path}" for r in runs) + f". Baseline: {base.name}. Each value "
             "carries its 95% bootstrap interval over the evaluated items; each difference is a paired bootstrap "
             "over the items both runs share (aligned by item id). A difference is stated only when its interval "
             "excludes 0.")
    header = ["metric", *[r.name for r in runs], *[f"{r.name} − {base.name}" for r in runs[1:]]]
    rows = [[m, *[_value_ci(r, m) for r in runs], *[diff_text(base, r, m, n_boot) for r in runs[1:]]] for m in shared]
    rep.table([header, *rows])
    plotted = [m for m in shared if m in base.intervals][:8]
    if plotted:
        rep.figure(plot_with_intervals(runs, plotted), "metrics with 95% intervals over items")
    for r in runs:
        ex = examples(r)
        if ex:
            rep.heading(f"Examples from {r.name}", 3)
            rep.table([["task", "id", "prompt", "answer", "what"], *ex])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps({"runs": [str(p) for p in paths], "rows": [header, *rows]}, indent=2) + "\n")
    return rep.write(out / "compare.html")
