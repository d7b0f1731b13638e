"""Runs a list of training jobs in this process, one after the other: ``python worker.py jobs.json``.

Started once under ``accelerate launch`` (2 CPU processes, DDP or FSDP) so that every trainer's
2-process run shares one interpreter start and one process-group set-up; the tests compare each
job's metrics with the same job run on 1 process. A job is ``{"kind": "sft", "config": {...}}``.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
import test_rl_helpers  # noqa: F401  (registers the toy reward sources the RL jobs score with)

# kind -> (module, config class, train function)
TRAINERS = {
    "sft": ("vlalign.trainers.sft", "SFTConfig", "train_sft"),
    "dpo": ("vlalign.trainers.dpo", "DPOConfig", "train_dpo"),
    "rm": ("vlalign.trainers.reward_model", "RewardModelConfig", "train_reward_model"),
    "cost": ("vlalign.trainers.reward_model", "CostModelConfig", "train_cost_model"),
    "grpo": ("vlalign.trainers.grpo", "GRPOConfig", "train_grpo"),
    "rloo": ("vlalign.trainers.rloo", "RLOOConfig", "train_rloo"),
    "ppo": ("vlalign.trainers.ppo", "PPOConfig", "train_ppo"),
    "safe_ppo": ("vlalign.trainers.safe_ppo", "SafePPOConfig", "train_safe_ppo"),
}


def run_job(kind: str, config: dict) -> dict:
    import importlib

    module, cls_name, fn_name = TRAINERS[kind]
    mod = importlib.import_module(module)
    cfg = getattr(mod, cls_name).model_validate(config)
    return getattr(mod, fn_name)(cfg)


def main(path: str) -> None:
    jobs = json.loads(Path(path).read_text())
    for job in jobs:
        try:
            run_job(job["kind"], job["config"])
        except BaseException:  # noqa: BLE001 - any failure must end this process at once
            traceback.print_exc()
            sys.stderr.flush()
            os._exit(1)  # the launcher then stops the other process instead of leaving it in a collective


if __name__ == "__main__":
    main(sys.argv[1])
