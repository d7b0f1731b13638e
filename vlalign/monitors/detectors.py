"""Detectors for the failure modes of preference optimisation, one small class each.

Every detector reads named keys of the per-step metrics dict (the key names are kwargs, so the
DPO trainer's ``accuracy`` and the RL trainers' ``reward/mean`` are both just configuration)
and returns ``(message, evidence)`` when it sees its failure mode, else ``None``. Thresholds are
deliberately explicit kwargs with defaults tuned to be quiet on a healthy tiny run: a monitor that
cries wolf gets switched off.

Metric keys the RL trainers log (see :mod:`vlalign.trainers.rl_common`):
``reward/mean``, ``reward/std``, ``gold/mean`` (held-out verifier, when configured),
``response/length_mean``, ``response/repetition``, ``kl/mean``, ``policy/entropy``.
The DPO trainer logs ``accuracy``, ``margin``, ``kl_ref`` every step and, with held-out pairs and
``eval_steps``, ``eval/accuracy``, ``eval/loss``, ``eval/margin``; SFT logs ``loss`` and ``eval/loss``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from vlalign.monitors.base import MONITORS, Streak, Window, is_number, mean, trend

Evidence = tuple[str, dict[str, float]] | None


@MONITORS.register("reward_hacking")
class RewardHacking:
    """Proxy reward rising while a held-out gold metric falls (Goodhart): the policy is learning
    the reward model's blind spots, not the task. Gold = a ground-truth verifier (Shapes) or a
    second, independently trained reward model scored on the same rollouts."""

    name = "reward_hacking"

    def __init__(
        self,
        proxy_key: str = "reward/mean",
        gold_key: str = "gold/mean",
        window: int = 8,
        min_proxy_rise: float = 0.1,
        min_gold_drop: float = 0.05,
    ) -> None:
        self.proxy_key, self.gold_key = proxy_key, gold_key
        self.proxy, self.gold = Window(window), Window(window)
        self.min_proxy_rise, self.min_gold_drop = min_proxy_rise, min_gold_drop

    def observe(self, step: int, metrics: Mapping[str, Any]) -> Evidence:
        self.proxy.push(metrics, self.proxy_key)
        self.gold.push(metrics, self.gold_key)
        if not (self.proxy.full and self.gold.full):
            return None
        rise, drop = trend(self.proxy.values), trend(self.gold.values)
        if rise >= self.min_proxy_rise and drop <= -self.min_gold_drop:
            return (
                f"{self.proxy_key} rose by {rise:+.3f} while {self.gold_key} fell by {drop:+.3f} over the "
                f"last {len(self.gold)} observations: the policy is exploiting the reward. Raise the KL "
                "coefficient, stop earlier, or fix the reward source.",
                {"proxy_trend": rise, "gold_trend": drop},
            )
        return None


@MONITORS.register("length_explosion")
class LengthExplosion:
    """Mean response length grown far beyond its early level: the classic hack of a reward that
    (often unintentionally) pays for length. Baseline = mean of the first ``baseline_steps``
    observations, frozen; current = mean of the last ``window``."""

    name = "length_explosion"

    def __init__(
        self,
        key: str = "response/length_mean",
        baseline_steps: int = 3,
        window: int = 3,
        factor: float = 2.0,
        min_increase: float = 8.0,
    ) -> None:
        self.key, self.factor, self.min_increase = key, factor, min_increase
        self.baseline_steps = baseline_steps
        self.first: list[float] = []
        self.recent = Window(max(window, 2))
        self.window = window

    def observe(self, step: int, metrics: Mapping[str, Any]) -> Evidence:
        if not self.recent.push(metrics, self.key):
            return None
        if len(self.first) < self.baseline_steps:
            self.first.append(self.recent.last()[0])
            return None
        if len(self.recent) < self.window:
            return None
        base, now = mean(self.first), mean(self.recent.last(self.window))
        if now >= self.factor * base and now - base >= self.min_increase:
            return (
                f"{self.key} grew from {base:.1f} to {now:.1f} (×{now / max(base, 1e-8):.1f}): responses are "
                "getting longer, a sign the reward pays for length. Add a length penalty or normalise the reward.",
                {"baseline": base, "current": now},
            )
        return None


@MONITORS.register("repetition")
class Repetition:
    """Degenerate repeated n-grams in the responses (``response/repetition`` = fraction of
    repeated n-grams, see :func:`vlalign.monitors.text_stats.repetition_rate`) above a threshold
    for ``patience`` consecutive observations."""

    name = "repetition"

    def __init__(self, key: str = "response/repetition", threshold: float = 0.5, patience: int = 3) -> None:
        self.key, self.threshold = key, threshold
        self.streak = Streak(patience)

    def observe(self, step: int, metrics: Mapping[str, Any]) -> Evidence:
        value = metrics.get(self.key)
        if not is_number(value):
            return None
        if self.streak.update(float(value) >= self.threshold):
            return (
                f"{self.key}={value:.2f} ≥ {self.threshold} for {self.streak.count} observations: the policy "
                "repeats itself. Lower the learning rate or raise the KL coefficient.",
                {"repetition": float(value), "streak": float(self.streak.count)},
            )
        return None


@MONITORS.register("kl_explosion")
class KLExplosion:
    """KL to the reference past an absolute threshold, non-finite, or multiplied by
    ``growth_factor`` within ``window`` observations (growing too fast even if still small)."""

    name = "kl_explosion"

    def __init__(
        self,
        key: str = "kl/mean",
        threshold: float = 10.0,
        patience: int = 1,
        window: int = 5,
        growth_factor: float = 8.0,
        min_kl: float = 0.5,
    ) -> None:
        self.key, self.threshold = key, threshold
        self.streak = Streak(patience)
        self.recent = Window(window)
        self.growth_factor, self.min_kl = growth_factor, min_kl

    def observe(self, step: int, metrics: Mapping[str, Any]) -> Evidence:
        value = metrics.get(self.key)
        if not is_number(value):
            return None
        kl = float(value)
        if not math.isfinite(kl):
            return (f"{self.key} is {kl}: the policy diverged from the reference.", {"kl": kl})
        self.recent.push(metrics, self.key)
        if self.streak.update(kl >= self.threshold):
            return (
                f"{self.key}={kl:.3f} ≥ threshold {self.threshold}: the policy has drifted far from the "
                "reference. Raise the KL coefficient (or use the adaptive controller) or lower the learning rate.",
                {"kl": kl, "threshold": self.threshold},
            )
        if self.recent.full:
            start = self.recent.values[0]
            if kl >= self.min_kl and kl >= self.growth_factor * max(start, 1e-8):
                return (
                    f"{self.key} grew ×{kl / max(start, 1e-8):.1f} ({start:.3f} → {kl:.3f}) within "
                    f"{len(self.recent)} observations: KL is running away.",
                    {"kl": kl, "kl_window_start": start},
                )
        return None


@MONITORS.register("reward_collapse")
class RewardCollapse:
    """The reward signal died: its spread stayed ~0 for ``patience`` observations (every sample
    scores the same, so group-relative advantages are all zero), or its smoothed mean fell more
    than ``max_drop`` below the best it reached."""

    name = "reward_collapse"

    def __init__(
        self,
        mean_key: str = "reward/mean",
        std_key: str = "reward/std",
        min_std: float = 1e-4,
        patience: int = 5,
        max_drop: float | None = 0.5,
        smooth: int = 3,
    ) -> None:
        self.mean_key, self.std_key = mean_key, std_key
        self.min_std, self.max_drop = min_std, max_drop
        self.streak = Streak(patience)
        self.recent = Window(max(smooth, 2))
        self.smooth = smooth
        self.best = -math.inf

    def observe(self, step: int, metrics: Mapping[str, Any]) -> Evidence:
        std = metrics.get(self.std_key)
        if is_number(std) and self.streak.update(float(std) <= self.min_std):
            return (
                f"{self.std_key}={float(std):.2e} for {self.streak.count} observations: all samples get the same "
                "reward, so there is no learning signal. Raise the sampling temperature or check the reward source.",
                {"reward_std": float(std), "streak": float(self.streak.count)},
            )
        if self.max_drop is None or not self.recent.push(metrics, self.mean_key):
            return None
        if len(self.recent) < self.smooth:
            return None
        now = mean(self.recent.last(self.smooth))
        self.best = max(self.best, now)
        if self.best - now >= self.max_drop:
            return (
                f"{self.mean_key} (smoothed) fell from its best {self.best:.3f} to {now:.3f}: the reward collapsed. "
                "Roll back and lower the learning rate.",
                {"best": self.best, "current": now},
            )
        return None


@MONITORS.register("entropy_collapse")
class EntropyCollapse:
    """Policy entropy (mean per response token) below ``min_entropy`` for ``patience`` observations,
    or below ``min_ratio`` × its early level: the policy became deterministic and stops exploring."""

    name = "entropy_collapse"

    def __init__(
        self,
        key: str = "policy/entropy",
        min_entropy: float = 0.05,
        patience: int = 3,
        min_ratio: float | None = 0.1,
        baseline_steps: int = 3,
    ) -> None:
        self.key, self.min_entropy, self.min_ratio = key, min_entropy, min_ratio
        self.streak = Streak(patience)
        self.baseline_steps = baseline_steps
        self.first: list[float] = []

    def observe(self, step: int, metrics: Mapping[str, Any]) -> Evidence:
        value = metrics.get(self.key)
        if not is_number(value) or not math.isfinite(float(value)):
            return None
        ent = float(value)
        if len(self.first) < self.baseline_steps:
            self.first.append(ent)
        low_abs = ent <= self.min_entropy
        low_rel = (
            self.min_ratio is not None
            and len(self.first) == self.baseline_steps
            and ent <= self.min_ratio * mean(self.first)
        )
        if self.streak.update(low_abs or low_rel):
            return (
                f"{self.key}={ent:.4f} (early level {mean(self.first):.4f}) for {self.streak.count} observations: "
                "the policy collapsed to near-deterministic outputs. Add an entropy bonus or raise the KL coefficient.",
                {"entropy": ent, "baseline": mean(self.first)},
            )
        return None


@MONITORS.register("preference_overfit")
class PreferenceOverfit:
    """DPO-style overfitting: training preference accuracy at ~1 while held-out accuracy falls
    over the last ``window`` held-out evaluations (DPO with ``data.eval`` or ``data.eval_fraction``
    and ``eval_steps`` logs both keys)."""

    name = "preference_overfit"

    def __init__(
        self,
        train_key: str = "accuracy",
        heldout_key: str = "eval/accuracy",
        train_high: float = 0.95,
        window: int = 4,
        min_drop: float = 0.05,
    ) -> None:
        self.train_key, self.heldout_key = train_key, heldout_key
        self.train_high, self.min_drop = train_high, min_drop
        self.heldout = Window(window)
        self.train_last: float | None = None

    def observe(self, step: int, metrics: Mapping[str, Any]) -> Evidence:
        train = metrics.get(self.train_key)
        if is_number(train):
            self.train_last = float(train)
        if not self.heldout.push(metrics, self.heldout_key) or not self.heldout.full:
            return None
        drop = trend(self.heldout.values)
        if self.train_last is not None and self.train_last >= self.train_high and drop <= -self.min_drop:
            return (
                f"{self.train_key}={self.train_last:.3f} while {self.heldout_key} fell by {drop:+.3f} over the "
                f"last {len(self.heldout)} evaluations: the model memorises the training pairs. Stop earlier, "
                "raise beta, or add data.",
                {"train_accuracy": self.train_last, "heldout_trend": drop},
            )
        return None
