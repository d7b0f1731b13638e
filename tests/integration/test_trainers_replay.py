"""Replay of SFT rows beside the training data (``replay:`` in SFT and DPO configs).

Checked against independent computations: the logged replay NLL equals the full-logits NLL of the
replay rows the step's training rows map to; DPO's loss rises by exactly weight × that NLL; SFT's loss
is the token-mean NLL over the batch's rows and their replay rows together; 4×2 accumulation equals 1×8;
a replay file without reference answers fails naming the file and rows.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from vlalign.trainers.configs import DPOConfig, SFTConfig
from vlalign.trainers.logging import read_metrics


@pytest.fixture(scope="module")
def llava(tiny_model_dir):
    return tiny_model_dir("llava")


@pytest.fixture(scope="module")
def replay_file(trainer_data, tmp_path_factory):
    """6 yes/no rows on the trainer data's images (another task than the pairs' colour captions)."""
    rows = []
    for i, line in enumerate(trainer_data[1].read_text().splitlines()[:6]):
        r = json.loads(line)
        colour = r["reference"].split()[-1].rstrip(".")
        asked = colour if i % 2 == 0 else "purple"
        rows.append({"id": f"yn{i}", "images": [str(trainer_data[1].parent / r["images"][0])],
                     "prompt": f"Is the square {asked}?", "reference": "Yes." if asked == colour else "No.", "meta": {}})
    path = tmp_path_factory.mktemp("replay") / "yes_no.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def cfg(cls, model_dir, data_path, out, **kw):
    base = {"output_dir": str(out), "model": {"name_or_path": str(model_dir)},
            "data": {"train": str(data_path), "max_length": 128}, "per_device_batch_size": 8, "max_steps": 1,
            "learning_rate": 1e-3, "lr_scheduler": "constant", "progress": False, "save_merged": False}
    return cls.model_validate({**base, **kw})


def replay_rows_of_step0(model_dir, replay_path, n_train, seed=0, global_batch=8, rows=None):
    """The replay rows step 0 trains with (or those of training rows ``rows``), and each one's
    response-token NLL sum and count, computed through the full (B, T, V) logits — another code path
    than the trainer's."""
    from vlalign.data.collate import CollateConfig
    from vlalign.data.validate import load_records
    from vlalign.models.load import ModelConfig, load_model
    from vlalign.models.logprobs import response_logprobs_naive
    from vlalign.trainers.common import global_batch_indices
    from vlalign.trainers.replay import Replay

    loaded = load_model(ModelConfig(name_or_path=str(model_dir)))
    replay = Replay(load_records(str(replay_path)).records, loaded.processor, CollateConfig(128, None), 1.0, seed)
    rb = replay.batch(list(rows) if rows is not None else global_batch_indices(0, n_train, global_batch, seed))
    with torch.no_grad():
        logps = response_logprobs_naive(loaded.model, rb.inputs, rb.response_mask)  # (B, T)
    mask = rb.response_mask[:, :].float()
    return -(logps * mask).sum(-1), mask.sum(-1)  # (B,), (B,)


def test_replay_map_is_a_fixed_function_of_the_training_rows(llava, replay_file):
    from vlalign.data.collate import CollateConfig
    from vlalign.data.validate import load_records
    from vlalign.models.load import ModelConfig, load_model
    from vlalign.trainers.replay import Replay

    proc = load_model(ModelConfig(name_or_path=str(llava))).processor
    recs = load_records(str(replay_file)).records
    a, b = (Replay(recs, proc, CollateConfig(128, None), 1.0, seed=3) for _ in range(2))
    assert a.rows_for(range(12)) == b.rows_for(range(12))  # same seed, same map
    assert sorted(a.rows_for(range(6))) == list(range(6))  # a permutation of the 6 replay rows
    assert a.rows_for([7]) == a.rows_for([1])  # row r -> perm[r mod n]
    assert a.response_tokens([0, 1]) == int(a.batch([0, 1]).response_mask.sum())


def test_dpo_loss_gains_weight_times_the_replay_nll(llava, trainer_data, replay_file, tmp_path):
    from vlalign.trainers.dpo import train_dpo

    train_dpo(cfg(DPOConfig, llava, trainer_data[0], tmp_path / "plain"))
    train_dpo(cfg(DPOConfig, llava, trainer_data[0], tmp_path / "replay", replay={"train": str(replay_file), "weight": 0.5}))
    plain, with_replay = read_metrics(tmp_path / "plain")[0], read_metrics(tmp_path / "replay")[0]
    nll, count = replay_rows_of_step0(llava, replay_file, n_train=8)
    expected = float((nll / count).mean())  # one replay row per pair, token-mean NLL, mean over the 8 pairs
    assert with_replay["replay_nll"] == pytest.approx(expected, rel=1e-4)
    assert with_replay["loss"] - plain["loss"] == pytest.approx(0.5 * expected, rel=1e-4)
    assert plain["loss"] == pytest.approx(0.693147, abs=1e-4)  # the DPO part is untouched (policy == reference)


def test_sft_replay_rows_join_the_token_mean(llava, trainer_data, replay_file, tmp_path):
    from vlalign.data.collate import CollateConfig, EncodedDataset
    from vlalign.data.validate import load_records
    from vlalign.models.load import ModelConfig, load_model
    from vlalign.models.logprobs import response_logprobs_naive
    from vlalign.trainers.sft import train_sft

    train_sft(cfg(SFTConfig, llava, trainer_data[1], tmp_path, replay={"train": str(replay_file)}))
    logged = read_metrics(tmp_path)[0]["loss"]
    loaded = load_model(ModelConfig(name_or_path=str(llava)))
    ds = EncodedDataset(load_records(str(trainer_data[1])).records, loaded.processor, CollateConfig(128, None), "sft")
    b = ds.batch(range(8))  # the step's rows (all 8, in any order: the token mean does not care)
    with torch.no_grad():
        main = -(response_logprobs_naive(loaded.model, b.inputs, b.response_mask) * b.response_mask).sum()
    r_nll, r_count = replay_rows_of_step0(llava, replay_file, n_train=8)
    expected = (main + r_nll.sum()) / (b.response_mask.sum() + r_count.sum())
    assert logged == pytest.approx(float(expected), rel=1e-4)


def test_replay_with_accumulation_equals_one_big_batch(llava, trainer_data, replay_file, tmp_path):
    from vlalign.trainers.dpo import train_dpo

    common = {"optimizer": "sgd", "learning_rate": 0.5, "replay": {"train": str(replay_file)}, "reference": {"cache_dir": str(tmp_path / "ref")}}
    train_dpo(cfg(DPOConfig, llava, trainer_data[0], tmp_path / "a", **common))
    train_dpo(cfg(DPOConfig, llava, trainer_data[0], tmp_path / "b", per_device_batch_size=2, gradient_accumulation_steps=4,
                  **common))  # fmt: skip
    a, b = (load_file(tmp_path / d / "final" / "model.safetensors") for d in ("a", "b"))
    base = load_file(llava / "model.safetensors")
    moved = max((a[k] - base[k]).abs().max().item() for k in a)
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    assert moved > 1e-4 and diff < 1e-5 * max(1.0, moved), (diff, moved)


def test_replay_rows_without_reference_fail_naming_the_file(llava, trainer_data, tmp_path):
    from vlalign.trainers.dpo import train_dpo

    image = str(next((trainer_data[0].parent / "images").glob("*.png")))
    bad = tmp_path / "bad_replay.jsonl"
    bad.write_text(json.dumps({"id": "q1", "images": [image], "prompt": "Hi?", "meta": {}}) + "\n")
    with pytest.raises(ValueError, match=r"replay.train .*bad_replay.jsonl.*q1.*no `reference`"):
        train_dpo(cfg(DPOConfig, llava, trainer_data[0], tmp_path / "run", replay={"train": str(bad)}))
    bad.write_text(json.dumps({"id": "q2", "images": [], "prompt": "Hi?", "reference": "No.", "meta": {}}) + "\n")
    with pytest.raises(ValueError, match=r"bad_replay.jsonl:row 0: images"):  # validated like the main data
        train_dpo(cfg(DPOConfig, llava, trainer_data[0], tmp_path / "run2", replay={"train": str(bad)}))


# ------------------------------------------------------------------------------------------ RL (PPO-ptx)


def _rl_cfg(tmp, model, replay_path=None, **kw):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_rl_helpers import prompt_file, rl_overrides

    from vlalign.trainers.grpo import GRPOConfig

    extra = {"replay": {"train": str(replay_path), "weight": 2.0}} if replay_path else {}
    return GRPOConfig.model_validate(rl_overrides(tmp, model, prompt_file(tmp / "data"), **extra, **kw))


def test_grpo_loss_gains_weight_times_the_replay_nll(llava, replay_file, tmp_path):
    from vlalign.trainers.grpo import train_grpo

    plain = _rl_cfg(tmp_path / "plain", llava, max_steps=1)
    with_replay = _rl_cfg(tmp_path / "replay", llava, replay_file, max_steps=1)
    train_grpo(plain)
    train_grpo(with_replay)
    a, b = read_metrics(plain.output_dir)[0], read_metrics(with_replay.output_dir)[0]
    assert a["reward/mean"] == b["reward/mean"]  # the same rollout: replay changes only the update
    # rollout 0 trains experience rows 0..7 (2 prompts × 4 samples) → replay rows perm[r mod 6]
    nll, count = replay_rows_of_step0(llava, replay_file, n_train=8, global_batch=8, rows=range(8))
    expected = float((nll / count).mean())
    assert b["replay_nll"] == pytest.approx(expected, rel=1e-4)
    assert b["loss"] - a["loss"] == pytest.approx(2.0 * expected, rel=1e-3, abs=1e-5)


def test_grpo_with_replay_keeps_the_replay_rows_likelier(llava, replay_file, tmp_path, learning):
    """Measured change: after 6 rollouts at a high learning rate the replay rows' NLL is lower with the
    replay term than without it."""
    from vlalign.trainers.grpo import train_grpo

    runs = {}
    for name, path in (("plain", None), ("replay", replay_file)):
        cfg = _rl_cfg(tmp_path / name, llava, path, max_steps=6, learning_rate=1e-2, seed=learning.seed)
        train_grpo(cfg)
        nll, count = replay_rows_of_step0(cfg.output_dir + "/final", replay_file, n_train=6, rows=range(6))
        runs[name] = float((nll / count).mean())
    # seeds 0-4 x kernels AVX2 / default: 4.4-4.8 nats lower with replay
    assert learning.above("replay rows' NLL, plain − replay", runs["plain"] - runs["replay"], 0.05), runs


def test_grpo_with_replay_resumes_exactly(llava, replay_file, tmp_path):
    """Replay rows are keyed by (rollout, row), so a run killed after rollout 3 and resumed from its
    checkpoint at rollout 2 ends with bit-identical weights (CPU)."""
    from vlalign.trainers.grpo import train_grpo
    from vlalign.trainers.rl_common import _Interrupt

    kw = {"max_steps": 4, "save_steps": 2, "learning_rate": 1e-2, "kl_coef": 0.04, "ppo_epochs": 2, "num_minibatches": 2}
    full = _rl_cfg(tmp_path / "full", llava, replay_file, **kw)
    train_grpo(full)
    killed = _rl_cfg(tmp_path / "killed", llava, replay_file, **kw)
    with pytest.raises(_Interrupt):
        train_grpo(killed, stop_after=3)
    train_grpo(killed.model_copy(update={"resume": True}))
    a = load_file(f"{full.output_dir}/final/model.safetensors")
    b = load_file(f"{killed.output_dir}/final/model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any("replay_nll" in r for r in read_metrics(killed.output_dir))
