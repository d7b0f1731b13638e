"""DPO: vlalign vs TRL 1.16 DPOTrainer, side by side: time to train one epoch on the same rows.

Same model files, same rows (each trainer shuffles with its own sampler), batch 4 pairs, AdamW (fused
kernel on both), constant lr, β 0.1 sigmoid loss, full fine-tuning, fp32, no gradient checkpointing,
2 threads, responses never truncated. Each side runs in its own process, one after the other.

Reported per side: end-to-end seconds for the epoch (model loading, data preparation, reference
scoring, training, final save), steady-state pairs/s (steps after the warm-up), peak RSS and RSS above
the import baseline, a per-phase profile (bench/phases.py), and useful FLOP/s — the FLOPs the
algorithm needs (bench/flops.py: one pair's forward with the prompt once and the output layer on the
response tokens; policy forward + backward = 3×, reference = 1× per pair and epoch) over the time
taken, against the machine's measured fp32 matmul peak. ``max_batch=True`` adds the largest batch each
side trains under a resident-memory cap (bench/maxbatch.py).

Run: ``vlalign bench dpo --model bench-mini --json bench/results/dpo_bench-mini.json`` (or this file).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ratio, run_sides
from flops import arch_from_config, dpo_pair_flops
from inputs import prepare_inputs, token_summary
from maxbatch import max_batch

# vlalign_lean: vlalign with its vision tower recomputed in the backward pass (vlalign.models.recompute: same
# gradients, fewer kept activations, one more vision forward per step); run it with --sides vlalign,vlalign_lean,trl.
SIDES = {"vlalign": "vlalign_dpo_worker.py", "vlalign_lean": "vlalign_dpo_worker.py", "trl": "trl_dpo_worker.py"}
SIDE_SPECS = {"vlalign": {"recompute_vision": False}, "vlalign_lean": {"recompute_vision": True}}
RESULT_KEYS = ("e2e_s", "pairs_per_s", "peak_rss_mb", "peak_above_baseline_mb")

# Per model size: family, measured steps, warm-up steps, max_length (never cuts a response of these rows).
SIZES = {
    "tiny": {"family": "llava", "steps": 1, "warmup": 1, "max_length": 128},
    "small": {"family": "llava", "steps": 20, "warmup": 3, "max_length": 128},
    "bench-mini": {"family": "qwen2_vl", "steps": 6, "warmup": 2, "max_length": 1024},
    "bench-vocab": {"family": "qwen2_vl", "steps": 6, "warmup": 2, "max_length": 1024},
    "qwen2-vl-2b": {"family": "qwen2_vl", "steps": 6, "warmup": 2, "max_length": 1024},  # GPU: bench/gpu.sh
}
# issue #16's targets: end-to-end speed-up by size, FLOP/s share, memory above imports, max batch
TARGETS = {"speedup_e2e_min": {"bench-mini": 4.0, "bench-vocab": 10.0}, "useful_flops_fraction_min": 0.7,
           "memory_above_baseline_ratio_max": 0.4, "max_batch_ratio_min": 4.0}


def useful_flops(config: dict[str, Any], tokens: list[dict[str, int]]) -> dict[str, float]:
    """Needed FLOPs of the rows (bench/flops.py): per pair mean of one training step's work (3 forwards)
    and the epoch total (4 forwards per pair: policy forward + backward, reference once)."""
    arch = arch_from_config(config)
    per_pair = [dpo_pair_flops(arch, t["prompt"], t["chosen"], t["rejected"], image_positions(arch, t["image"]),
                               t["image"]) for t in tokens]
    return {"train_per_pair": sum(p["train"] for p in per_pair) / len(per_pair),
            "epoch": sum(p["epoch"] for p in per_pair)}


def image_positions(arch: Any, image_tokens: int) -> list[int]:
    """Vision-tower positions of a one-image prompt with ``image_tokens`` tokens (merge² patches per
    token, + CLIP's class token); [] for a text-only prompt."""
    return [image_tokens * arch.merge**2 + arch.cls_token] if image_tokens else []


def side_flops(side: dict[str, Any], flops: dict[str, float], peak_gflops: float | None) -> dict[str, Any]:
    """Useful GFLOP/s of one side: steady (train work per pair × pairs/s) and end to end (epoch / time)."""
    if "error" in side:
        return {}
    steady = flops["train_per_pair"] * side["pairs_per_s"] / 1e9 if side.get("pairs_per_s") else None
    e2e = flops["epoch"] / side["e2e_s"] / 1e9 if side.get("e2e_s") else None
    return {"useful_gflops_steady": None if steady is None else round(steady, 2),
            "useful_gflops_e2e": None if e2e is None else round(e2e, 2),
            "fraction_of_peak_steady": ratio(steady, peak_gflops), "fraction_of_peak_e2e": ratio(e2e, peak_gflops)}


def assemble(results: dict[str, dict[str, Any]], machine: dict[str, Any], model: dict[str, Any],
             settings: dict[str, Any], flops: dict[str, float] | None = None,
             max_batches: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The report: per-side numbers, vlalign/TRL ratios, useful FLOP/s vs the matmul probe, targets."""
    vl, lean, trl = results.get("vlalign", {}), results.get("vlalign_lean", {}), results.get("trl", {})
    peak = machine.get("matmul_gflops_fp32")
    report: dict[str, Any] = {**results}
    if flops:
        for side in results.values():
            side.update(side_flops(side, flops, peak))
    mb = max_batches or {}
    report.update({
        "speedup_e2e": ratio(trl.get("e2e_s"), vl.get("e2e_s")),
        "speedup_e2e_cpu_time": ratio(trl.get("e2e_cpu_s"), vl.get("e2e_cpu_s")),
        "speedup_steady": ratio(vl.get("pairs_per_s"), trl.get("pairs_per_s")),
        "speedup_steady_cpu_time": ratio(vl.get("pairs_per_cpu_s"), trl.get("pairs_per_cpu_s")),
        "memory_ratio": ratio(vl.get("peak_rss_mb"), trl.get("peak_rss_mb")),
        "memory_above_baseline_ratio": ratio(vl.get("peak_above_baseline_mb"), trl.get("peak_above_baseline_mb")),
        "lean": {"speedup_e2e": ratio(trl.get("e2e_s"), lean.get("e2e_s")),
                 "memory_ratio": ratio(lean.get("peak_rss_mb"), trl.get("peak_rss_mb"))},
        "max_batch": mb,
        "max_batch_ratio": ratio(mb.get("vlalign", {}).get("max_batch"), mb.get("trl", {}).get("max_batch")),
        "useful_flops": flops,
        "targets": TARGETS,
        "machine": machine,
        "model": model,
        "settings": settings,
    })
    return report


def run(out_json: Path, workdir: Path, size: str = "small", family: str | None = None, steps: int | None = None,
        warmup: int | None = None, batch_size: int = 4, learning_rate: float = 1e-6, beta: float = 0.1,
        threads: int = 2, sides: tuple[str, ...] = ("vlalign", "trl"), max_batch_cap_gib: float | None = None,
        max_batch_limit: int = 64, device: str = "cpu") -> dict[str, Any]:
    preset = SIZES[size]
    family = family or preset["family"]
    steps, warmup = steps or preset["steps"], warmup or preset["warmup"]
    rows = batch_size * (steps + warmup)
    dtype = "bfloat16" if device == "cuda" else "float32"  # weights in this dtype on both sides, no autocast
    workdir = Path(workdir).resolve()
    inputs = prepare_inputs(workdir, max(rows, 2 * max_batch_limit if max_batch_cap_gib else 0), family, size)
    tokens = inputs["tokens"][:rows]
    settings = {"size": size, "family": family, "rows": rows, "steps": steps + warmup, "warmup_steps": warmup,
                "batch_size": batch_size, "max_length": preset["max_length"], "learning_rate": learning_rate,
                "beta": beta, "threads": threads, "optimizer": "adamw (fused)", "lr_schedule": "constant",
                "device": device, "precision": dtype, "gradient_checkpointing": False, "fine_tuning": "full",
                "tokens": token_summary(tokens)}
    spec = {"model": str(inputs["model_dir"]), "data": str(inputs["pairs"]), "seed": 0, "rows": rows,
            "batch_size": batch_size, "warmup_steps": warmup, "max_length": preset["max_length"],
            "learning_rate": learning_rate, "beta": beta, "threads": threads, "device": device, "dtype": dtype}
    results, machine = run_sides("dpo", SIDES, sides, spec, workdir, RESULT_KEYS, SIDE_SPECS)
    flops = useful_flops(inputs["config"], tokens) if inputs["config"]["model_type"] in ("llava", "qwen2_vl") else None
    batches = {}
    if max_batch_cap_gib:
        for name in sides:
            batches[name] = max_batch(SIDES[name], {**spec, **SIDE_SPECS.get(name, {})}, workdir / f"maxbatch_{name}",
                                      max_batch_cap_gib * 1024, max_batch_limit)
    report = assemble(results, machine, inputs["model_info"], settings, flops, batches)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, default=Path("bench/results/dpo_vs_trl.json"))
    ap.add_argument("--workdir", type=Path, default=Path("runs/bench"))
    ap.add_argument("--model", default="small", choices=list(SIZES))
    ap.add_argument("--family", default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--max-batch-cap-gib", type=float, default=None)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    a = ap.parse_args()
    print(json.dumps(run(a.json, a.workdir, a.model, a.family, a.steps, a.warmup,
                         max_batch_cap_gib=a.max_batch_cap_gib, device=a.device), indent=2))
