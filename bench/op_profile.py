"""Which operators a vlalign DPO step spends its time in (torch.profiler), on the benchmark's rows.

One micro-batch of the benchmark's pairs through vlalign's pair forward (shared prefix by default),
the DPO loss against fixed reference log-probs, backward and a fused AdamW step, repeated; the last
``--steps`` are profiled. Prints the top operators by self CPU time, grouped into matmuls, attention,
the output layer, elementwise and the rest, with their share of the step: where the gap between the
useful FLOP/s and the matmul peak comes from.

Run: ``python bench/op_profile.py --workdir runs/bench --model bench-mini`` (after ``vlalign bench dpo
--model bench-mini`` built the model and rows there); ``--json`` writes the table.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

GROUPS = {  # first matching substring of the operator name -> group
    "attention": ("scaled_dot_product", "flash_attention", "_efficient_attention", "softmax"),
    "matmul": ("addmm", "mm", "bmm", "matmul", "linear", "conv"),
    "optimizer": ("_fused_adamw", "adam"),
    "copy / layout": ("copy_", "contiguous", "clone", "cat", "index", "gather", "scatter", "masked", "to", "empty",
                      "zero", "fill", "stack", "where", "view", "reshape", "transpose", "permute", "expand"),
    "elementwise": ("mul", "add", "sub", "div", "pow", "rsqrt", "mean", "silu", "gelu", "exp", "log", "sum", "neg",
                    "sigmoid", "tanh", "cos", "sin", "max", "amax"),
}


def group_of(name: str) -> str:
    short = name.removeprefix("aten::")
    for group, keys in GROUPS.items():
        if any(short == k or short.startswith(k) or k in short for k in keys):
            return group
    return "other"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path("runs/bench"))
    ap.add_argument("--model", default="bench-mini")
    ap.add_argument("--family", default="qwen2_vl")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--forward", default="auto")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vlalign.data.collate import CollateConfig, EncodedDataset
    from vlalign.data.validate import load_records
    from vlalign.models.shared_prefix import pick_pair_forward

    torch.set_num_threads(args.threads)
    workdir = args.workdir.resolve()
    model_dir = workdir / f"{args.model}_{args.family}"
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32).train()
    processor = AutoProcessor.from_pretrained(model_dir)
    records = load_records(workdir / f"pairs_{args.family}_{args.model}.jsonl").records
    dataset = EncodedDataset(records, processor, CollateConfig(max_length=1024), "pair")
    name, forward, _ = pick_pair_forward(args.forward, model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=True)
    B = args.batch_size

    def step(i: int) -> None:
        batch = dataset.batch(list(range(i * B, (i + 1) * B)))
        logps, _ = forward(model, batch.inputs, batch.response_mask, B)  # (2B, T)
        seq = logps.sum(-1)
        margin = (seq[:B] - seq[B:]) - (seq[:B] - seq[B:]).detach()  # reference = the policy at this step
        loss = -torch.nn.functional.logsigmoid(0.1 * margin).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step(0)  # warm-up
    faults0, cpu0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.process_time()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for i in range(1, 1 + args.steps):
            step(i)
        wall = (time.perf_counter() - t0) / args.steps
    cpu = (time.process_time() - cpu0) / args.steps
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0) / args.steps
    rows = [(e.key, e.self_cpu_time_total / 1e6 / args.steps, e.count // args.steps) for e in prof.key_averages()]
    total = sum(r[1] for r in rows)
    groups: dict[str, float] = {}
    for key, sec, _ in rows:
        groups[group_of(key)] = groups.get(group_of(key), 0.0) + sec
    rows.sort(key=lambda r: -r[1])
    print(f"forward={name}  wall/step {wall:.2f} s  CPU/step {cpu:.2f} s  page faults/step {faults:.0f}  "
          f"profiled self CPU/step {total:.2f} s (threads summed over ops)")
    print("| group | self CPU s/step | share |\n|---|---|---|")
    for g, sec in sorted(groups.items(), key=lambda kv: -kv[1]):
        print(f"| {g} | {sec:.3f} | {sec / total:.1%} |")
    print("\n| operator | self CPU s/step | calls/step | share |\n|---|---|---|---|")
    for key, sec, n in rows[:20]:
        print(f"| {key} | {sec:.3f} | {n} | {sec / total:.1%} |")
    if args.json:
        out: dict[str, Any] = {"forward": name, "wall_s_per_step": wall, "cpu_s_per_step": cpu,
                               "page_faults_per_step": faults, "groups": groups,
                               "top": [{"op": k, "self_cpu_s": s, "calls": n} for k, s, n in rows[:40]]}
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
