"""vlalign side of the DPO benchmark (run by dpo_vs_trl.py in its own process).

Uses the public Python API (``vlalign.trainers.dpo.train_dpo`` with a ``DPOConfig``), so it measures
exactly what ``vlalign dpo --config ...`` runs, reference log-prob cache included: the cache is built
once before the first step (its time is in ``train_wall_s`` and ``first_step_end_s``, not in the steady-state
pairs/s), which is the design choice being benchmarked.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import memory_report, read_spec, rss_snapshot, steady_rate, write_result


def main() -> None:
    spec, out = read_spec()
    import torch

    torch.set_num_threads(spec["threads"])
    import transformers  # noqa: F401  (part of the import baseline, as on the TRL side)

    from vlalign.trainers import common as trainer_common
    from vlalign.trainers.configs import DPOConfig
    from vlalign.trainers.dpo import train_dpo
    from vlalign.trainers.logging import read_metrics

    # CPU seconds (all threads) at the end of every optimizer step: on a shared machine the CPU time a
    # step needed varies far less with the other jobs' load than its wall-clock time does.
    cpu_ends: list[float] = []
    real_step = trainer_common.run_optimizer_step

    def timed_step(*args, **kwargs):
        out = real_step(*args, **kwargs)
        cpu_ends.append(time.process_time())
        return out

    trainer_common.run_optimizer_step = timed_step

    baseline = rss_snapshot()["hwm_mb"]  # import baseline: interpreter + torch + transformers + vlalign

    run_dir = Path(out).parent / "vlalign_dpo_out"
    total = spec["warmup_steps"] + spec["steps"]
    cfg = DPOConfig(
        output_dir=str(run_dir),
        seed=spec["seed"],
        model={"name_or_path": spec["model"], "dtype": "float32", "gradient_checkpointing": False},
        data={"train": spec["data"], "limit": spec["batch_size"] * total, "max_length": spec["max_length"]},
        per_device_batch_size=spec["batch_size"],
        gradient_accumulation_steps=1,
        max_steps=total,
        learning_rate=spec["learning_rate"],
        lr_scheduler="constant",
        max_grad_norm=1.0,
        mixed_precision="no",
        loss="dpo",
        beta=spec["beta"],
        logging_steps=1,
        progress=False,
        save_steps=0,
        save_merged=False,
        release_freed_memory=spec.get("release_freed_memory", False),  # the "vlalign_lean" side sets it
    )
    if run_dir.exists():  # a stale metrics.jsonl or reference cache would falsify the timings
        import shutil

        shutil.rmtree(run_dir)
    t0 = time.time()
    train_dpo(cfg)
    train_wall = time.time() - t0

    rows = [r for r in read_metrics(run_dir) if "loss" in r and "time_s" in r]
    if len(rows) != total:
        raise RuntimeError(f"expected {total} logged steps in {run_dir}/metrics.jsonl, found {len(rows)}")
    step_ends = [r["time_s"] for r in rows]  # seconds since the logger started, one per optimizer step
    warm = spec["warmup_steps"]
    steady = rows[warm:]
    tokens = sum(r["tokens_per_s"] * r["step_time_s"] for r in steady)
    result = {
        "framework": "vlalign",
        "pairs_per_s": round(steady_rate(step_ends, spec["batch_size"], warm), 3),
        "pairs_per_cpu_s": round(steady_rate(cpu_ends, spec["batch_size"], warm), 4),
        "steps_measured": len(steady),
        "step_times_s": [round(b - a, 4) for a, b in zip([0.0, *step_ends[:-1]], step_ends, strict=True)],
        "tokens_per_pair": tokens / (spec["batch_size"] * len(steady)),
        "train_wall_s": round(train_wall, 2),
        "first_step_end_s": step_ends[0],  # reference cache + step 1, from the logger's start
        "loss_first": rows[0]["loss"],
        "loss_last": rows[-1]["loss"],
        "reference": "log-probs precomputed once (on-disk cache), no second model",
        **memory_report(baseline, rss_snapshot()["hwm_mb"]),
    }
    write_result(out, result)


if __name__ == "__main__":
    main()
