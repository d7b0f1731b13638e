"""Per-item values behind every reported rate, so each rate gets a bootstrap interval and two models
evaluated on the same items can be compared with a paired bootstrap.

A metric is a statistic (a name in :data:`vlalign.evaluation.stats.STATISTICS`) of per-item arrays:
CHAIR_i = ``ratio`` of (hallucinated types, mentioned types) per caption; POPE F1 = ``f1`` of (TP, FP,
FN) indicators per probe; a rate = ``mean`` of 0/1 per item. Each task stores its
:class:`ItemValues` under the metric's name; ``items.json`` beside ``metrics.json`` keeps them, so a
later comparison (`vlalign eval compare`, the demo's verdict) needs no re-generation.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vlalign.evaluation.stats import Interval, bootstrap_ci, ensure_statistic, paired_bootstrap_diff

ITEMS_FILE = "items.json"


@dataclass
class ItemValues:
    """``STATISTICS[stat](*arrays)`` is the metric; ``arrays[k][i]`` belongs to item ``ids[i]``."""

    stat: str
    arrays: list[list[float]]
    ids: list[str]

    def __post_init__(self) -> None:
        ensure_statistic(self.stat)  # unknown statistic: fail where the metric is defined
        if any(len(a) != len(self.ids) for a in self.arrays):
            raise ValueError(f"ItemValues({self.stat}): every array needs one value per id ({len(self.ids)})")

    def value(self) -> float:
        import numpy as np

        if not self.ids:
            return float("nan")
        return float(ensure_statistic(self.stat)(*[np.asarray(a, dtype=float)[None, :] for a in self.arrays])[0])

    def aligned_to(self, ids: Sequence[str]) -> ItemValues:
        """The same metric restricted to / reordered by ``ids`` (all must be present)."""
        pos = {i: k for k, i in enumerate(self.ids)}
        missing = [i for i in ids if i not in pos]
        if missing:
            raise ValueError(f"items {missing[:5]} are not in this evaluation ({len(missing)} missing)")
        order = [pos[i] for i in ids]
        return ItemValues(self.stat, [[a[k] for k in order] for a in self.arrays], list(ids))


def chair_items(ids: Sequence[str], hallucinated: Sequence[int], mentioned: Sequence[int],
                present: Sequence[int], recalled: Sequence[int]) -> dict[str, ItemValues]:
    """Per caption counts of distinct object types → CHAIR_i, CHAIR_s and object recall."""
    ids = list(ids)
    return {
        "chair_i": ItemValues("ratio", [list(map(float, hallucinated)), list(map(float, mentioned))], ids),
        "chair_s": ItemValues("mean", [[float(h > 0) for h in hallucinated]], ids),
        "object_recall": ItemValues("ratio", [list(map(float, recalled)), list(map(float, present))], ids),
    }


def binary_items(ids: Sequence[str], predicted: Sequence[float], actual: Sequence[float],
                 names: Mapping[str, str]) -> dict[str, ItemValues]:
    """Per item 0/1 "predicted positive" and "actually positive" → accuracy, precision, recall, F1 and the
    predicted-positive ratio, under the metric names given in ``names`` (keys among ``accuracy``,
    ``precision``, ``recall``, ``f1``, ``yes_ratio``). An unparsed answer is passed as predicted 0: a
    false negative on a positive item. Example: predicted [1, 1, 0], actual [1, 0, 1] → TP 1, FP 1,
    FN 1: precision 1/2, recall 1/2, F1 2·1/(2·1+1+1) = 0.5, accuracy 1/3."""
    ids = list(ids)
    tp = [p * t for p, t in zip(predicted, actual)]
    fp = [p * (1 - t) for p, t in zip(predicted, actual)]
    fn = [(1 - p) * t for p, t in zip(predicted, actual)]
    arrays = {
        "accuracy": ("mean", [[float(p == t) for p, t in zip(predicted, actual)]]),
        "precision": ("ratio", [tp, [a + b for a, b in zip(tp, fp)]]),
        "recall": ("ratio", [tp, [a + b for a, b in zip(tp, fn)]]),
        "f1": ("f1", [tp, fp, fn]),
        "yes_ratio": ("mean", [list(map(float, predicted))]),
    }
    return {name: ItemValues(arrays[key][0], [list(map(float, a)) for a in arrays[key][1]], ids)
            for key, name in names.items()}


def pope_items(ids: Sequence[str], predictions: Sequence[str | None], labels: Sequence[str],
               prefix: str = "pope", f1_name: str = "f1") -> dict[str, ItemValues]:
    """Per probe indicators → F1, accuracy, precision, recall, yes-ratio and unparsed ratio (an unparsed
    answer is wrong and not a "yes")."""
    ids = list(ids)
    yes = [float(p == "yes") for p in predictions]
    pos = [float(lab == "yes") for lab in labels]
    names = {k: f"{prefix}_{k}" for k in ("precision", "recall", "yes_ratio")}
    names["f1"] = f"{prefix}_{f1_name}"
    out = binary_items(ids, yes, pos, names)
    # accuracy from the predictions themselves: an unparsed answer to a "no" probe is wrong, not right
    out[f"{prefix}_accuracy"] = ItemValues("mean", [[float(p == lab) for p, lab in zip(predictions, labels)]], ids)
    out[f"{prefix}_unparsed_ratio"] = ItemValues("mean", [[float(p is None) for p in predictions]], ids)
    return out


def rate_items(ids: Sequence[str], hits: Sequence[float]) -> ItemValues:
    """A rate over items: the mean of per-item 0/1 (or fractional, e.g. a tie counted 0.5) values."""
    return ItemValues("mean", [list(map(float, hits))], list(ids))


def intervals(items: Mapping[str, ItemValues], n_boot: int = 2000, seed: int = 0,
              level: float = 0.95) -> dict[str, Interval]:
    """A bootstrap interval over items for every metric that has per-item values."""
    return {name: bootstrap_ci(iv.stat, *iv.arrays, n_boot=n_boot, seed=seed, level=level)
            for name, iv in items.items()}


def paired_difference(a: ItemValues, b: ItemValues, n_boot: int = 2000, seed: int = 0,
                      level: float = 0.95) -> Interval:
    """Paired interval of metric(B) − metric(A) over the items both were evaluated on, aligned by id."""
    if a.stat != b.stat:
        raise ValueError(f"cannot compare a {a.stat} metric with a {b.stat} one")
    common = [i for i in a.ids if i in set(b.ids)]
    a2, b2 = a.aligned_to(common), b.aligned_to(common)
    return paired_bootstrap_diff(a.stat, a2.arrays, b2.arrays, n_boot=n_boot, seed=seed, level=level)


def save_items(items: Mapping[str, ItemValues], path: str | Path) -> Path:
    p = Path(path)
    p.write_text(json.dumps({k: asdict(v) for k, v in items.items()}) + "\n")
    return p


def load_items(path: str | Path) -> dict[str, ItemValues]:
    """``items.json`` of an evaluation folder (or the file itself) → metric → :class:`ItemValues`."""
    p = Path(path)
    if p.is_dir():
        p = p / ITEMS_FILE
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no per-item values; re-run `vlalign eval` to write them")
    raw: dict[str, Any] = json.loads(p.read_text())
    return {k: ItemValues(**v) for k, v in raw.items()}
