"""DPO-family trainer on the tiny LLaVA: loss falls, every objective trains, LoRA trains only the
adapter, the reference cache is reused, non-finite steps are skipped and reported."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from vlalign.trainers.configs import DPOConfig
from vlalign.trainers.logging import read_metrics


def dpo_cfg(model_dir, data_path, out, **kw) -> DPOConfig:
    base = {
        "output_dir": str(out), "model": {"name_or_path": str(model_dir)},
        "data": {"train": str(data_path), "max_length": 128}, "per_device_batch_size": 8, "max_steps": 5,
        "learning_rate": 2e-3, "lr_scheduler": "constant", "progress": False,
    }
    for k, v in kw.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            base[k] = {**base[k], **v}
        else:
            base[k] = v
    return DPOConfig.model_validate(base)


@pytest.fixture(scope="module")
def llava(tiny_model_dir):
    return tiny_model_dir("llava")


@pytest.fixture(scope="module")
def ref_cache(tmp_path_factory):
    """One reference cache folder for the module: runs with the same model + data + max_length reuse
    the scored log-probs (that is the cache's job), so each test pays only for its own training steps."""
    return str(tmp_path_factory.mktemp("ref_cache"))


def test_dpo_loss_falls_and_metrics_are_logged(llava, trainer_data, tmp_path, learning):
    from vlalign.trainers.dpo import train_dpo

    train_dpo(dpo_cfg(llava, trainer_data[0], tmp_path, beta=0.5, learning_rate=5e-3, seed=learning.seed))
    rows = read_metrics(tmp_path)
    losses = [r["loss"] for r in rows]
    # step 1: policy == reference, so every DPO loss is -log σ(0) = log 2
    assert losses[0] == pytest.approx(0.693147, abs=1e-4)
    # The same on every seed 0-4 (the batch is the whole data set) and kernel AVX2 / default: ratio 0.9191,
    # accuracy 0.75, margin 0.124; kernels move such values by ~1e-6 (docs/reproducibility.md)
    assert learning.below("last / first loss", losses[-1] / losses[0], 0.95), losses
    assert learning.above("last accuracy", rows[-1]["accuracy"], 0.5)
    assert learning.above("last margin", rows[-1]["margin"], 0.0)
    for key in ("reward_chosen", "reward_rejected", "logp_chosen", "kl_ref", "grad_norm", "lr", "pairs_per_s",
                "tokens_per_s", "peak_rss_mib"):
        assert key in rows[-1], key
    assert list((tmp_path / "reference_cache").glob("ref_logps-*.pt"))


# Every registered objective: sequence sums + cache (dpo, cdpo, ipo, hinge), reference-free (simpo,
# orpo), KTO's mismatched block, mDPO's corrupted-image block, dense per-token (dense_dpo).
OBJECTIVES = ["dpo", "cdpo", "ipo", "hinge", "simpo", "orpo", "kto", "mdpo", "dense_dpo"]


@pytest.mark.parametrize("loss", OBJECTIVES)
def test_each_objective_trains_and_moves_the_weights(llava, trainer_data, tmp_path, loss, ref_cache):
    from vlalign.trainers.dpo import train_dpo

    cfg = dpo_cfg(llava, trainer_data[0], tmp_path, loss=loss, max_steps=2, per_device_batch_size=4,
                  data={"limit": 4}, lr_scheduler="constant", reference={"cache_dir": ref_cache})
    train_dpo(cfg)
    rows = read_metrics(tmp_path)
    assert len(rows) == 2 and all(r["skipped_steps"] == 0 for r in rows)
    assert all(torch.isfinite(torch.tensor(r["loss"])) and r["grad_norm"] > 0 for r in rows)
    before = load_file(llava / "model.safetensors")
    after = load_file(tmp_path / "final" / "model.safetensors")
    lm = [k for k in after if "language_model" in k]
    assert max((after[k] - before[k]).abs().max().item() for k in lm) > 1e-4
    uses_ref = any(r.get("kl_ref") is not None for r in rows)
    assert uses_ref == (loss not in ("simpo", "orpo"))  # reference-free losses skip the reference


def test_lora_trains_only_the_adapter_with_adapter_reference(llava, trainer_data, tmp_path):
    from vlalign.trainers.dpo import train_dpo

    cfg = dpo_cfg(llava, trainer_data[0], tmp_path, max_steps=2, per_device_batch_size=4, data={"limit": 4},
                  model={"lora": {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0}},
                  reference={"mode": "adapter"})
    summary = train_dpo(cfg)
    assert set(summary["saved"]) == {"adapter", "merged"}
    adapter = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert adapter and all("lora_" in k for k in adapter)
    assert any(v.abs().max() > 0 for k, v in adapter.items() if "lora_B" in k)  # B starts at 0: it moved
    # the merged copy differs from the base only in LoRA-targeted language-model linears
    before = load_file(llava / "model.safetensors")
    merged = load_file(tmp_path / "final" / "model.safetensors")
    changed = {k for k in merged if not torch.equal(merged[k], before[k])}
    assert changed and all("language_model" in k and k.endswith("proj.weight") for k in changed), changed
    assert not (tmp_path / "reference_cache").exists()


def test_reference_cache_is_reused_when_fingerprint_matches(llava, trainer_data, tmp_path, monkeypatch):
    from vlalign.trainers import reference
    from vlalign.trainers.dpo import train_dpo

    cache = tmp_path / "cache"
    train_dpo(dpo_cfg(llava, trainer_data[0], tmp_path / "a", max_steps=1, reference={"cache_dir": str(cache)}))
    files = list(cache.glob("*.pt"))
    assert len(files) == 1
    calls = []

    def recompute(*a, **k):
        calls.append(1)
        raise RuntimeError("reference recomputed")

    monkeypatch.setattr(reference, "_score_rows", recompute)
    train_dpo(dpo_cfg(llava, trainer_data[0], tmp_path / "b", max_steps=1, reference={"cache_dir": str(cache)}))
    assert calls == []  # same model + data + max_length: loaded, not recomputed
    with pytest.raises(RuntimeError, match="reference recomputed"):  # other max_length -> other fingerprint
        train_dpo(dpo_cfg(llava, trainer_data[0], tmp_path / "c", max_steps=1, reference={"cache_dir": str(cache)},
                          data={"max_length": 120}))
    assert calls == [1]


def test_nonfinite_batch_is_skipped_reported_and_aborts(llava, trainer_data, tmp_path, monkeypatch, ref_cache):
    from vlalign.trainers import dpo
    from vlalign.trainers.common import NonFiniteError

    real_step = dpo.dpo_micro_step

    def poisoning_step(poison_if):
        def step(model, batch, objective, hparams, reference, extra, sft_weight, forward, replay=None, margins=None):
            def poisoned(model, inputs, mask, n):  # NaN log-probs for the micro-batches poison_if picks
                logps, m = forward(model, inputs, mask, n)
                return (logps * float("nan"), m) if poison_if(batch) else (logps, m)

            return real_step(model, batch, objective, hparams, reference, extra, sft_weight, poisoned, replay, margins)

        return step

    monkeypatch.setattr(dpo, "dpo_micro_step", poisoning_step(lambda batch: "p3" in batch.ids))
    # batches of 2 over 8 rows: 1 of 4 steps per epoch holds p3 -> skipped, the others train
    cfg = dpo_cfg(llava, trainer_data[0], tmp_path, max_steps=4, per_device_batch_size=2, max_consecutive_nonfinite=2,
                  reference={"cache_dir": ref_cache})
    summary = dpo.train_dpo(cfg)
    assert summary["skipped_steps"] == 1
    events = [r for r in read_metrics(tmp_path) if r.get("event") == "nonfinite_skip"]
    assert len(events) == 1 and "p3" in events[0]["row_ids"]
    trained = [r for r in read_metrics(tmp_path) if "event" not in r]
    assert len(trained) == 3 and all(torch.isfinite(torch.tensor(r["loss"])) for r in trained)
    after = load_file(tmp_path / "final" / "model.safetensors")
    assert all(torch.isfinite(v).all() for v in after.values())

    # every batch poisoned: abort after max_consecutive_nonfinite with a clear message
    monkeypatch.setattr(dpo, "dpo_micro_step", poisoning_step(lambda batch: True))
    with pytest.raises(NonFiniteError, match="2 consecutive steps"):
        dpo.train_dpo(dpo_cfg(llava, trainer_data[0], tmp_path / "abort", max_steps=4, per_device_batch_size=2,
                              max_consecutive_nonfinite=2, reference={"cache_dir": ref_cache}))
    assert not list((tmp_path / "abort").glob("checkpoint-*"))


def test_config_written_next_to_outputs(llava, trainer_data, tmp_path):
    import yaml

    from vlalign.trainers.dpo import train_dpo

    train_dpo(dpo_cfg(llava, trainer_data[0], tmp_path, max_steps=1, loss="simpo", beta=1.5,
                      report_to=["tensorboard"]))
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved["loss"] == "simpo" and saved["beta"] == 1.5
    assert list(tmp_path.rglob("events.out.tfevents.*"))  # report_to=tensorboard wrote an event file
    assert json.loads((tmp_path / "summary.json").read_text())["steps"] == 1


def test_mm_dpo_reads_each_pairs_margin(llava, trainer_data, tmp_path, ref_cache):
    """MM-DPO's per-pair β comes from the records' ``margin``: logged β is the hand-worked mean of β(δ)."""
    import math

    from vlalign.trainers.dpo import train_dpo

    rows = [json.loads(line) for line in trainer_data[0].read_text().splitlines()][:4]
    for r in rows:  # absolute image paths: the file is written elsewhere
        r["images"] = [str(trainer_data[0].parent / p) for p in r["images"]]
    deltas = [0.0, math.log(2.0), 0.0, math.log(2.0)]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({**r, "margin": d}) + "\n" for r, d in zip(rows, deltas)))
    cfg = dpo_cfg(llava, data, tmp_path / "run", loss="mm_dpo", beta=0.1, loss_kwargs={"w": 0.5, "k": 1.0}, max_steps=1,
                  per_device_batch_size=4, reference={"cache_dir": ref_cache})  # fmt: skip
    train_dpo(cfg)
    (row,) = read_metrics(tmp_path / "run")
    # β(δ) = 0.1·(1 + 0.5·(1 − e^{−δ})): δ = 0 → 0.1; δ = ln 2 → 0.1·(1 + 0.5·0.5) = 0.125; mean 0.1125
    assert row["loss_beta"] == pytest.approx(0.1125, abs=1e-6)
    assert row["loss"] == pytest.approx(math.log(2.0), abs=1e-4)  # step 1: policy = reference, any β gives log 2
    no_margin = tmp_path / "no_margin.jsonl"
    no_margin.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "margin"}) + "\n" for r in rows))
    with pytest.raises(ValueError, match=r"needs each pair's `margin`.*train rows \[0, 1, 2, 3\]"):
        train_dpo(dpo_cfg(llava, no_margin, tmp_path / "run2", loss="mm_dpo", max_steps=1, per_device_batch_size=4,
                          reference={"cache_dir": ref_cache}))  # fmt: skip
