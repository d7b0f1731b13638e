"""Every supported family trains end to end through the real trainers (not only LLaVA):
SFT lowers its loss, and DPO starts at log 2 and lowers it, on Qwen2-VL and Idefics3 as well."""

from __future__ import annotations

import pytest

from vlalign.trainers.configs import DPOConfig, SFTConfig
from vlalign.trainers.logging import read_metrics

FAMILIES = ["qwen2_vl", "idefics3"]  # llava is covered in depth by test_trainers_sft/dpo


def _cfg(cls, model_dir, data_path, out, steps, lr, **extra):
    return cls.model_validate({**extra,
        "output_dir": str(out), "model": {"name_or_path": str(model_dir)},
        "data": {"train": str(data_path), "max_length": 128}, "per_device_batch_size": 8, "max_steps": steps,
        "learning_rate": lr, "lr_scheduler": "constant", "progress": False,
    })


@pytest.mark.parametrize("family", FAMILIES)
def test_sft_then_dpo_train_on_family(family, tiny_model_dir, trainer_data, tmp_path, learning):
    from vlalign.trainers.dpo import train_dpo
    from vlalign.trainers.sft import train_sft

    model = tiny_model_dir(family)
    train_sft(_cfg(SFTConfig, model, trainer_data[1], tmp_path / "sft", steps=4, lr=5e-3, seed=learning.seed))
    sft_losses = [r["loss"] for r in read_metrics(tmp_path / "sft")]
    # Seeds 0-4 x kernels AVX2 / default: SFT ratio 0.76 (qwen2_vl), 0.75 (idefics3); DPO 0.76, 0.70
    assert learning.below("SFT last / first loss", sft_losses[-1] / sft_losses[0], 1.0), sft_losses

    train_dpo(_cfg(DPOConfig, tmp_path / "sft" / "final", trainer_data[0], tmp_path / "dpo", steps=4, lr=1e-3,
                   beta=0.5, seed=learning.seed))
    dpo_losses = [r["loss"] for r in read_metrics(tmp_path / "dpo")]
    assert dpo_losses[0] == pytest.approx(0.693147, abs=1e-4)  # policy == reference at step 1
    assert learning.below("DPO last / first loss", dpo_losses[-1] / dpo_losses[0], 1.0), dpo_losses
