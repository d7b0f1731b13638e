"""Reward and cost models on a tiny LLaVA + Shapes: measured learning, one-call loading, scoring."""

from __future__ import annotations

import json

import pytest
import torch

from vlalign.config import load_config


def _cfg(cls, tiny, out, train, evalf, **extra):
    defaults = {"output_dir": str(out), "model": {"name_or_path": str(tiny)},
                "data": {"train": str(train), "limit": 256, "max_length": 160},
                "eval": {"data": str(evalf), "limit": 64, "batch_size": 32},
                "per_device_batch_size": 16, "learning_rate": 1e-3, "lr_scheduler": "constant", "progress": False,
                "logging_steps": 1}
    defaults.update(extra)
    return load_config(cls, None, [], defaults=defaults)


@pytest.fixture(scope="module")
def trained_rm(tiny_model_dir, rewards_shapes_dir, tmp_path_factory, learning_seed):
    from vlalign.trainers.reward_model import RewardModelConfig, train_reward_model

    torch.set_num_threads(1)  # the shared CPU is faster single-threaded
    out = tmp_path_factory.mktemp("rm")
    cfg = _cfg(RewardModelConfig, tiny_model_dir("llava"), out, rewards_shapes_dir / "preference.jsonl",
               rewards_shapes_dir / "preference_eval.jsonl", max_steps=16, seed=learning_seed)
    return out, train_reward_model(cfg)


def test_reward_model_accuracy_rises_above_chance(trained_rm, learning):
    out, metrics = trained_rm
    before, after = metrics["before"], metrics["after"]
    # The untrained head scores chance ± noise on these 64 held-out pairs (0.30-0.72 over seeds 0-4), so the
    # accuracy gain (0.03-0.47) is no test of learning; the mean margin (chosen − rejected) and the NLL are:
    # over seeds 0-4 (AVX2; the default kernels gave the same margins to 4 decimals) they rose 0.12-0.41 and
    # fell 0.057-0.129; the bounds leave 2x margin below the worst run.
    gain = after["margin_mean"] - before["margin_mean"]
    assert learning.above("mean margin gain", gain, 0.06), (before, after)
    assert learning.above("held-out NLL fall", before["nll"] - after["nll"], 0.03), (before, after)
    # 16 steps of 16 pairs, seeds 0-4 x kernels AVX2 / default: held-out accuracy 0.66-0.77 (0.73 ± 0.04).
    assert learning.above("held-out accuracy", after["accuracy"], 0.6), after
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["after"]["accuracy"] == after["accuracy"]
    assert sum(saved["after"]["margin_histogram"]["counts"]) == 64
    assert 0.0 <= saved["after"]["ece"] <= 1.0 and saved["after"]["calibration"]
    print({k: (metrics[k]["accuracy"], metrics[k]["nll"], metrics[k]["margin_mean"]) for k in ("before", "after")})
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 16  # one training log row per step


def test_saved_reward_model_loads_with_one_call_and_scores(trained_rm, rewards_shapes_dir):
    from vlalign.data.validate import load_records
    from vlalign.rewards import Sample, build_source
    from vlalign.rewards.learned import load_reward_model

    out, metrics = trained_rm
    rm = load_reward_model(out)
    assert rm.kind == "reward"
    records = load_records(rewards_shapes_dir / "preference_eval.jsonl").records[:64]
    scores = rm.score_records(records, batch_size=32)  # (64, 2)
    acc = float((scores[:, 0] > scores[:, 1]).float().mean())
    assert acc == pytest.approx(metrics["after"]["accuracy"], abs=1e-6)  # same model, same numbers
    src = build_source({"name": "learned", "kwargs": {"path": str(out), "batch_size": 4}})
    samples = [Sample(r.images, r.prompt, r.chosen) for r in records[:5]]
    got = src.score(samples).rewards
    assert torch.allclose(got, scores[:5, 0], atol=1e-4)  # per-sample scoring == batched pair scoring
    with pytest.raises(ValueError, match="expects a cost model"):
        build_source({"name": "cost", "kwargs": {"path": str(out)}})


def test_cost_model_separates_safe_from_unsafe(tiny_model_dir, rewards_shapes_dir, tmp_path, learning):
    from vlalign.rewards import Sample, build_source
    from vlalign.trainers.reward_model import CostModelConfig, train_cost_model

    torch.set_num_threads(1)
    cfg = _cfg(CostModelConfig, tiny_model_dir("llava"), tmp_path / "cost", rewards_shapes_dir / "safety.jsonl",
               rewards_shapes_dir / "safety_eval.jsonl", max_steps=16, seed=learning.seed)
    cfg.eval.limit = 32
    metrics = train_cost_model(cfg)
    after = metrics["after"]
    # safety_eval: half harmful pairs (safe refusal vs unsafe compliance), half benign (both safe)
    # Seeds 0-4 x kernels AVX2 / default: safety accuracy 1.0 every time, mean costs +4.3..+6.3 (unsafe) and
    # -6.5..-5.0 (safe), gain 0.25-0.84
    assert learning.above("safety accuracy", after["safety_accuracy"], 0.9), after  # sign(cost) right for > 90%
    assert learning.above("mean cost, unsafe", after["mean_cost_unsafe"], 0.0)
    assert learning.below("mean cost, safe", after["mean_cost_safe"], 0.0)
    gain = after["safety_accuracy"] - metrics["before"]["safety_accuracy"]
    assert learning.above("safety accuracy gain", gain, 0.0)
    cost = build_source({"name": "cost", "kwargs": {"path": str(tmp_path / "cost")}})
    import json as _json

    row = _json.loads((rewards_shapes_dir / "safety_eval.jsonl").read_text().splitlines()[0])
    img = [str(rewards_shapes_dir / row["images"][0])]
    out = cost.score([Sample(img, row["prompt"], row["chosen"]), Sample(img, row["prompt"], row["rejected"])])
    assert out.rewards[0] < 0 < out.rewards[1]  # refusal is safe, the harmful compliance is not


def test_plackett_luce_on_ranked_lists_with_uneven_k(tiny_model_dir, rewards_shapes_dir, tmp_path):
    from vlalign.trainers.reward_model import (
        RankedDataset,
        RewardModelConfig,
        _RankedAsPrompt,
        rank_mask,
        train_reward_model,
    )

    rows = []
    for i, line in enumerate((rewards_shapes_dir / "preference.jsonl").read_text().splitlines()[:8]):
        r = json.loads(line)
        responses = [r["chosen"], r["rejected"], "I see nothing."][: 3 if i % 2 == 0 else 2]
        rows.append({"id": f"rank{i}", "images": r["images"], "prompt": r["prompt"], "responses": responses,
                     "meta": {}})
    ranked = rewards_shapes_dir / "ranked_test.jsonl"
    ranked.write_text("".join(json.dumps(r) + "\n" for r in rows))
    torch.set_num_threads(1)
    cfg = _cfg(RewardModelConfig, tiny_model_dir("llava"), tmp_path / "pl", ranked,
               rewards_shapes_dir / "preference_eval.jsonl", max_steps=3, per_device_batch_size=4)
    cfg.eval.limit, cfg.eval.before_training = 8, False
    metrics = train_reward_model(cfg)
    assert metrics["after"]["n_pairs"] == 8 and metrics["steps"] == 3
    logged = [json.loads(x) for x in (tmp_path / "pl" / "metrics.jsonl").read_text().splitlines()]
    assert all(row["loss"] > 0 for row in logged)  # PL NLL of 2–3 items is positive
    # padding: a batch of K=3 and K=2 rows holds 3 blocks, the short row's third entry masked out
    from vlalign.data.validate import load_records
    from vlalign.models.load import ModelConfig, load_processor

    recs = load_records(ranked).records[:2]
    ds = RankedDataset([_RankedAsPrompt(r) for r in recs], load_processor(ModelConfig(name_or_path=str(tiny_model_dir("llava")))),
                       __import__("vlalign.data.collate", fromlist=["CollateConfig"]).CollateConfig(160))
    batch = ds.batch([0, 1])
    assert rank_mask(recs, [0, 1], 3).tolist() == [[True, True, True], [True, True, False]]
    assert batch.inputs["input_ids"].shape[0] == 6  # 3 blocks × 2 rows, response-major


def test_distill_student_regresses_teacher(trained_rm, tiny_model_dir, rewards_shapes_dir, tmp_path, learning):
    from vlalign.rewards.learned import load_reward_model
    from vlalign.trainers.reward_model import DistillConfig, train_distill

    teacher_dir, _ = trained_rm
    torch.set_num_threads(1)
    cfg = _cfg(DistillConfig, tiny_model_dir("llava"), tmp_path / "student", rewards_shapes_dir / "preference.jsonl",
               rewards_shapes_dir / "preference_eval.jsonl", max_steps=8, teacher=str(teacher_dir),
               seed=learning.seed)
    cfg.data.limit, cfg.eval.limit = 128, 32
    metrics = train_distill(cfg)
    mse = [json.loads(x)["mse"] for x in (tmp_path / "student" / "metrics.jsonl").read_text().splitlines()]
    # the student moves towards the teacher's scores: ratio 0.007-0.17 over seeds 0-4 x kernels AVX2 / default
    assert learning.below("last 3 / first 3 MSE", sum(mse[-3:]) / sum(mse[:3]), 1.0), mse
    student = load_reward_model(tmp_path / "student")
    assert student.kind == "reward" and metrics["teacher"] == str(teacher_dir)
