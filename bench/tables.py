"""Markdown tables of benchmark reports (the JSON that ``vlalign bench dpo|grpo --json`` writes).

Run: ``python bench/tables.py bench/results/dpo_bench-mini.json [more.json ...]`` — one block per
report: the headline table (per side, with the load average before/after each side), the vlalign /
TRL ratios against the targets, and the per-phase profile of each side. bench/README.md's result
tables are this script's output.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

PHASES = ("data", "generation", "reference", "forward", "backward", "optimizer", "other")


def _f(x: Any, fmt: str = "{:.3g}") -> str:
    return "–" if x is None else fmt.format(x)


def _load(side: dict[str, Any]) -> str:
    before, after = side.get("load_avg_before"), side.get("load_avg_after")
    return f"{before[0]:.1f}→{after[0]:.1f}" if before and after else "–"


def dpo_tables(rep: dict[str, Any]) -> str:
    sides = [s for s in ("vlalign", "vlalign_lean", "trl") if s in rep]
    head = ("| side | end to end s (CPU s) | steady pairs/s (per CPU-s) | peak RSS MiB | above imports MiB "
            "| useful GFLOP/s steady / e2e | of matmul peak, steady (in CPU time) | max batch | 1-min load |")
    lines = [head, "|" + "---|" * 9]
    for name in sides:
        s = rep[name]
        if "error" in s:
            lines.append(f"| {name} | error: {s['error'][:80]} |" + " |" * 7)
            continue
        mb = rep.get("max_batch", {}).get(name, {}).get("max_batch")
        lines.append(
            f"| {name} | {_f(s.get('e2e_s'), '{:.1f}')} ({_f(s.get('e2e_cpu_s'), '{:.1f}')}) "
            f"| {_f(s.get('pairs_per_s'))} ({_f(s.get('pairs_per_cpu_s'))}) | {_f(s.get('peak_rss_mb'), '{:.0f}')} "
            f"| {_f(s.get('peak_above_baseline_mb'), '{:.0f}')} "
            f"| {_f(s.get('useful_gflops_steady'))} / {_f(s.get('useful_gflops_e2e'))} "
            f"| {_f(s.get('fraction_of_peak_steady'), '{:.0%}')} ({_f(s.get('fraction_of_peak_cpu_time_steady'), '{:.0%}')}) "
            f"| {_f(mb, '{}')} | {_load(s)} |")
    t = rep.get("targets", {})
    size = rep.get("settings", {}).get("size")
    uf = rep.get("useful_flops") or {}
    lines += ["", "| vlalign / TRL | measured | target |", "|---|---|---|",
              f"| end-to-end speed-up (CPU time) | {_f(rep.get('speedup_e2e'))} ({_f(rep.get('speedup_e2e_cpu_time'))}) "
              f"| ≥ {_f(t.get('speedup_e2e_min', {}).get(size))} |",
              f"| steady speed-up (CPU time) | {_f(rep.get('speedup_steady'))} ({_f(rep.get('speedup_steady_cpu_time'))}) | |",
              f"| TRL's work / the needed work (padding apart) | {_f(uf.get('trl_work_ratio'))} | |",
              f"| RSS above imports | {_f(rep.get('memory_above_baseline_ratio'))} "
              f"| ≤ {_f(t.get('memory_above_baseline_ratio_max'))} |",
              f"| max batch under the cap | {_f(rep.get('max_batch_ratio'))} | ≥ {_f(t.get('max_batch_ratio_min'))} |"]
    return "\n".join(lines) + "\n\n" + phase_table(rep, sides)


def grpo_tables(rep: dict[str, Any]) -> str:
    sides = [s for s in ("vlalign", "trl") if s in rep]
    lines = ["| side | s/step (CPU s/step) | end to end s | generated tokens/step | peak RSS MiB | above imports MiB "
             "| useful GFLOP/s | of matmul peak (in CPU time) | 1-min load |", "|" + "---|" * 9]
    for name in sides:
        s = rep[name]
        if "error" in s:
            lines.append(f"| {name} | error: {s['error'][:80]} |" + " |" * 7)
            continue
        gen = s.get("generated_tokens_per_step") or []
        lines.append(
            f"| {name} | {_f(s.get('s_per_step'))} ({_f(s.get('cpu_s_per_step'))}) | {_f(s.get('e2e_s'), '{:.1f}')} "
            f"| {_f(sum(gen) / len(gen) if gen else None, '{:.0f}')} | {_f(s.get('peak_rss_mb'), '{:.0f}')} "
            f"| {_f(s.get('peak_above_baseline_mb'), '{:.0f}')} | {_f(s.get('useful_gflops'))} "
            f"| {_f(s.get('fraction_of_peak'), '{:.0%}')} ({_f(s.get('fraction_of_peak_cpu_time'), '{:.0%}')}) "
            f"| {_load(s)} |")
    vl = rep.get("vlalign", {})
    lines += ["", "| vlalign / TRL | measured | target |", "|---|---|---|",
              f"| per step (CPU time) | {_f(rep.get('speedup'))} ({_f(rep.get('speedup_cpu'))}) "
              f"| ≥ {_f(rep.get('targets', {}).get('speedup_min'))} |",
              f"| end to end | {_f(rep.get('speedup_e2e'))} | |",
              f"| TRL's work / the needed work | {_f(vl.get('trl_work_ratio'))} | |",
              f"| RSS above imports | {_f(rep.get('memory_above_baseline_ratio'))} | |"]
    return "\n".join(lines) + "\n\n" + phase_table(rep, sides)


def phase_table(rep: dict[str, Any], sides: list[str]) -> str:
    """Wall seconds per phase (share of the run in brackets); CPU seconds in the JSON."""
    present = [s for s in sides if "phases" in rep.get(s, {})]
    if not present:
        return ""
    lines = ["| phase | " + " | ".join(present) + " |", "|---|" + "---|" * len(present)]
    for p in PHASES:
        cells = []
        for s in present:
            ph = rep[s]["phases"].get(p, {})
            cells.append(f"{_f(ph.get('wall_s'), '{:.1f}')} s ({_f(ph.get('share'), '{:.0%}')})")
        lines.append(f"| {p} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render(path: Path) -> str:
    rep = json.loads(path.read_text())
    kind = "grpo" if any("s_per_step" in rep.get(s, {}) for s in ("vlalign", "trl")) else "dpo"
    m = rep.get("machine", {})
    where = (f"{m.get('cpu')} ({m.get('threads')} threads), matmul probe {m.get('matmul_gflops_fp32')} GFLOP/s "
             f"({m.get('matmul_gflops_per_cpu_s', '–')} per CPU-s), "
             f"1-min load at start {m.get('load_avg_start', ['?'])[0]}")
    body = grpo_tables(rep) if kind == "grpo" else dpo_tables(rep)
    return f"#### {path.name} — {kind}, {rep.get('settings', {}).get('size')}: {where}\n\n{body}\n"


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("reports", nargs="+", type=Path)
    for p in ap.parse_args().reports:
        print(render(p))
