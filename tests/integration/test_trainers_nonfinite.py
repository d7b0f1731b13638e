"""A non-finite step behaves the same in DPO and in RL (GRPO): the update is skipped — neither the
optimizer NOR the learning-rate schedule steps —, one ``nonfinite_skip`` event row names the step's rows,
no metrics row or checkpoint is written for it, the run's ``skipped_steps`` counts it, and
``max_consecutive_nonfinite`` skips in a row raise the same :class:`NonFiniteError` with the same message."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_rl_helpers import prompt_file, rl_overrides

from vlalign.rewards.base import REWARD_SOURCES, RewardOutput
from vlalign.trainers.logging import read_metrics
from vlalign.trainers.step import NonFiniteError

LR = 1e-2


class NaNOnCalls:
    """Toy reward: spaces share of the response, NaN on the listed call numbers (1-based; "all" = always)."""

    def __init__(self, calls: list[int] | str = (2,)) -> None:
        self.name, self.calls, self.n = "test_nan_reward", calls, 0

    def score(self, samples):
        self.n += 1
        bad = self.calls == "all" or self.n in self.calls
        vals = [float("nan") if bad else s.response.count(" ") / max(1, len(s.response)) for s in samples]
        return RewardOutput(rewards=torch.tensor(vals))


if "test_nan_reward" not in REWARD_SOURCES:
    REWARD_SOURCES.register("test_nan_reward")(NaNOnCalls)


def _dpo(model, data, out, poison, monkeypatch, **kw):
    from vlalign.trainers import dpo
    from vlalign.trainers.configs import DPOConfig

    real, calls = dpo.dpo_micro_step, []

    def step(model, batch, objective, hparams, reference, extra, sft_weight, forward, replay=None, margins=None):
        calls.append(1)
        res = real(model, batch, objective, hparams, reference, extra, sft_weight, forward, replay, margins)
        if poison == "all" or len(calls) in poison:
            res.loss_sum = res.loss_sum * float("nan")
        return res

    monkeypatch.setattr(dpo, "dpo_micro_step", step)
    cfg = DPOConfig.model_validate({
        "output_dir": str(out), "model": {"name_or_path": str(model)}, "progress": False, "seed": 0,
        "data": {"train": str(data), "max_length": 128}, "per_device_batch_size": 2, "max_steps": 4,
        "learning_rate": LR, "lr_scheduler": "linear", "save_steps": 1, **kw,
    })
    return dpo.train_dpo(cfg)


def _grpo(model, data, out, poison, monkeypatch, **kw):
    from vlalign.trainers.grpo import GRPOConfig, train_grpo

    cfg = GRPOConfig.model_validate(rl_overrides(
        out.parent, model, prompt_file(out.parent / "prompts"), output_dir=str(out), max_steps=4, learning_rate=LR,
        lr_scheduler="linear", save_steps=1, reward={"name": "test_nan_reward", "kwargs": {"calls": poison}}, **kw,
    ))
    return train_grpo(cfg)


RUNS = {"dpo": _dpo, "grpo": _grpo}


@pytest.mark.parametrize("trainer", ["dpo", "grpo"])
def test_a_nonfinite_step_is_skipped_the_same_way(trainer, tiny_model_dir, trainer_data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    summary = RUNS[trainer](tiny_model_dir("llava"), trainer_data[0], out, [2], monkeypatch)
    assert summary["skipped_steps"] == 1 and summary["steps"] == 4
    rows = read_metrics(out)
    events = [r for r in rows if r.get("event") == "nonfinite_skip"]
    assert [e["step"] for e in events] == [2] and events[0]["row_ids"]
    assert not torch.isfinite(torch.tensor(events[0]["loss"]))
    logged = [r for r in rows if "event" not in r]
    assert [r["step"] for r in logged] == [1, 3, 4]  # no metrics row for the skipped step
    # linear schedule over 4 updates: after n applied updates lr = LR·(4 − n)/4. The skipped step applied
    # nothing and did not step the schedule: steps 1, 3, 4 had 1, 2, 3 applied updates.
    assert [r["lr"] for r in logged] == pytest.approx([LR * 3 / 4, LR * 2 / 4, LR * 1 / 4])
    # save_steps 1: checkpoints after the applied steps 1 and 3, none for the skipped step 2 (4 is the end)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-3"]
    assert summary["skipped_steps"] == read_metrics(out)[-1]["skipped_steps"]


@pytest.mark.parametrize("trainer", ["dpo", "grpo"])
def test_consecutive_nonfinite_steps_abort_the_same_way(trainer, tiny_model_dir, trainer_data, tmp_path, monkeypatch):
    with pytest.raises(NonFiniteError, match=r"^2 consecutive steps had a non-finite loss or gradient \(last rows: "):
        RUNS[trainer](tiny_model_dir("llava"), trainer_data[0], tmp_path / "run", "all", monkeypatch,
                      max_consecutive_nonfinite=2)
    assert not list((tmp_path / "run").glob("checkpoint-*"))
