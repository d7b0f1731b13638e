"""Bootstrap intervals, paired differences, seed spread and the verdict rule, on values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vlalign.evaluation.stats import (
    Interval,
    bootstrap_ci,
    compare_over_seeds,
    f1_stat,
    paired_bootstrap_diff,
    ratio_stat,
    seed_spread,
)


def test_statistics_on_hand_values():
    # CHAIR_i of 3 captions with (hallucinated, mentioned) = (1, 2), (0, 1), (1, 1): 2 / 4 = 0.5
    assert ratio_stat(np.array([[1, 0, 1]]), np.array([[2, 1, 1]]))[0] == 0.5
    # no mentions at all: defined as 0, as hallucination.chair does
    assert ratio_stat(np.array([[0, 0]]), np.array([[0, 0]]))[0] == 0.0
    # POPE: TP=2, FP=1, FN=1 → 2·2 / (4 + 1 + 1) = 2/3
    tp, fp, fn = np.array([[1, 1, 0, 0, 0]]), np.array([[0, 0, 1, 0, 0]]), np.array([[0, 0, 0, 1, 0]])
    assert f1_stat(tp, fp, fn)[0] == pytest.approx(2 / 3)


def test_constant_items_give_a_zero_width_interval():
    iv = bootstrap_ci("mean", [1.0] * 50)
    assert (iv.value, iv.low, iv.high, iv.n) == (1.0, 1.0, 1.0, 50)


def test_interval_matches_the_normal_approximation_of_a_rate():
    # 400 items, rate 0.3: standard error sqrt(0.3·0.7/400) = 0.0229, so the 95% interval is
    # 0.3 ± 1.96·0.0229 = [0.255, 0.345]; the percentile bootstrap lands within 0.01 of both ends.
    hits = np.array([1.0] * 120 + [0.0] * 280)
    iv = bootstrap_ci("mean", hits, n_boot=4000, seed=1)
    assert iv.value == pytest.approx(0.3)
    assert iv.low == pytest.approx(0.255, abs=0.01) and iv.high == pytest.approx(0.345, abs=0.01)


def test_same_seed_same_interval_and_no_items_is_nan():
    x = np.random.default_rng(0).random(30)
    assert bootstrap_ci("mean", x, seed=3) == bootstrap_ci("mean", x, seed=3)
    assert math.isnan(bootstrap_ci("mean", []).value)


def test_paired_difference_cancels_item_difficulty():
    # B = A + 0.01 on every item: the paired difference is exactly 0.01 in every resample, while
    # the unpaired intervals of A and B (items spread over [0, 1]) overlap almost entirely.
    a = np.random.default_rng(0).random(200)
    b = a + 0.01
    d = paired_bootstrap_diff("mean", [a], [b])
    assert d.value == pytest.approx(0.01) and d.low == pytest.approx(0.01) and d.high == pytest.approx(0.01)
    assert d.excludes_zero()
    ia, ib = bootstrap_ci("mean", a), bootstrap_ci("mean", b)
    assert ib.low < ia.high  # unpaired: no difference visible


def test_paired_difference_needs_the_same_items():
    with pytest.raises(ValueError, match="same items"):
        paired_bootstrap_diff("mean", [[1.0, 0.0]], [[1.0]])


def test_seed_spread():
    s = seed_spread([0.1, 0.2, 0.3])
    assert s["mean"] == pytest.approx(0.2) and s["std"] == pytest.approx(0.1) and s["per_seed"] == [0.1, 0.2, 0.3]
    assert seed_spread([0.5])["std"] == 0.0


def iv(value, low, high):
    return Interval(value, low, high, n=100)


def test_verdict_claims_only_when_every_seed_excludes_zero():
    # lower is better (CHAIR_i): B − A negative on every seed, every interval below zero → B beats A
    win = compare_over_seeds([iv(-0.05, -0.08, -0.02), iv(-0.04, -0.07, -0.01)], "chair_i", "SFT", "DPO", "lower")
    assert win.claim == "b_better" and win.text.startswith("DPO beats SFT")
    # one seed's interval includes zero → no claim, and the text says so and gives every interval
    tie = compare_over_seeds([iv(-0.05, -0.08, -0.02), iv(-0.01, -0.03, 0.01)], "chair_i", "SFT", "DPO", "lower")
    assert tie.claim == "no_difference" and "no difference detectable at this sample size" in tie.text
    assert "-0.030, 0.010" in tie.text
    # seeds disagree in direction → no claim
    mixed = compare_over_seeds([iv(-0.05, -0.08, -0.02), iv(0.05, 0.02, 0.08)], "chair_i", "SFT", "DPO", "lower")
    assert mixed.claim == "no_difference"
    # higher is better (F1): B − A negative everywhere → A beats B
    lose = compare_over_seeds([iv(-0.05, -0.08, -0.02)], "pope_f1", "SFT", "DPO", "higher")
    assert lose.claim == "a_better"
    assert compare_over_seeds([], "pope_f1", "SFT", "DPO", "higher").claim == "no_difference"
