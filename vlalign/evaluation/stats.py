"""Uncertainty of evaluation numbers: bootstrap intervals over items, paired differences, seed spread,
and the one rule by which a comparison may be claimed.

WHY a bootstrap over items: a rate such as CHAIR_i (hallucinated mentions / all mentions) or POPE F1
is a statistic of the evaluated items (captions, probes, prompts); resampling the items with
replacement and recomputing the statistic gives its sampling spread without assuming a distribution
(Efron & Tibshirani 1993, percentile interval). Two models evaluated on the SAME items are compared
with a *paired* bootstrap: each resample draws one set of item indices and recomputes both
statistics on it, so the item-to-item difficulty cancels and the interval is that of the difference.

A statistic here is a function of per-item arrays resampled along the last axis: it receives arrays
of shape (R, n) (R resamples of n items) and returns (R,). :data:`STATISTICS` names the common ones.

The verdict rule (:func:`compare_over_seeds`): "B beats A" only when the paired interval of the
difference excludes zero, in B's favour, on every seed; otherwise the claim is "no difference
detectable at this sample size", with the intervals.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

from vlalign.registry import Registry

Statistic = Callable[..., np.ndarray]  # (*arrays of shape (R, n)) -> (R,)

STATISTICS: Registry[Statistic] = Registry("statistic")


@STATISTICS.register("mean")
def mean_stat(x: np.ndarray) -> np.ndarray:
    """Mean of per-item values, e.g. 0/1 hits → a rate."""
    return x.mean(axis=-1)


@STATISTICS.register("ratio")
def ratio_stat(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Σ num / Σ den over the items (CHAIR_i: hallucinated mentions / mentions); 0 when Σ den = 0,
    as :func:`vlalign.evaluation.hallucination.chair` defines it for a caption set with no mentions."""
    n, d = num.sum(axis=-1), den.sum(axis=-1)
    return np.divide(n, d, out=np.zeros_like(n, dtype=float), where=d != 0)


@STATISTICS.register("f1")
def f1_stat(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """F1 = 2·TP / (2·TP + FP + FN) from per-item 0/1 indicators (POPE); 0 when nothing is positive."""
    t, p, n = tp.sum(axis=-1), fp.sum(axis=-1), fn.sum(axis=-1)
    den = 2 * t + p + n
    return np.divide(2 * t, den, out=np.zeros_like(t, dtype=float), where=den != 0)


def ece_statistic(n_bins: int) -> Statistic:
    """Expected calibration error with ``n_bins`` equal-width confidence bins ((b−1)/M, b/M] (Guo et al.
    2017): ECE = Σ_b (n_b / n)·|acc_b − conf_b| = Σ_b |Σ_{i∈b} (correct_i − confidence_i)| / n.

    Arguments: per-item confidence of the chosen answer and 0/1 correctness. Example (M = 10):
    confidences [0.95, 0.85, 0.75], correct [1, 1, 0] → (0.05 + 0.15 + 0.75) / 3 = 0.3167."""

    def ece(confidence: np.ndarray, correct: np.ndarray) -> np.ndarray:
        bins = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)  # (R, n)
        gap = correct - confidence  # (R, n)
        total = np.zeros(confidence.shape[:-1])
        for b in range(n_bins):
            total += np.abs(np.where(bins == b, gap, 0.0).sum(axis=-1))
        return total / max(confidence.shape[-1], 1)

    return ece


def ensure_statistic(name: str) -> Statistic:
    """:data:`STATISTICS`[name], registering ``ece_<M>`` (M bins) on first use."""
    if name not in STATISTICS and name.startswith("ece_") and name[4:].isdigit():
        STATISTICS.register(name)(ece_statistic(int(name[4:])))
    return STATISTICS.get(name)


@dataclass(frozen=True)
class Interval:
    """A point estimate with its two-sided ``level`` confidence interval [low, high] over ``n`` items."""

    value: float
    low: float
    high: float
    n: int
    level: float = 0.95

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    def text(self, digits: int = 3) -> str:
        """``0.172 [0.151, 0.195]``."""
        return f"{self.value:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def _as_arrays(arrays: Sequence[Sequence[float] | np.ndarray]) -> list[np.ndarray]:
    out = [np.asarray(a, dtype=float) for a in arrays]
    n = {a.shape for a in out}
    if len(n) != 1 or out[0].ndim != 1:
        raise ValueError(f"per-item arrays must be 1-D and of one length, got shapes {sorted(n)}")
    return out


def _resample_stats(stat: Statistic, arrays: list[np.ndarray], n_boot: int, seed: int,
                    chunk_items: int = 4_000_000) -> np.ndarray:
    """``stat`` on ``n_boot`` resamples of the items, in chunks so R × n stays under ``chunk_items``."""
    n = arrays[0].shape[0]
    rng = np.random.default_rng(seed)
    per_chunk = max(1, chunk_items // max(n, 1))
    out = []
    for start in range(0, n_boot, per_chunk):
        idx = rng.integers(0, n, size=(min(per_chunk, n_boot - start), n))  # (R, n)
        out.append(stat(*[a[idx] for a in arrays]))
    return np.concatenate(out)


def _percentiles(boots: np.ndarray, level: float) -> tuple[float, float]:
    alpha = 1.0 - level
    lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def bootstrap_ci(stat: Statistic | str, *arrays: Sequence[float] | np.ndarray, n_boot: int = 2000,
                 level: float = 0.95, seed: int = 0) -> Interval:
    """Percentile bootstrap interval of ``stat`` over items; ``arrays`` are per-item values (n,) each.

    Example: hits [1, 0, 1, 1] → ``bootstrap_ci("mean", hits)`` has value 0.75 and an interval inside
    [0, 1]. With no items the value and bounds are NaN (nothing was measured)."""
    fn = ensure_statistic(stat) if isinstance(stat, str) else stat
    arrs = _as_arrays(arrays)
    n = arrs[0].shape[0]
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0, level)
    value = float(fn(*[a[None, :] for a in arrs])[0])
    lo, hi = _percentiles(_resample_stats(fn, arrs, n_boot, seed), level)
    return Interval(value, lo, hi, n, level)


def paired_bootstrap_diff(stat: Statistic | str, arrays_a: Sequence[Sequence[float] | np.ndarray],
                          arrays_b: Sequence[Sequence[float] | np.ndarray], n_boot: int = 2000,
                          level: float = 0.95, seed: int = 0) -> Interval:
    """Interval of stat(B) − stat(A) with A and B measured on the same items (row i of each is item i).

    One set of resampled item indices serves both models in every replicate, so the interval is that of
    the paired difference. Items must be aligned by the caller (same order, same length)."""
    fn = ensure_statistic(stat) if isinstance(stat, str) else stat
    a, b = _as_arrays(arrays_a), _as_arrays(arrays_b)
    if a[0].shape != b[0].shape:
        raise ValueError(f"paired comparison needs the same items: A has {a[0].shape[0]}, B has {b[0].shape[0]}")
    n = a[0].shape[0]
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0, level)
    k = len(a)

    def diff(*both: np.ndarray) -> np.ndarray:
        return fn(*both[k:]) - fn(*both[:k])

    value = float(diff(*[x[None, :] for x in (*a, *b)])[0])
    lo, hi = _percentiles(_resample_stats(diff, [*a, *b], n_boot, seed), level)
    return Interval(value, lo, hi, n, level)


def seed_spread(values: Sequence[float]) -> dict[str, float | list[float]]:
    """Across seeds: mean, sample standard deviation (0 for one seed) and each seed's value."""
    v = [float(x) for x in values]
    mean = float(np.mean(v)) if v else math.nan
    std = float(np.std(v, ddof=1)) if len(v) > 1 else 0.0
    return {"mean": mean, "std": std, "per_seed": v}


Claim = Literal["b_better", "a_better", "no_difference"]


@dataclass
class Verdict:
    """The outcome of comparing B against A over seeds, and the sentence that may be printed."""

    claim: Claim
    text: str
    per_seed: list[Interval]

    def to_dict(self) -> dict[str, object]:
        return {"claim": self.claim, "text": self.text, "per_seed": [i.to_dict() for i in self.per_seed]}


def compare_over_seeds(per_seed: Sequence[Interval], metric: str, name_a: str, name_b: str,
                       better: Literal["lower", "higher"]) -> Verdict:
    """Claim a difference only when every seed's paired interval of (B − A) excludes zero in one direction.

    ``better`` says which direction of ``metric`` is an improvement ("lower" for CHAIR_i). With no
    seeds, or any seed whose interval includes zero or points the other way, the claim is
    ``no_difference`` and the text gives each seed's interval."""
    per_seed = list(per_seed)
    sign = -1.0 if better == "lower" else 1.0
    ivs = "; ".join(f"seed {i}: {iv.text()}" for i, iv in enumerate(per_seed))
    spread = f"{metric} difference {name_b} − {name_a} with paired 95% CIs over items ({ivs})"
    b_wins = bool(per_seed) and all(iv.excludes_zero() and sign * iv.value > 0 for iv in per_seed)
    a_wins = bool(per_seed) and all(iv.excludes_zero() and sign * iv.value < 0 for iv in per_seed)
    if b_wins:
        return Verdict("b_better", f"{name_b} beats {name_a} on {metric} on every seed: {spread}.", per_seed)
    if a_wins:
        return Verdict("a_better", f"{name_a} beats {name_b} on {metric} on every seed: {spread}.", per_seed)
    return Verdict("no_difference", f"{name_b} vs {name_a} on {metric}: no difference detectable at this sample "
                   f"size ({spread}).", per_seed)
