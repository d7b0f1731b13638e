"""Monitors and held-out evaluation in the supervised loops: SFT and DPO evaluate every ``eval_steps`` on
held-out rows (a file or a seeded fraction), and DPO's preference overfitting — train accuracy up,
held-out accuracy down — is detected and acted on (stop, rollback). The held-out pairs are the training
pairs with chosen and rejected swapped, so held-out accuracy falls exactly as train accuracy rises:
a constructed, deterministic case of the failure mode."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vlalign.config import load_config
from vlalign.trainers.configs import DPOConfig, SFTConfig
from vlalign.trainers.logging import read_metrics

OVERFIT = {"name": "preference_overfit", "kwargs": {"window": 3, "train_high": 0.9, "min_drop": 0.05}}


def _swapped(pref: Path, out: Path) -> Path:
    rows = [json.loads(line) for line in pref.read_text().splitlines()]
    for r in rows:
        r["chosen"], r["rejected"] = r["rejected"], r["chosen"]
        r.pop("rejected_segments", None)
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def _dpo(model, pref, out, eval_file, action, **kw) -> DPOConfig:
    return DPOConfig.model_validate({
        "output_dir": str(out), "model": {"name_or_path": str(model)}, "progress": False, "seed": 0,
        "data": {"train": str(pref), "max_length": 128, "eval": str(eval_file)}, "per_device_batch_size": 8,
        "max_steps": 12, "learning_rate": 2e-3, "lr_scheduler": "constant", "eval_steps": 1,
        "monitors": [{**OVERFIT, "action": action}], **kw,
    })


@pytest.fixture(scope="module")
def swapped(trainer_data, tmp_path_factory):
    folder = trainer_data[0].parent  # next to the images the rows point at
    return _swapped(trainer_data[0], folder / "swapped_eval.jsonl")


def test_dpo_preference_overfit_is_detected_and_stops(tiny_model_dir, trainer_data, swapped, tmp_path):
    from vlalign.trainers.dpo import train_dpo

    summary = train_dpo(_dpo(tiny_model_dir("llava"), trainer_data[0], tmp_path, swapped, "stop"))
    assert summary["stop_reason"] and "preference_overfit" in summary["stop_reason"], summary
    assert summary["steps"] < 12 and summary["alerts"][0]["monitor"] == "preference_overfit"
    rows = [r for r in read_metrics(tmp_path) if "eval/accuracy" in r]
    assert len(rows) == summary["steps"]  # evaluated every step
    assert rows[-1]["accuracy"] >= 0.9 and rows[-1]["eval/accuracy"] < rows[0]["eval/accuracy"]
    assert any(r.get("event") == "monitor" and r["monitor"] == "preference_overfit" for r in read_metrics(tmp_path))
    assert (tmp_path / "final" / "model.safetensors").is_file()


def test_dpo_preference_overfit_rollback_restores_the_last_checkpoint(tiny_model_dir, trainer_data, swapped, tmp_path):
    from vlalign.trainers.dpo import train_dpo

    summary = train_dpo(_dpo(tiny_model_dir("llava"), trainer_data[0], tmp_path, swapped, "rollback", save_steps=1,
                             save_total_limit=3))
    fired = summary["steps"]
    assert f"weights restored from {tmp_path / f'checkpoint-{fired - 1}'}" in summary["stop_reason"]
    from transformers import AutoModelForImageTextToText

    final = AutoModelForImageTextToText.from_pretrained(tmp_path / "final").state_dict()
    saved = load_file(tmp_path / f"checkpoint-{fired - 1}" / "model.safetensors")  # model.state_dict() names
    assert saved.keys() <= final.keys() and all(torch.equal(final[k], saved[k]) for k in saved)


def test_sft_eval_fraction_holds_rows_out_and_logs_eval_loss(tiny_model_dir, trainer_data, tmp_path):
    from vlalign.trainers.sft import train_sft

    cfg = SFTConfig.model_validate({
        "output_dir": str(tmp_path), "model": {"name_or_path": str(tiny_model_dir("llava"))}, "progress": False,
        "data": {"train": str(trainer_data[1]), "max_length": 128, "eval_fraction": 0.25},
        "per_device_batch_size": 2, "num_epochs": 1, "learning_rate": 2e-3, "eval_steps": 2,
    })
    summary = train_sft(cfg)
    # 8 rows, 2 held out → 6 training rows, batches of 2 → 3 steps per epoch; evaluated at steps 2 and 3 (the end)
    assert summary["steps"] == 3
    evals = [r for r in read_metrics(tmp_path) if "eval/loss" in r]
    assert [r["step"] for r in evals] == [2, 3]
    assert all(r["eval/loss"] > 0 for r in evals)


def test_monitors_is_a_known_key_of_every_trainer_config():
    base = ["model.name_or_path=m", "data.train=d", "output_dir=o"]
    for cls in (DPOConfig, SFTConfig):
        cfg = load_config(cls, overrides=[*base, "monitors=[{name: preference_overfit, action: stop}]"])
        assert cfg.monitors[0].name == "preference_overfit" and cfg.monitors[0].action == "stop"
