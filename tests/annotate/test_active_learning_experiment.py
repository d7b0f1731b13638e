"""`vlalign experiment active-learning`: the selection rule, the 'labels needed' rule, and a tiny end-to-end run."""

from __future__ import annotations

import json
import random

import torch

from vlalign.experiments.active_learning import (
    ActiveLearningConfig,
    _next_batch,
    labels_needed,
    run_active_learning,
)


class FakeModel:
    """score_records -> fixed (r_a, r_b) per record id."""

    def __init__(self, scores):
        self.scores = scores

    def score_records(self, records, batch_size=32):
        return torch.tensor([self.scores[r] for r in records])


def test_active_takes_the_most_uncertain_pairs_random_takes_any():
    pool = ["a", "b", "c", "d", "e"]
    # |sigma(r_a - r_b) - 0.5|: a 0.46 (d=3), b 0.05 (d=0.2), c 0 (d=0), d 0.38 (d=2), e 0.02 (d=0.1)
    model = FakeModel({"a": (3.0, 0.0), "b": (0.2, 0.0), "c": (1.0, 1.0), "d": (0.0, 2.0), "e": (0.1, 0.0)})
    assert _next_batch("active", model, pool, [0], 2, random.Random(0)) == [2, 4]  # c, e; a is labelled already
    got = _next_batch("random", model, pool, [0], 2, random.Random(0))
    assert len(set(got)) == 2 and 0 not in got
    assert sorted(_next_batch("active", model, pool, [0, 1], 9, random.Random(0))) == [2, 3, 4]  # all that is left


def test_labels_needed():
    curve = [{"labels": 16, "hits": [1, 0, 0, 1]}, {"labels": 32, "hits": [1, 1, 1, 0]}, {"labels": 48, "hits": [1] * 4}]
    assert labels_needed(curve, 0.7) == 32  # 0.5 < 0.7 <= 0.75
    assert labels_needed(curve, 1.0) == 48 and labels_needed(curve[:2], 0.9) is None


def test_tiny_run_end_to_end(tmp_path):
    torch.manual_seed(0)
    cfg = ActiveLearningConfig.from_recipe(overrides={
        "seeds": [0], "budgets": [4, 8], "data": {"n_train": 12, "n_eval": 6, "pool": 24, "eval_pairs": 12},
        "train": {"steps": 2, "batch_size": 4}, "target_accuracy": 0.5})
    result = run_active_learning(cfg, tmp_path / "al", log=lambda s: None)
    saved = json.loads((tmp_path / "al" / "metrics.json").read_text())
    assert saved["seeds"] == [0] and [r["budget"] for r in saved["curves"]["active"]] == [4, 8]
    for s in ("random", "active"):
        for row in saved["curves"][s]:
            (low, high), acc = row["ci95_per_seed"][0], row["accuracy"]["mean"]
            assert 0.0 <= low <= acc <= high <= 1.0
    assert {c["claim"] for c in result["active_minus_random"]} <= {"b_better", "a_better", "no_difference"}
    assert "labels to reach accuracy 0.5" in (tmp_path / "al" / "report.md").read_text()
    assert "labels to reach accuracy 0.5" in (tmp_path / "al" / "report.html").read_text()
