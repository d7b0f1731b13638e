"""TRL 1.16 DPOTrainer side of the DPO benchmark (run by dpo_vs_trl.py in its own process).

TRL's vision DPO takes conversational rows ``{images: [PIL], prompt: [user msg], chosen: [assistant
msg], rejected: [assistant msg]}`` and tokenizes + preprocesses images on the fly in its collator
(``DataCollatorForVisionPreference``). With full fine-tuning and no PEFT it builds a second model copy
as the reference; ``precompute_ref_log_probs`` is refused for vision datasets in 1.16, so the reference
forward runs every step (once per pair and epoch, as vlalign's cache pass). Its output layer is TRL's
own fused, tiled LM head on the completion tokens only (``add_fused_lm_head``).

End to end = from building the ``DPOTrainer`` (model and reference loading, dataset preparation) to the
end of ``train()`` and ``save_model()``, one epoch; the import baseline is measured before.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    StepClock,
    count_params,
    gpu_memory,
    memory_report,
    read_rows,
    read_spec,
    rss_snapshot,
    steady_rate,
    write_result,
)
from phases import PhaseClock, model_classes


def main() -> None:
    spec, out = read_spec()
    import torch

    torch.set_num_threads(spec["threads"])
    from datasets import Dataset
    from PIL import Image
    from transformers import AutoProcessor
    from trl import DPOConfig, DPOTrainer

    phases = PhaseClock()
    phases.install(model_classes(spec["model"]))
    baseline = rss_snapshot()["hwm_mb"]  # import baseline: interpreter + torch + transformers + trl + model code

    clock = StepClock()
    clock.start()
    data_path = Path(spec["data"])
    rows = []
    for row in read_rows(data_path, spec["rows"]):
        images = [Image.open(data_path.parent / p).convert("RGB") for p in row["images"]]
        rows.append({
            "images": images,
            "prompt": [{"role": "user", "content": row["prompt"]}],
            "chosen": [{"role": "assistant", "content": row["chosen"]}],
            "rejected": [{"role": "assistant", "content": row["rejected"]}],
        })
    dataset = Dataset.from_list(rows)
    processor = AutoProcessor.from_pretrained(spec["model"])
    out_dir = Path(out).parent / "trl_dpo_out"

    args = DPOConfig(
        output_dir=str(out_dir),
        per_device_train_batch_size=spec["batch_size"],
        gradient_accumulation_steps=1,
        num_train_epochs=1,
        max_steps=spec.get("max_steps") or -1,  # -1: one epoch (the max-batch probes stop after 2 steps)
        learning_rate=spec["learning_rate"],
        lr_scheduler_type="constant",
        warmup_steps=0,
        optim="adamw_torch_fused",  # TRL's default on torch >= 2.8, and the kernel vlalign's AdamW uses
        weight_decay=0.0,
        max_grad_norm=1.0,
        beta=spec["beta"],
        loss_type=["sigmoid"],
        max_length=spec["max_length"],
        precompute_ref_log_probs=False,  # refused for vision datasets in TRL 1.16
        gradient_checkpointing=False,
        bf16=False,
        fp16=False,
        use_cpu=spec.get("device", "cpu") == "cpu",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        dataloader_num_workers=0,
        seed=spec["seed"],
        disable_tqdm=True,
        model_init_kwargs={"dtype": getattr(torch, spec.get("dtype", "float32"))},  # weights in it, no autocast
    )
    tokens: list[int] = []
    trainer = DPOTrainer(model=spec["model"], args=args, train_dataset=dataset, processing_class=processor)
    inner = phases.timed("data", trainer.data_collator)

    def counting_collator(examples):
        batch = inner(examples)
        tokens.append(int(batch["attention_mask"].sum()))  # non-pad tokens of chosen + rejected rows
        return batch

    trainer.data_collator = counting_collator
    params = count_params(trainer.model)
    trainer.train()
    if spec.get("max_steps") is None:
        trainer.save_model(str(out_dir / "final"))
    e2e = clock.stop()

    warm = spec["warmup_steps"]
    logs = [h for h in trainer.state.log_history if "loss" in h]
    result = {
        "framework": "trl",
        **e2e,
        "steps": len(clock.wall),
        "pairs": spec["rows"] if spec.get("max_steps") is None else spec["batch_size"] * spec["max_steps"],
        "pairs_per_s": round(steady_rate(clock.wall, spec["batch_size"], warm), 4) if len(clock.wall) > warm else None,
        "pairs_per_cpu_s": round(steady_rate(clock.cpu, spec["batch_size"], warm), 4) if len(clock.cpu) > warm else None,
        "step_times_s": clock.step_times(),
        "tokens_per_pair": sum(tokens[warm:]) / (spec["batch_size"] * len(tokens[warm:])) if len(tokens) > warm else None,
        "loss_first": logs[0]["loss"] if logs else None,
        "loss_last": logs[-1]["loss"] if logs else None,
        "reference": "second model copy, forward every step",
        "phases": phases.report(e2e["e2e_s"], e2e["e2e_cpu_s"]),
        **params,
        **memory_report(baseline, rss_snapshot()["hwm_mb"]),
        **gpu_memory(),
    }
    write_result(out, result)


if __name__ == "__main__":
    main()
