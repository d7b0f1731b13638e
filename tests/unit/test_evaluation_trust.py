"""Trust metrics on hand-made cases: ECE worked out by hand, the reliability bins, sycophancy flips and
consistency under paraphrase / image perturbation, and the image perturbations themselves."""

from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image

from vlalign.evaluation.items import ItemValues
from vlalign.evaluation.perturb import IMAGE_PERTURBATIONS
from vlalign.evaluation.stats import bootstrap_ci, ece_statistic
from vlalign.evaluation.trust import consistency_items, object_of, reliability_bins, sycophancy_items


def test_ece_by_hand():
    conf = np.array([0.95, 0.85, 0.75, 0.65, 0.55, 0.91, 0.99])
    correct = np.array([1, 1, 0, 1, 0, 1, 0], dtype=float)
    # 10 bins ((b-1)/10, b/10]: 0.95, 0.91, 0.99 share bin 10; the others are alone in theirs.
    # bin 10: |(1 - 0.95) + (1 - 0.91) + (0 - 0.99)| = |0.05 + 0.09 - 0.99| = 0.85
    # bins 9, 8, 7, 6: |1 - 0.85| + |0 - 0.75| + |1 - 0.65| + |0 - 0.55| = 0.15 + 0.75 + 0.35 + 0.55 = 1.80
    # ECE = (0.85 + 1.80) / 7 = 0.378571...
    ece = ece_statistic(10)(conf[None, :], correct[None, :])[0]
    assert ece == pytest.approx(2.65 / 7)
    assert ItemValues("ece_10", [conf.tolist(), correct.tolist()], [str(i) for i in range(7)]).value() == pytest.approx(2.65 / 7)
    ci = bootstrap_ci("ece_10", conf, correct, n_boot=300)
    assert 0 <= ci.low <= ci.value <= ci.high <= 1


def test_ece_perfectly_calibrated_and_bin_edges():
    # confidence 0.5 sits in bin ((4)/10, 5/10]; 0.75 with accuracy 3/4 in its bin → ECE 0
    conf = np.array([0.75, 0.75, 0.75, 0.75])
    correct = np.array([1, 1, 1, 0], dtype=float)
    assert ece_statistic(10)(conf[None], correct[None])[0] == pytest.approx(0.0)
    assert reliability_bins(np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.0, 1.0]), 10) == [(0.5, 0.5, 2), (1.0, 1.0, 1)]


def test_sycophancy_by_hand():
    items = sycophancy_items(["a", "b", "c", "d"], ["yes", "no", "yes", None], ["no", "no", None, "yes"],
                             ["yes", "yes", "no", "no"])
    # asked: a, b, c (d's first answer unparsed). flips: a yes→no, b stays, c → unparsed = flip → 2/3
    assert items["sycophancy_flip_rate"].value() == pytest.approx(2 / 3)
    # right first answers: only a (yes = yes) → it flipped → 1/1
    assert items["sycophancy_flip_rate_correct"].value() == 1.0 and items["sycophancy_flip_rate_correct"].ids == ["a"]
    assert items["sycophancy_accuracy_before"].value() == pytest.approx(1 / 3)
    assert items["sycophancy_accuracy_after"].value() == 0.0
    assert items["sycophancy_unparsed_first_rate"].value() == pytest.approx(1 / 4)


def test_consistency_by_hand():
    items = consistency_items(["a", "b", "c"], {
        "original": ["yes", "no", None], "paraphrase_0": ["yes", "yes", None], "paraphrase_1": ["yes", "no", "no"],
        "image_jpeg": ["yes", "no", "yes"], "image_crop": ["no", "no", None]})
    assert items["consistency_paraphrase"].value() == pytest.approx(1 / 3)  # a only (b changes, c unparsed)
    assert items["consistency_image"].value() == pytest.approx(1 / 3)  # b only (a flips under crop)
    assert items["consistency_image_jpeg"].value() == pytest.approx(2 / 3)


def test_object_of_probe():
    assert object_of("Is there a red circle in the image?") == "red circle"
    assert object_of("Is there an apple in the picture?\nAnswer the question using a single word or phrase.") == "apple"
    assert object_of("What colour is it?") is None


@pytest.mark.parametrize("name", ["gaussian_noise", "jpeg", "crop", "patch"])
def test_perturbations_change_the_image_reproducibly(name):
    img = Image.new("RGB", (32, 32), (240, 240, 240))
    img.paste((200, 30, 30), (8, 8, 24, 24))
    fn = IMAGE_PERTURBATIONS.get(name)
    a, b = fn(img, random.Random(1)), fn(img, random.Random(1))
    assert a.size == img.size and np.array_equal(np.asarray(a), np.asarray(b))  # same seed, same image
    assert not np.array_equal(np.asarray(a), np.asarray(img))
