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
from flops import arch_from_config, dpo_pair_flops, padded_tokens, trl_dpo_pair_flops
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


def useful_flops(config: dict[str, Any], tokens: list[dict[str, int]], batch_size: int) -> dict[str, float]:
    """Needed FLOPs of the rows (bench/flops.py): per pair mean of one training step's work (3 forwards)
    and the epoch total (4 forwards per pair: policy forward + backward, reference once). Beside them,
    what TRL computes for the same rows (two rows per pair, padding apart) — ``trl_work_ratio`` is the
    speed-up vlalign would have at equal kernel efficiency — and each layout's padding share when
    consecutive rows are batched (vlalign: one packed row per pair; TRL: chosen and rejected rows)."""
    arch = arch_from_config(config)
    need, trl = [], []
    for t in tokens:
        args = (arch, t["prompt"], t["chosen"], t["rejected"], image_positions(arch, t["image"]), t["image"])
        need.append(dpo_pair_flops(*args))
        trl.append(trl_dpo_pair_flops(*args))
    packed = [t["prompt"] + t["chosen"] + t["rejected"] for t in tokens]
    rows = [n for t in tokens for n in (t["prompt"] + t["chosen"], t["prompt"] + t["rejected"])]
    real_v, pad_v = padded_tokens(packed, batch_size)
    real_t, pad_t = padded_tokens(rows, 2 * batch_size)  # a pair's two rows sit in the same batch
    epoch, trl_epoch = sum(p["epoch"] for p in need), sum(p["epoch"] for p in trl)
    return {"train_per_pair": sum(p["train"] for p in need) / len(need), "epoch": epoch,
            "trl_epoch": trl_epoch, "trl_work_ratio": round(trl_epoch / epoch, 3),
            "padding_share_vlalign": round(1 - real_v / pad_v, 3), "padding_share_trl": round(1 - real_t / pad_t, 3)}


def image_positions(arch: Any, image_tokens: int) -> list[int]:
    """Vision-tower positions of a one-image prompt with ``image_tokens`` tokens (merge² patches per
    token, + CLIP's class token); [] for a text-only prompt."""
    return [image_tokens * arch.merge**2 + arch.cls_token] if image_tokens else []


def side_flops(side: dict[str, Any], flops: dict[str, float], machine: dict[str, Any]) -> dict[str, Any]:
    """Useful GFLOP/s of one side: steady (train work per pair × pairs/s) and end to end (epoch / time),
    against the matmul probe; the same per CPU-second against the probe's GFLOP per CPU-second (on a
    loaded machine the CPU-time reading is the one to trust)."""
    if "error" in side:
        return {}

    def rate(work: float, per: str) -> float | None:
        return round(work * side[per] / 1e9, 2) if side.get(per) else None

    steady, steady_cpu = rate(flops["train_per_pair"], "pairs_per_s"), rate(flops["train_per_pair"], "pairs_per_cpu_s")
    e2e = round(flops["epoch"] / side["e2e_s"] / 1e9, 2) if side.get("e2e_s") else None
    e2e_cpu = round(flops["epoch"] / side["e2e_cpu_s"] / 1e9, 2) if side.get("e2e_cpu_s") else None
    peak, peak_cpu = machine.get("matmul_gflops_fp32"), machine.get("matmul_gflops_per_cpu_s")
    return {"useful_gflops_steady": steady, "useful_gflops_e2e": e2e,
            "fraction_of_peak_steady": ratio(steady, peak), "fraction_of_peak_e2e": ratio(e2e, peak),
            "useful_gflops_per_cpu_s_steady": steady_cpu, "useful_gflops_per_cpu_s_e2e": e2e_cpu,
            "fraction_of_peak_cpu_time_steady": ratio(steady_cpu, peak_cpu),
            "fraction_of_peak_cpu_time_e2e": ratio(e2e_cpu, peak_cpu)}


def assemble(results: dict[str, dict[str, Any]], machine: dict[str, Any], model: dict[str, Any],
             settings: dict[str, Any], flops: dict[str, float] | None = None,
             max_batches: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The report: per-side numbers, vlalign/TRL ratios, useful FLOP/s vs the matmul probe, targets."""
    vl, lean, trl = results.get("vlalign", {}), results.get("vlalign_lean", {}), results.get("trl", {})
    report: dict[str, Any] = {**results}
    if flops:
        for side in results.values():
            side.update(side_flops(side, flops, machine))
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
    known = inputs["config"]["model_type"] in ("llava", "qwen2_vl")
    flops = useful_flops(inputs["config"], tokens, batch_size) if known else None
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
