"""vlalign side of the GRPO benchmark (run by grpo_vs_trl.py in its own process).

Public Python API: ``vlalign.trainers.grpo.train_grpo(GRPOConfig)``; one rollout = one step
(4 prompts × 4 samples, 16 new tokens, β 0.04, frozen full-copy reference, reward ``shapes_rules``),
with the library defaults ``forward: auto`` and ``rollout.prefill: auto`` (what a user gets).
Per-step wall and CPU time: at the end of every optimizer step (bench/common.py StepClock, the same
instrument as on the TRL side); generated tokens per step = samples × ``response/length_mean``.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import StepClock, gpu_memory, memory_report, read_spec, rss_snapshot, write_result
from phases import PhaseClock, model_classes
from vlalign_dpo_worker import grad_phase


def main() -> None:
    spec, out = read_spec()
    import torch

    torch.set_num_threads(spec["threads"])
    import transformers  # noqa: F401  (part of the import baseline, as on the TRL side)

    from vlalign.models import group_prefix, logprobs, shared_prefix
    from vlalign.rollout import generate
    from vlalign.trainers.grpo import GRPOConfig, train_grpo
    from vlalign.trainers.logging import read_metrics

    phases = PhaseClock()
    heads = [(m, "head_logprobs", grad_phase) for m in (logprobs, shared_prefix, group_prefix)]
    phases.install(model_classes(spec["model"]), [(generate, "prefill_groups", "generation"), *heads])
    baseline = rss_snapshot()["hwm_mb"]

    run_dir = Path(out).parent / "vlalign_grpo_out"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    total = spec["warmup_steps"] + spec["steps"]
    cfg = GRPOConfig(
        output_dir=str(run_dir),
        seed=spec["seed"],
        model={"name_or_path": spec["model"], "dtype": spec.get("dtype", "float32"), "gradient_checkpointing": False},
        data={"train": spec["prompts"], "max_length": spec["max_length"]},
        per_device_batch_size=spec["num_prompts"],
        max_steps=total,
        learning_rate=spec["learning_rate"],
        lr_scheduler="constant",
        mixed_precision="no",
        rollout={"num_samples": spec["group_size"], "max_new_tokens": spec["max_new_tokens"], "temperature": 1.0,
                 "prefill": spec.get("rollout_prefill", "auto"), "backend": "vllm" if spec.get("vllm") else "hf",
                 "vllm_kwargs": {"gpu_memory_utilization": 0.3, "max_model_len": 2048}},  # as on the TRL side
        forward=spec.get("forward", "auto"),  # the ablation (grpo_vs_trl.py --ablation) sets these two
        reward={"name": "shapes_rules"},
        kl_coef=spec["beta"],
        reference="copy",
        logging_steps=1,
        progress=False,
        save_merged=False,
    )
    clock = StepClock()
    clock.start()
    train_grpo(cfg)
    e2e = clock.stop()

    rows = [r for r in read_metrics(run_dir) if "response/length_mean" in r]
    if len(rows) != total or len(clock.wall) != total:
        raise RuntimeError(f"expected {total} rollouts and optimizer steps in {run_dir}, found {len(rows)} and "
                           f"{len(clock.wall)}")
    durations = clock.step_times()
    warm = spec["warmup_steps"]
    samples = spec["num_prompts"] * spec["group_size"]
    gen_tokens = [samples * r["response/length_mean"] for r in rows]
    measured = durations[warm:]
    cpu = clock.cpu  # process CPU seconds at the end of each optimizer step
    cpu_measured = [b - a for a, b in zip(cpu[warm - 1 : -1], cpu[warm:], strict=True)] if warm else []
    result = {
        "framework": "vlalign",
        "s_per_step": round(sum(measured) / len(measured), 3),
        "generated_tokens_per_s": round(sum(gen_tokens[warm:]) / sum(measured), 2),
        "step_times_s": [round(d, 3) for d in durations],
        "cpu_s_per_step": round(sum(cpu_measured) / len(cpu_measured), 3) if cpu_measured else None,
        "step_cpu_s": [round(c, 3) for c in cpu_measured],
        "generated_tokens_per_step": gen_tokens,
        "reward_mean": [r.get("reward/mean") for r in rows],
        **e2e,
        "phases": phases.report(e2e["e2e_s"], e2e["e2e_cpu_s"]),
        "reference": "frozen full copy (reference=copy)",
        "forward": f"{cfg.forward} (shared_prefix = each group's prompt + image scored once)",
        "rollout_prefill": f"{cfg.rollout.prefill} (auto = prompt + image prefilled once per group, KV cache x K)",
        **memory_report(baseline, rss_snapshot()["hwm_mb"]),
        **gpu_memory(),
    }
    write_result(out, result)


if __name__ == "__main__":
    main()
