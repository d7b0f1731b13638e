"""Critique reward model (MM-RLHF) and Fact-RLHF reward model on a tiny LLaVA + Shapes."""

from __future__ import annotations

import json

import pytest
import torch

from vlalign.config import load_config


@pytest.fixture(scope="module")
def critique_data(rewards_shapes_dir, tmp_path_factory):
    """(train, eval) Shapes pairs with ground-truth critiques, written by `vlalign data critiques`' function."""
    from vlalign.data.shapes.critique import write_critique_file

    out = tmp_path_factory.mktemp("critique_data")
    write_critique_file(rewards_shapes_dir / "preference.jsonl", out / "train.jsonl")
    write_critique_file(rewards_shapes_dir / "preference_eval.jsonl", out / "eval.jsonl")
    return out / "train.jsonl", out / "eval.jsonl"


def _cfg(tiny, out, train, evalf, model=None, **extra):
    from vlalign.trainers.reward_model import RewardModelConfig

    defaults = {"output_dir": str(out), "model": {"name_or_path": str(tiny), **(model or {})},
                "data": {"train": str(train), "limit": 256, "max_length": 200},
                "eval": {"data": str(evalf), "limit": 64, "batch_size": 32},
                "per_device_batch_size": 16, "learning_rate": 1e-3, "lr_scheduler": "constant", "progress": False,
                "logging_steps": 1}
    defaults.update(extra)
    return load_config(RewardModelConfig, None, [], defaults=defaults)


@pytest.fixture(scope="module")
def trained_critique_rm(tiny_model_dir, critique_data, tmp_path_factory, learning_seed):
    from vlalign.trainers.reward_model import train_reward_model

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("critique_rm")
    cfg = _cfg(tiny_model_dir("llava"), out, *critique_data, model={"kind": "critique"}, max_steps=16,
               seed=learning_seed)
    return out, cfg, train_reward_model(cfg)


def test_critique_rm_learns_to_write_critiques_and_rank_pairs(trained_critique_rm, learning):
    out, _, metrics = trained_critique_rm
    before, after = metrics["before"], metrics["after"]
    print({k: (metrics[k]["accuracy"], metrics[k]["critique_nll"], metrics[k]["margin_mean"]) for k in ("before", "after")})
    # 16 steps of 16 pairs, seeds 0-4 x kernels AVX-512 (native) / AVX2 / default, 2 threads (15 runs,
    # scripts/learning_spread.py): the critique NLL per token fell 1.46-1.59 (from ~6.49) and the held-out
    # accuracy on the reference critiques was 1.0 every time (before training it depends on the head's
    # initialisation, so no gain is asserted). The bounds leave about 2x margin below the worst run (NLL) and
    # 0.2 (accuracy). The reference critiques state the verdict; docs/reward_models.md has the accuracy with
    # the model's own critiques.
    assert learning.above("critique NLL fall", before["critique_nll"] - after["critique_nll"], 0.7), (before, after)
    assert learning.above("held-out accuracy", after["accuracy"], 0.8), after
    logged = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(logged) == 16 and all({"critique_nll", "score_loss", "accuracy"} <= set(row) for row in logged)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["kind"] == "critique" and saved["after"]["critique_nll"] == after["critique_nll"]


def test_saved_critique_rm_reloads_scores_the_same_and_serves_as_a_source(trained_critique_rm, critique_data):
    from vlalign.data.validate import load_records
    from vlalign.models.critique_head import CritiqueHeadModel
    from vlalign.rewards import Sample, build_source
    from vlalign.rewards.learned import load_reward_model
    from vlalign.trainers.critique_rm import CritiquePairDataset, pair_outputs
    from vlalign.trainers.run import collate_config

    out, cfg, metrics = trained_critique_rm
    rm = load_reward_model(out)
    assert rm.kind == "critique" and isinstance(rm.model, CritiqueHeadModel) and rm.facts is False
    assert "facts" not in json.loads((out / "final" / "reward_model.json").read_text())  # written only when true
    records = load_records(critique_data[1]).records[:64]
    with torch.no_grad():
        scores, _ = pair_outputs(rm.model, CritiquePairDataset(records, rm.processor, collate_config(cfg)).batch(range(64)))
    acc = float((scores[:, 0] > scores[:, 1]).float().mean())
    assert acc == pytest.approx(metrics["after"]["accuracy"], abs=1e-6)  # the same model, the same numbers
    src = build_source({"name": "critique_rm", "kwargs": {"path": str(out), "batch_size": 4, "max_new_tokens": 12}})
    samples = [Sample(r.images, r.prompt, r.rejected, r.meta) for r in records[:3]]
    got = src.score(samples)
    assert len(got.notes) == 3 and all(isinstance(n, str) for n in got.notes)
    assert torch.equal(got.rewards, src.score_with(samples, got.notes))  # scored with the critiques it returns
    with pytest.raises(ValueError, match="holds a critique model.*use source 'critique_rm'"):
        build_source({"name": "learned", "kwargs": {"path": str(out)}})


def test_fact_rlhf_rm_saves_and_scores_with_facts(tiny_model_dir, rewards_shapes_dir, tmp_path):
    from vlalign.rewards import Sample, build_source
    from vlalign.trainers.reward_model import train_reward_model

    torch.set_num_threads(1)
    cfg = _cfg(tiny_model_dir("llava"), tmp_path / "facts", rewards_shapes_dir / "preference.jsonl",
               rewards_shapes_dir / "preference_eval.jsonl", model={"facts": True}, max_steps=2)
    cfg.eval.limit = 8
    metrics = train_reward_model(cfg)
    assert metrics["after"]["n_pairs"] == 8
    assert json.loads((tmp_path / "facts" / "final" / "reward_model.json").read_text())["facts"] is True
    src = build_source({"name": "learned", "kwargs": {"path": str(tmp_path / "facts")}})
    assert src.scorer.facts is True  # scoring reads the facts as training did
    row = json.loads((rewards_shapes_dir / "preference_eval.jsonl").read_text().splitlines()[0])
    img = [str(rewards_shapes_dir / row["images"][0])]
    with pytest.raises(ValueError, match=r"row 0 \(id 'sample_0'\).*meta\['facts'\] is missing"):
        src.score([Sample(img, row["prompt"], row["chosen"], {})])
    assert src.score([Sample(img, row["prompt"], row["chosen"], row["meta"])]).rewards.shape == (1,)


def test_rows_without_facts_or_critiques_fail_naming_row_and_field(tiny_model_dir, trainer_data, tmp_path):
    from typer.testing import CliRunner

    from vlalign.cli import app

    pref, _ = trainer_data  # rows with meta {} and no critiques
    base = ["rm", f"output_dir={tmp_path / 'x'}", f"model.name_or_path={tiny_model_dir('llava')}", f"data.train={pref}",
            "max_steps=1", "per_device_batch_size=2", "progress=false"]
    res = CliRunner().invoke(app, [*base, "model.facts=true"])
    assert res.exit_code == 2 and "row 0 (id 'p0')" in res.output and "meta['facts'] is missing" in res.output, res.output
    res = CliRunner().invoke(app, [*base, "model.kind=critique", "overwrite=true"])
    assert res.exit_code == 2 and "8 of 8 rows have no `critique` (row 0 (id 'p0')" in res.output, res.output
    assert "vlalign data critiques" in res.output
    res = CliRunner().invoke(app, [*base, "model.kind=critic"])
    assert res.exit_code == 2 and "did you mean 'critique'" in res.output.lower(), res.output
