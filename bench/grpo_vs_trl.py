"""GRPO: vlalign vs TRL 1.16 GRPOTrainer, side by side, on the same small LLaVA and Shapes prompts.

4 "Describe the image." prompts × group of 4 samples, 16 new tokens, β 0.04 (both keep a frozen
reference copy), temperature 1, no vLLM, full fine-tuning, fp32, 2 threads; reward = vlalign's Shapes
rule verifier on both sides (wrapped as a TRL reward function). Each side runs in its own process,
vlalign first, then TRL. Reported per side: s/step and generated tokens/s after the warm-up steps, peak
RSS and peak above the import baseline; plus the speed-up (TRL s/step ÷ vlalign s/step).

Run: ``vlalign bench grpo --against trl --json bench/results/grpo_vs_trl.json`` (or this file directly;
``--threads 1`` is steadier on a loaded machine). ``--ablation`` runs only the vlalign side, once per
forward/prefill variant, to show what each lever buys.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import prepare_inputs, ratio, run_sides, run_worker

SIDES = {"vlalign": "vlalign_grpo_worker.py", "trl": "trl_grpo_worker.py"}
RESULT_KEYS = ("s_per_step", "cpu_s_per_step", "generated_tokens_per_s", "peak_rss_mb", "peak_above_baseline_mb")


def assemble(results: dict[str, dict[str, Any]], machine: dict[str, Any], model: dict[str, Any],
             settings: dict[str, Any]) -> dict[str, Any]:
    """Per-side numbers and vlalign-vs-TRL ratios; speed-up > 1 means vlalign is faster."""
    vl, trl = results.get("vlalign", {}), results.get("trl", {})
    return {
        **results,
        "speedup": ratio(trl.get("s_per_step"), vl.get("s_per_step")),
        # the same ratio in process CPU seconds per step: steadier than wall time on a shared machine
        "speedup_cpu": ratio(trl.get("cpu_s_per_step"), vl.get("cpu_s_per_step")),
        "generated_tokens_ratio": ratio(vl.get("generated_tokens_per_s"), trl.get("generated_tokens_per_s")),
        "memory_ratio": ratio(vl.get("peak_rss_mb"), trl.get("peak_rss_mb")),
        "memory_above_baseline_ratio": ratio(vl.get("peak_above_baseline_mb"), trl.get("peak_above_baseline_mb")),
        "targets": {"speedup_min": 1.5},
        "machine": machine,
        "model": model,
        "settings": settings,
    }


def run(out_json: Path, workdir: Path, steps: int = 2, warmup: int = 1, num_prompts: int = 4, group_size: int = 4,
        max_new_tokens: int = 16, beta: float = 0.04, learning_rate: float = 1e-6, threads: int = 2,
        sides: tuple[str, ...] = ("vlalign", "trl"), size: str = "small") -> dict[str, Any]:
    inputs = prepare_inputs(workdir, num_prompts * (steps + warmup), size=size)
    settings = {"steps": steps, "warmup_steps": warmup, "num_prompts": num_prompts, "group_size": group_size,
                "max_new_tokens": max_new_tokens, "beta": beta, "learning_rate": learning_rate, "threads": threads,
                "max_length": 256, "precision": "fp32", "fine_tuning": "full", "vllm": False}
    spec = {"model": str(inputs["model_dir"]), "prompts": str(inputs["prompts"]), "seed": 0, **settings}
    results, machine = run_sides("grpo", SIDES, sides, spec, workdir, RESULT_KEYS)
    report = assemble(results, machine, inputs["model_info"], settings)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(report, indent=2) + "\n")
    return report


# vlalign-only ablation: where the speed-up comes from (same worker, same data, one knob at a time)
ABLATION = {
    "batched forward, per-sample prefill (before issue #7)": {"forward": "batched", "rollout_prefill": "per_sample"},
    "shared-prefix forward, per-sample prefill": {"forward": "shared_prefix", "rollout_prefill": "per_sample"},
    "shared-prefix forward, prefill once per group (default)": {"forward": "auto", "rollout_prefill": "auto"},
}


def run_ablation(out_json: Path, workdir: Path, steps: int = 4, warmup: int = 1, threads: int = 1) -> dict[str, Any]:
    """Run the vlalign worker once per :data:`ABLATION` variant (each in its own process, in turn)."""
    inputs = prepare_inputs(workdir, 4 * (steps + warmup))
    settings = {"steps": steps, "warmup_steps": warmup, "num_prompts": 4, "group_size": 4, "max_new_tokens": 16,
                "beta": 0.04, "learning_rate": 1e-6, "threads": threads, "max_length": 256}
    spec = {"model": str(inputs["model_dir"]), "prompts": str(inputs["prompts"]), "seed": 0, **settings}
    report: dict[str, Any] = {"settings": settings, "variants": {}}
    for i, (name, knobs) in enumerate(ABLATION.items()):
        before = [round(x, 2) for x in os.getloadavg()]
        res = run_worker(SIDES["vlalign"], {**spec, **knobs}, workdir / f"grpo_ablation_{i}")
        res.update(knobs=knobs, load_avg_before=before, load_avg_after=[round(x, 2) for x in os.getloadavg()])
        report["variants"][name] = res
        print(f"[ablation] {name}: {res.get('s_per_step', res.get('error'))} s/step", file=sys.stderr, flush=True)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, default=Path("bench/results/grpo_vs_trl.json"))
    ap.add_argument("--workdir", type=Path, default=Path("runs/bench"))
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2,
                    help="torch threads per side (1 is steadier when other jobs load the cores)")
    ap.add_argument("--ablation", action="store_true",
                    help="vlalign only: one run per forward/prefill variant (ABLATION), report to --json")
    a = ap.parse_args()
    if a.ablation:
        print(json.dumps(run_ablation(a.json, a.workdir, steps=a.steps, warmup=a.warmup, threads=a.threads), indent=2))
    else:
        print(json.dumps(run(a.json, a.workdir, steps=a.steps, warmup=a.warmup, threads=a.threads), indent=2))
