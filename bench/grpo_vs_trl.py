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

from common import ratio, run_sides, run_worker
from dpo_vs_trl import image_positions
from flops import arch_from_config, grpo_group_flops, trl_grpo_group_flops
from inputs import prepare_inputs, token_summary

SIDES = {"vlalign": "vlalign_grpo_worker.py", "trl": "trl_grpo_worker.py"}
RESULT_KEYS = ("s_per_step", "cpu_s_per_step", "generated_tokens_per_s", "peak_rss_mb", "peak_above_baseline_mb")

# Per model size: family, measured steps, warm-up steps, new tokens per sample, max_length.
SIZES = {
    "tiny": {"family": "llava", "steps": 1, "warmup": 1, "max_new_tokens": 8, "max_length": 256},
    "small": {"family": "llava", "steps": 2, "warmup": 1, "max_new_tokens": 16, "max_length": 256},
    "bench-mini": {"family": "qwen2_vl", "steps": 2, "warmup": 1, "max_new_tokens": 64, "max_length": 1024},
    "bench-vocab": {"family": "qwen2_vl", "steps": 2, "warmup": 1, "max_new_tokens": 64, "max_length": 1024},
    "qwen2-vl-2b": {"family": "qwen2_vl", "steps": 3, "warmup": 1, "max_new_tokens": 128, "max_length": 1024},
}


def step_flops(config: dict[str, Any], tokens: list[dict[str, int]], num_prompts: int, group_size: int,
               new_tokens: float, kl: bool, layout: Any = grpo_group_flops) -> float:
    """FLOPs of one GRPO step (bench/flops.py): ``num_prompts`` groups of the mean prompt, each sampling
    ``group_size`` responses of ``new_tokens`` tokens, then reference and policy passes; ``layout`` =
    the needed work (default) or what TRL computes (``trl_grpo_group_flops``)."""
    arch = arch_from_config(config)
    prompt = round(sum(t["prompt"] for t in tokens) / len(tokens))
    image = round(sum(t["image"] for t in tokens) / len(tokens))
    group = layout(arch, prompt, [round(new_tokens)] * group_size, image_positions(arch, image), image, kl)
    return num_prompts * group["step"]


def assemble(results: dict[str, dict[str, Any]], machine: dict[str, Any], model: dict[str, Any],
             settings: dict[str, Any], config: dict[str, Any] | None = None,
             tokens: list[dict[str, int]] | None = None) -> dict[str, Any]:
    """Per-side numbers and vlalign-vs-TRL ratios; speed-up > 1 means vlalign is faster."""
    vl, trl = results.get("vlalign", {}), results.get("trl", {})
    peak = machine.get("matmul_gflops_fp32")
    if config is not None and config.get("model_type") in ("llava", "qwen2_vl"):
        samples = settings["num_prompts"] * settings["group_size"]
        for side in results.values():
            if "error" in side or not side.get("s_per_step"):
                continue
            warm = settings["warmup_steps"]
            new = sum(side["generated_tokens_per_step"][warm:]) / len(side["generated_tokens_per_step"][warm:]) / samples
            flops = step_flops(config, tokens, settings["num_prompts"], settings["group_size"], new, settings["beta"] > 0)
            trl_work = step_flops(config, tokens, settings["num_prompts"], settings["group_size"], new,
                                  settings["beta"] > 0, trl_grpo_group_flops)
            side["useful_gflops"] = round(flops / side["s_per_step"] / 1e9, 2)
            side["fraction_of_peak"] = ratio(side["useful_gflops"], peak)
            if side.get("cpu_s_per_step"):
                side["useful_gflops_per_cpu_s"] = round(flops / side["cpu_s_per_step"] / 1e9, 2)
                side["fraction_of_peak_cpu_time"] = ratio(side["useful_gflops_per_cpu_s"],
                                                          machine.get("matmul_gflops_per_cpu_s"))
            side["trl_work_ratio"] = round(trl_work / flops, 3)  # what TRL computes / what is needed
    return {
        **results,
        "speedup": ratio(trl.get("s_per_step"), vl.get("s_per_step")),
        "speedup_e2e": ratio(trl.get("e2e_s"), vl.get("e2e_s")),
        # the same ratio in process CPU seconds per step: steadier than wall time on a shared machine
        "speedup_cpu": ratio(trl.get("cpu_s_per_step"), vl.get("cpu_s_per_step")),
        "generated_tokens_ratio": ratio(vl.get("generated_tokens_per_s"), trl.get("generated_tokens_per_s")),
        "memory_ratio": ratio(vl.get("peak_rss_mb"), trl.get("peak_rss_mb")),
        "memory_above_baseline_ratio": ratio(vl.get("peak_above_baseline_mb"), trl.get("peak_above_baseline_mb")),
        "targets": {"speedup_min": 3.0},
        "machine": machine,
        "model": model,
        "settings": settings,
    }


def run(out_json: Path, workdir: Path, steps: int | None = None, warmup: int | None = None, num_prompts: int = 4,
        group_size: int = 4, max_new_tokens: int | None = None, beta: float = 0.04, learning_rate: float = 1e-6,
        threads: int = 2, sides: tuple[str, ...] = ("vlalign", "trl"), size: str = "small",
        family: str | None = None, device: str = "cpu", vllm: bool = False) -> dict[str, Any]:
    preset = SIZES[size]
    family = family or preset["family"]
    steps, warmup = steps or preset["steps"], warmup or preset["warmup"]
    max_new_tokens = max_new_tokens or preset["max_new_tokens"]
    workdir = Path(workdir).resolve()
    rows = num_prompts * (steps + warmup)
    inputs = prepare_inputs(workdir, rows, family, size)
    tokens = inputs["tokens"][:rows]
    settings = {"size": size, "family": family, "steps": steps, "warmup_steps": warmup, "num_prompts": num_prompts,
                "group_size": group_size, "max_new_tokens": max_new_tokens, "beta": beta,
                "learning_rate": learning_rate, "threads": threads, "max_length": preset["max_length"],
                "device": device, "dtype": "bfloat16" if device == "cuda" else "float32", "fine_tuning": "full",
                "vllm": vllm, "tokens": token_summary(tokens)}
    spec = {"model": str(inputs["model_dir"]), "prompts": str(inputs["prompts"]), "seed": 0,
            **{k: v for k, v in settings.items() if k != "tokens"}}
    results, machine = run_sides("grpo", SIDES, sides, spec, workdir, RESULT_KEYS)
    report = assemble(results, machine, inputs["model_info"], settings, inputs["config"], tokens)
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
    inputs = prepare_inputs(Path(workdir).resolve(), 4 * (steps + warmup))
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
    ap.add_argument("--model", default="small", choices=list(SIZES))
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--vllm", action="store_true", help="both sides sample with vLLM (GPU, vllm installed)")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2,
                    help="torch threads per side (1 is steadier when other jobs load the cores)")
    ap.add_argument("--ablation", action="store_true",
                    help="vlalign only: one run per forward/prefill variant (ABLATION), report to --json")
    a = ap.parse_args()
    if a.ablation:
        print(json.dumps(run_ablation(a.json, a.workdir, steps=a.steps or 4, warmup=a.warmup or 1, threads=a.threads),
                         indent=2))
    else:
        print(json.dumps(run(a.json, a.workdir, steps=a.steps, warmup=a.warmup, threads=a.threads, size=a.model,
                             device=a.device, vllm=a.vllm), indent=2))
