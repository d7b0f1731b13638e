"""The memory floor of full fp32 fine-tuning with AdamW on the DPO benchmark's model, with no activations.

WHY: the DPO target (peak RSS ≤ 0.6 × TRL's) is a statement about what a trainer adds on top of what every
trainer must hold. This measures that floor directly in a fresh process: import torch + transformers, load
the benchmark's small LLaVA through the Auto class, give every parameter a gradient (``zeros_like``, as a
backward pass would) and take one fused AdamW step (which creates both moments). Nothing is run through the
model, so the peak is: interpreter + libraries + model code + weights + gradients + AdamW state.

Run: ``python bench/dpo_memory_floor.py --model runs/bench/small_llava --json bench/results/dpo_memory_floor.json``
(the model folder is the one ``vlalign bench dpo`` builds in its ``--workdir``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import rss_snapshot


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--json", type=Path, default=Path("bench/results/dpo_memory_floor.json"))
    a = ap.parse_args()
    import torch

    torch.set_num_threads(2)
    from transformers import AutoModelForImageTextToText

    steps = {"imports": rss_snapshot()["hwm_mb"]}
    model = AutoModelForImageTextToText.from_pretrained(a.model, dtype=torch.float32)
    steps["model_loaded"] = rss_snapshot()["hwm_mb"]
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.zeros_like(p)
    steps["gradients"] = rss_snapshot()["hwm_mb"]
    opt = torch.optim.AdamW(params, lr=1e-6, fused=True)
    opt.step()
    steps["adamw_step"] = rss_snapshot()["hwm_mb"]
    n = sum(p.numel() for p in params)
    report = {
        "what": "VmHWM (MiB) after each stage; no forward/backward, so no activations",
        "peak_rss_mb_by_stage": {k: round(v, 1) for k, v in steps.items()},
        "trainable_params": n,
        "fp32_state_mib": round(4 * n * 4 / 2**20, 1),  # weights + gradients + 2 AdamW moments
        "torch": torch.__version__,
    }
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
