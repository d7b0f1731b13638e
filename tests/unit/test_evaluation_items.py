"""Per-item values behind the reported rates: hand-worked metrics, alignment by item id, files."""

from __future__ import annotations

import pytest

from vlalign.evaluation.items import (
    ItemValues,
    chair_items,
    intervals,
    load_items,
    paired_difference,
    pope_items,
    save_items,
)


def test_chair_and_pope_items_by_hand(tmp_path):
    # captions: (hallucinated, mentioned, present, recalled) = (1, 2, 2, 1), (0, 1, 3, 1), (1, 1, 1, 0)
    ch = chair_items(["a", "b", "c"], [1, 0, 1], [2, 1, 1], [2, 3, 1], [1, 1, 0])
    assert ch["chair_i"].value() == pytest.approx(2 / 4)  # 2 hallucinated of 4 mentioned
    assert ch["chair_s"].value() == pytest.approx(2 / 3)  # captions a and c hallucinate
    assert ch["object_recall"].value() == pytest.approx(2 / 6)
    # probes: (pred, label) = (yes, yes) TP, (yes, no) FP, (None, yes) FN + unparsed, (no, no) TN
    po = pope_items(["p", "q", "r", "s"], ["yes", "yes", None, "no"], ["yes", "no", "yes", "no"])
    assert po["pope_f1"].value() == pytest.approx(2 * 1 / (2 * 1 + 1 + 1))  # 0.5
    assert po["pope_accuracy"].value() == pytest.approx(0.5) and po["pope_yes_ratio"].value() == 0.5
    save_items({**ch, **po}, tmp_path / "items.json")
    back = load_items(tmp_path)
    assert back["chair_i"] == ch["chair_i"] and set(back) == set(ch) | set(po)
    assert set(intervals(back)) == set(back)


def test_paired_difference_aligns_items_by_id():
    a = ItemValues("mean", [[1.0, 0.0, 1.0]], ["x", "y", "z"])
    b = ItemValues("mean", [[0.0, 1.0]], ["z", "x"])  # other order, item y missing
    d = paired_difference(a, b)  # on {x, z}: A = (1 + 1) / 2 = 1, B = (1 + 0) / 2 = 0.5
    assert d.value == pytest.approx(-0.5) and d.n == 2


def test_bad_item_values_fail_where_defined():
    with pytest.raises(ValueError, match="one value per id"):
        ItemValues("mean", [[1.0]], ["a", "b"])
    with pytest.raises(KeyError, match="statistic"):
        ItemValues("median", [[1.0]], ["a"])
    with pytest.raises(ValueError, match="cannot compare"):
        paired_difference(ItemValues("mean", [[1.0]], ["a"]), ItemValues("ratio", [[1.0], [1.0]], ["a"]))
