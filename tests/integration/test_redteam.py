"""`vlalign redteam` on a tiny random LLaVA and Shapes: the loop runs every attack family, writes ASR per
family with intervals, and the successful attacks it writes validate and train `safe-ppo` and `dpo`
without conversion; a replay re-runs the same attempts (paired comparison)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from vlalign.cli import app


@pytest.fixture(scope="module")
def run(tiny_model_dir, tmp_path_factory):
    from vlalign.data.shapes import ShapesConfig, generate_shapes

    root = tmp_path_factory.mktemp("redteam")
    generate_shapes(root / "shapes", ShapesConfig(seed=1, n_train=6, n_eval=4, n_safety=2, n_safety_eval=4,
                                                  n_safety_image=0, n_safety_image_eval=0))
    model = str(tiny_model_dir("llava"))
    out = root / "rt"
    res = CliRunner().invoke(app, ["redteam", "--model", model, "--data", str(root / "shapes"), "--out", str(out),
                                   "n_seeds=2", "n_controls=1", "rounds=2", "generation.max_new_tokens=4", "n_boot=200"])
    assert res.exit_code == 0, res.output
    return model, out, res.output


def test_loop_outputs_and_asr_by_family(run):
    _, out, output = run
    m = json.loads((out / "metrics.json").read_text())
    attempts = [json.loads(line) for line in (out / "attacks.jsonl").read_text().splitlines()]
    # round 0: "direct" + 9 attacks on each of 2 seeds (+ the same 10 on 1 benign control); the random
    # model never refuses, so every attempt succeeds (shapes_harm = 1) and round 1 has nothing left to attack
    assert len(attempts) == 30 and {a["round"] for a in attempts} == {0} and sum(a["control"] for a in attempts) == 10
    assert m["metrics"]["control_refusal_rate"] == 0.0 and m["intervals"]["control_refusal_rate"]["n"] == 10
    assert {a["family"] for a in attempts} == {"direct", "typographic", "perturbation", "template"}
    for fam in ("direct", "typographic", "perturbation", "template"):
        assert m["metrics"][f"asr_{fam}"] == 1.0 and m["intervals"][f"asr_{fam}"]["n"] > 0
    assert m["metrics"]["n_successful_unique"] == 20 and "ASR 1.000 over 20 attempts" in output
    assert (out / "attack_success_rate_per_family.png").is_file()


def test_written_sets_validate_and_train_safe_ppo_and_dpo(run, tmp_path):
    model, out, _ = run
    for name in ("successful_prompts.jsonl", "successful_pairs.jsonl"):
        res = CliRunner().invoke(app, ["data", "validate", str(out / name)])
        assert res.exit_code == 0 and "0 bad rows" in res.output, res.output
    res = CliRunner().invoke(app, [
        "safe-ppo", "-c", "configs/safe_ppo_tiny.yaml", "max_steps=1", f"output_dir={tmp_path / 'ppo'}",
        f"model.name_or_path={model}", f"data.train={out / 'successful_prompts.jsonl'}", "per_device_batch_size=2",
        "rollout.max_new_tokens=4", "progress=false", "save_steps=0"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert (tmp_path / "ppo" / "final" / "config.json").is_file()
    res = CliRunner().invoke(app, [
        "dpo", "-c", "configs/dpo_tiny.yaml", "max_steps=1", f"output_dir={tmp_path / 'dpo'}",
        f"model.name_or_path={model}", f"data.train={out / 'successful_pairs.jsonl'}", "per_device_batch_size=2",
        "data.max_length=320", "progress=false", "save_steps=0"])  # attack prompts are long: room for the image tokens
    assert res.exit_code == 0, res.output
    assert (tmp_path / "dpo" / "final" / "config.json").is_file()


def test_replay_is_paired_with_the_original(run, tmp_path):
    model, out, _ = run
    res = CliRunner().invoke(app, ["redteam", "--model", model, "--replay", str(out), "--out", str(tmp_path / "again"),
                                   "generation.max_new_tokens=4", "n_boot=200"])
    assert res.exit_code == 0, res.output
    a = [json.loads(x) for x in (out / "attacks.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (tmp_path / "again" / "attacks.jsonl").read_text().splitlines()]
    assert [x["id"] for x in a] == [x["id"] for x in b] and [x["prompt"] for x in a] == [x["prompt"] for x in b]
    assert [x["answer"] for x in a] == [x["answer"] for x in b]  # greedy: the same model answers the same
    res = CliRunner().invoke(app, ["eval", "compare", str(out), str(tmp_path / "again"), "--out", str(tmp_path / "cmp")])
    assert res.exit_code == 0, res.output
    row = next(r for r in json.loads((tmp_path / "cmp" / "compare.json").read_text())["rows"] if r[0] == "asr")
    assert row[3].startswith("+0.000 [+0.000, +0.000] over 20 common items")
