"""vlalign side of the DPO benchmark (run by dpo_vs_trl.py in its own process).

Uses the public Python API (``vlalign.trainers.dpo.train_dpo`` with a ``DPOConfig``), so it measures
exactly what ``vlalign dpo --config ...`` runs: one epoch over the rows, reference log-probs scored once
into the on-disk cache before step 1 (inside the end-to-end time, outside the steady steps), the final
save included. The end-to-end clock starts right before ``train_dpo`` (after the imports, which are the
import baseline) and stops when it returns.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import StepClock, gpu_memory, memory_report, read_spec, rss_snapshot, steady_rate, write_result
from phases import PhaseClock, model_classes


def grad_phase(*args, **kwargs) -> str:
    import torch

    return "forward" if torch.is_grad_enabled() else "reference"


def on_every_load(transform) -> None:
    """Apply ``transform(hf_model)`` to every model the trainer loads (through the shared loader)."""
    from vlalign.models import load

    original = load.load_model

    def load_model(cfg, *args, **kwargs):
        loaded = original(cfg, *args, **kwargs)
        transform(loaded.model)
        return loaded

    load.load_model = load_model


def recompute_vision(model) -> None:
    """The "vlalign_lean" side: the vision tower recomputed in the backward pass (vlalign.models.recompute;
    what ``model.gradient_checkpointing: vision`` does once a trainer exposes it)."""
    from vlalign.models.recompute import recompute_vision_tower

    recompute_vision_tower(model)


def compile_layers(model) -> None:
    """``compile_layers`` in the spec: every decoder layer of the language model ``torch.compile``'d (regional
    compilation, dynamic shapes), so the elementwise chains between the GEMMs (RMSNorm, rotary, SiLU·mul,
    residual adds) become fused kernels (bench/compile_probe.py)."""
    from vlalign.models.freeze import find_part

    for layer in find_part(model, "language_model").layers:
        layer.compile(dynamic=True)


def main() -> None:
    spec, out = read_spec()
    import torch

    torch.set_num_threads(spec["threads"])
    import transformers  # noqa: F401  (part of the import baseline, as on the TRL side)

    from vlalign.data.collate import EncodedDataset
    from vlalign.models import group_prefix, logprobs, shared_prefix
    from vlalign.trainers.configs import DPOConfig
    from vlalign.trainers.dpo import train_dpo
    from vlalign.trainers.logging import read_metrics

    if spec.get("recompute_vision"):
        on_every_load(recompute_vision)
    if spec.get("compile_layers"):
        on_every_load(compile_layers)
    phases = PhaseClock()
    # output-layer log-probs run after the model call: forward (policy) or reference (no gradient)
    heads = [(m, "head_logprobs", grad_phase) for m in (logprobs, shared_prefix, group_prefix)]
    phases.install(model_classes(spec["model"]), [(EncodedDataset, "batch", "data"), *heads])
    baseline = rss_snapshot()["hwm_mb"]  # import baseline: interpreter + torch + transformers + vlalign + model code

    run_dir = Path(out).parent / "vlalign_dpo_out"
    if run_dir.exists():  # a stale metrics.jsonl or reference cache would falsify the timings
        shutil.rmtree(run_dir)
    cfg = DPOConfig(
        output_dir=str(run_dir),
        seed=spec["seed"],
        model={"name_or_path": spec["model"], "dtype": spec.get("dtype", "float32"), "gradient_checkpointing": False},
        data={"train": spec["data"], "limit": spec["rows"], "max_length": spec["max_length"]},
        per_device_batch_size=spec["batch_size"],
        gradient_accumulation_steps=1,
        num_epochs=1,
        max_steps=spec.get("max_steps"),  # None: one epoch (the max-batch probes stop after 2 steps)
        learning_rate=spec["learning_rate"],
        lr_scheduler="constant",
        max_grad_norm=1.0,
        mixed_precision="no",
        loss="dpo",
        beta=spec["beta"],
        reference={"batch_size": spec.get("reference_batch_size") or spec["batch_size"]},
        forward=spec.get("forward", "auto"),
        logging_steps=1,
        progress=False,
        save_steps=0,
        save_merged=False,
        release_freed_memory=spec.get("release_freed_memory", False),
    )
    clock = StepClock()
    clock.start()
    train_dpo(cfg)
    e2e = clock.stop()

    rows = [r for r in read_metrics(run_dir) if "loss" in r]
    warm = spec["warmup_steps"]
    steady = rows[warm:]
    result = {
        "framework": "vlalign",
        **e2e,
        "steps": len(clock.wall),
        "pairs": spec["rows"] if spec.get("max_steps") is None else spec["batch_size"] * spec["max_steps"],
        "pairs_per_s": round(steady_rate(clock.wall, spec["batch_size"], warm), 4) if len(clock.wall) > warm else None,
        "pairs_per_cpu_s": round(steady_rate(clock.cpu, spec["batch_size"], warm), 4) if len(clock.cpu) > warm else None,
        "step_times_s": clock.step_times(),
        "tokens_per_pair": sum(r["tokens_per_s"] * r["step_time_s"] for r in steady) / (spec["batch_size"] * len(steady))
        if steady else None,
        "loss_first": rows[0]["loss"] if rows else None,
        "loss_last": rows[-1]["loss"] if rows else None,
        "reference": "log-probs scored once before step 1 (on-disk cache), no second model",
        "recompute_vision": bool(spec.get("recompute_vision")),
        "compile_layers": bool(spec.get("compile_layers")),
        "phases": phases.report(e2e["e2e_s"], e2e["e2e_cpu_s"]),
        **memory_report(baseline, rss_snapshot()["hwm_mb"]),
        **gpu_memory(),
    }
    write_result(out, result)


if __name__ == "__main__":
    main()
