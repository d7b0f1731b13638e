"""TRL 1.16 GRPOTrainer side of the GRPO benchmark (run by grpo_vs_trl.py in its own process).

Rows: ``{prompt: [user msg], image: PIL, scene_json: str}``; TRL inserts the image into the user turn.
One step = one generation round: per_device_train_batch_size 16 completions = 4 prompts × 4 generations
(steps_per_generation 1), 16 new tokens, β 0.04 (so TRL keeps a reference model copy), no vLLM.
The reward is vlalign's Shapes rule verifier (``shapes_rules``) wrapped as a TRL reward function, so
both sides score with the very same code.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import StepClock, gpu_memory, memory_report, read_rows, read_spec, rss_snapshot, write_result
from phases import PhaseClock, model_classes


def main() -> None:
    spec, out = read_spec()
    import torch

    torch.set_num_threads(spec["threads"])
    from datasets import Dataset
    from PIL import Image
    from transformers import AutoProcessor
    from trl import GRPOConfig, GRPOTrainer

    from vlalign.rewards import build_source
    from vlalign.rewards.base import Sample

    phases = PhaseClock()
    phases.install(model_classes(spec["model"]))
    baseline = rss_snapshot()["hwm_mb"]
    clock = StepClock()
    clock.start()

    total = spec["warmup_steps"] + spec["steps"]
    path = Path(spec["prompts"])
    rows = []
    for r in read_rows(path, spec["num_prompts"] * total):
        rows.append({
            "prompt": [{"role": "user", "content": r["prompt"]}],
            "image": Image.open(path.parent / r["images"][0]).convert("RGB"),
            "scene_json": json.dumps(r["meta"]["scene"]),
        })
    dataset = Dataset.from_list(rows)
    verifier = build_source("shapes_rules")
    generated: list[int] = []

    def shapes_reward(prompts, completions, completion_ids, scene_json, **kwargs):
        """TRL reward function → vlalign's Shapes verifier (same scores as the vlalign side)."""
        generated.append(sum(len(ids) for ids in completion_ids))
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        samples = [Sample(images=[], prompt="Describe the image.", response=t, meta={"scene": json.loads(s)})
                   for t, s in zip(texts, scene_json, strict=True)]
        return verifier.score(samples).rewards.tolist()

    args = GRPOConfig(
        output_dir=str(Path(out).parent / "trl_grpo_out"),
        per_device_train_batch_size=spec["num_prompts"] * spec["group_size"],
        gradient_accumulation_steps=1,
        num_generations=spec["group_size"],
        max_completion_length=spec["max_new_tokens"],
        temperature=1.0,
        beta=spec["beta"],
        use_vllm=bool(spec.get("vllm")),
        vllm_mode="colocate",  # one GPU: vLLM shares it with training
        vllm_gpu_memory_utilization=0.3,
        vllm_max_model_length=2048,
        max_steps=total,
        learning_rate=spec["learning_rate"],
        lr_scheduler_type="constant",
        warmup_steps=0,
        max_grad_norm=1.0,
        gradient_checkpointing=False,
        bf16=False,
        use_cpu=spec.get("device", "cpu") == "cpu",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        dataloader_num_workers=0,
        seed=spec["seed"],
        disable_tqdm=True,
        model_init_kwargs={"dtype": getattr(torch, spec.get("dtype", "float32"))},  # weights in it, no autocast
    )
    processor = AutoProcessor.from_pretrained(spec["model"])
    # TRL pads prompts on the left itself, but Qwen2-VL's M-RoPE index (get_rope_index) reads the attention
    # mask the processor builds; with a right-padding tokenizer the two disagree and the forward fails.
    processor.tokenizer.padding_side = "left"
    trainer = GRPOTrainer(model=spec["model"], reward_funcs=shapes_reward, args=args, train_dataset=dataset,
                          processing_class=processor)
    trainer.train()
    trainer.save_model(str(Path(out).parent / "trl_grpo_out" / "final"))
    e2e = clock.stop()

    durations = clock.step_times()
    warm = spec["warmup_steps"]
    measured = durations[warm:]
    cpu_measured = [b - a for a, b in zip(clock.cpu[warm - 1 : -1], clock.cpu[warm:], strict=True)] if warm else []
    logs = [h for h in trainer.state.log_history if "reward" in h]
    result = {
        "framework": "trl",
        "s_per_step": round(sum(measured) / len(measured), 3),
        "generated_tokens_per_s": round(sum(generated[warm:]) / sum(measured), 2),
        "step_times_s": [round(d, 3) for d in durations],
        "cpu_s_per_step": round(sum(cpu_measured) / len(cpu_measured), 3) if cpu_measured else None,
        "step_cpu_s": [round(c, 3) for c in cpu_measured],
        "generated_tokens_per_step": generated,
        "reward_mean": [h.get("reward") for h in logs],
        **e2e,
        "phases": phases.report(e2e["e2e_s"], e2e["e2e_cpu_s"]),
        "reference": "second model copy (beta > 0)",
        **memory_report(baseline, rss_snapshot()["hwm_mb"]),
        **gpu_memory(),
    }
    write_result(out, result)


if __name__ == "__main__":
    main()
