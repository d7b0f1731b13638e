"""TRL 1.16 DPOTrainer side of the DPO benchmark (run by dpo_vs_trl.py in its own process).

TRL's vision DPO takes conversational rows ``{images: [PIL], prompt: [user msg], chosen: [assistant
msg], rejected: [assistant msg]}`` and tokenizes + preprocesses images on the fly in its collator
(``DataCollatorForVisionPreference``). With full fine-tuning and no PEFT it builds a second model copy
as the reference; ``precompute_ref_log_probs`` is refused for vision datasets in 1.16, so the reference
forward runs every step.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    count_params,
    memory_report,
    read_rows,
    read_spec,
    rss_snapshot,
    steady_rate,
    write_result,
)


def main() -> None:
    spec, out = read_spec()
    import torch

    torch.set_num_threads(spec["threads"])
    from datasets import Dataset
    from PIL import Image
    from transformers import AutoProcessor, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    baseline = rss_snapshot()["hwm_mb"]  # import baseline: interpreter + torch + transformers + trl

    data_path = Path(spec["data"])
    n_rows = spec["batch_size"] * (spec["warmup_steps"] + spec["steps"])
    rows = []
    for row in read_rows(data_path, n_rows):
        images = [Image.open(data_path.parent / p).convert("RGB") for p in row["images"]]
        rows.append({
            "images": images,
            "prompt": [{"role": "user", "content": row["prompt"]}],
            "chosen": [{"role": "assistant", "content": row["chosen"]}],
            "rejected": [{"role": "assistant", "content": row["rejected"]}],
        })
    dataset = Dataset.from_list(rows)
    processor = AutoProcessor.from_pretrained(spec["model"])

    args = DPOConfig(
        output_dir=str(Path(out).parent / "trl_dpo_out"),
        per_device_train_batch_size=spec["batch_size"],
        gradient_accumulation_steps=1,
        max_steps=spec["warmup_steps"] + spec["steps"],
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
        use_cpu=True,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        dataloader_num_workers=0,
        seed=spec["seed"],
        disable_tqdm=True,
        model_init_kwargs={"dtype": torch.float32},
    )

    step_ends: list[float] = []
    cpu_ends: list[float] = []  # process CPU seconds (all threads), as on the vlalign side
    tokens: list[int] = []

    class StepClock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            step_ends.append(time.perf_counter())
            cpu_ends.append(time.process_time())

    trainer = DPOTrainer(model=spec["model"], args=args, train_dataset=dataset, processing_class=processor,
                         callbacks=[StepClock()])
    inner = trainer.data_collator

    def counting_collator(examples):
        batch = inner(examples)
        tokens.append(int(batch["attention_mask"].sum()))  # non-pad tokens of chosen + rejected rows
        return batch

    trainer.data_collator = counting_collator
    params = count_params(trainer.model)

    t0 = time.perf_counter()
    trainer.train()
    train_wall = time.perf_counter() - t0

    warm = spec["warmup_steps"]
    logs = [h for h in trainer.state.log_history if "loss" in h]
    result = {
        "framework": "trl",
        "pairs_per_s": round(steady_rate(step_ends, spec["batch_size"], warm), 3),
        "pairs_per_cpu_s": round(steady_rate(cpu_ends, spec["batch_size"], warm), 4),
        "steps_measured": len(step_ends) - warm,
        "step_times_s": [round(b - a, 4) for a, b in zip([t0, *step_ends[:-1]], step_ends, strict=True)],
        "tokens_per_pair": sum(tokens[warm:]) / (spec["batch_size"] * len(tokens[warm:])) if len(tokens) > warm else None,
        "train_wall_s": round(train_wall, 2),
        "loss_first": logs[0]["loss"] if logs else None,
        "loss_last": logs[-1]["loss"] if logs else None,
        "reference": "second model copy, forward every step",
        **params,
        **memory_report(baseline, rss_snapshot()["hwm_mb"]),
    }
    write_result(out, result)


if __name__ == "__main__":
    main()
