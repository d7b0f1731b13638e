"""``deterministic: true``: torch's deterministic algorithms and a fixed thread count are on while the run
trains (and the caller's settings come back after it), and two runs with the same seed end with
bit-identical weights."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from vlalign.trainers.configs import SFTConfig


def test_deterministic_runs_are_bit_identical_and_restore_the_process(tiny_model_dir, trainer_data, tmp_path,
                                                                        monkeypatch):
    from vlalign.trainers import sft

    seen = []
    real = sft.sft_micro_step

    def watching(model, batch, replay=None):
        seen.append((torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()))
        return real(model, batch, replay)

    monkeypatch.setattr(sft, "sft_micro_step", watching)
    before = (torch.are_deterministic_algorithms_enabled(), torch.get_num_threads())
    for name in ("a", "b"):
        sft.train_sft(SFTConfig.model_validate({
            "output_dir": str(tmp_path / name), "model": {"name_or_path": str(tiny_model_dir("llava"))},
            "data": {"train": str(trainer_data[1]), "max_length": 128}, "per_device_batch_size": 4,
            "max_steps": 3, "learning_rate": 2e-3, "progress": False, "seed": 11, "deterministic": True,
        }))
    assert seen and all(s == (True, 1) for s in seen)  # deterministic kernels, num_threads defaults to 1
    assert (torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()) == before
    a = load_file(tmp_path / "a" / "final" / "model.safetensors")
    b = load_file(tmp_path / "b" / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    start = load_file(tiny_model_dir("llava") / "model.safetensors")
    assert any(not torch.equal(a[k], start[k]) for k in a if k in start)  # it trained
