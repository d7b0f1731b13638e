"""Uncertainty of the experiments' numbers and the one rule for their comparison verdicts.

Every rate is shown with its 95% bootstrap interval over the evaluated items; across seeds, with
mean ± std and each seed (:func:`vlalign.evaluation.stats.seed_spread`). A comparison ("DPO beats SFT",
"the control beats DPO") is claimed only when the paired bootstrap of the difference over the same
items excludes zero in the same direction on every seed (:func:`vlalign.evaluation.stats.compare_over_seeds`);
otherwise the verdict says "no difference detectable at this sample size" and gives the intervals.

The maths lives in :mod:`vlalign.evaluation.stats` and :mod:`vlalign.evaluation.items`; this module
only applies it to the experiments' evaluations and writes the sentences, with the seeds' real
numbers in them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from vlalign.evaluation.items import paired_difference
from vlalign.evaluation.report import fmt_value
from vlalign.evaluation.stats import Interval, Verdict, compare_over_seeds, seed_spread
from vlalign.experiments.evaluator import Evaluation

# which direction of a metric is an improvement (a metric absent here is not compared)
BETTER: dict[str, Literal["lower", "higher"]] = {
    "chair_i": "lower", "chair_s": "lower", "bias_rate": "lower", "object_recall": "higher",
    "pope_f1": "higher", "pope_accuracy": "higher", "pope_adversarial_f1": "higher",
    "preference_accuracy": "higher", "gold_reward": "higher",
    "harmful_compliance_rate": "lower", "benign_refusal_rate": "lower", "benign_exact_rate": "higher",
    "eval_reward": "higher", "eval_cost": "lower",
}  # fmt: skip

CLAIM_WORDS = {"b_better": "{b} beats {a}", "a_better": "{a} beats {b}",
               "no_difference": "no difference detectable at this sample size"}  # fmt: skip


def ci_text(iv: Mapping[str, float] | Interval | None, digits: int = 3) -> str:
    """``0.192 [0.170, 0.214]``; ``–`` when there is no interval."""
    if iv is None:
        return "–"
    d = iv.to_dict() if isinstance(iv, Interval) else iv
    if any(not isinstance(d.get(k), (int, float)) or math.isnan(d[k]) for k in ("value", "low", "high")):
        return fmt_value(d.get("value"))
    return f"{d['value']:.{digits}f} [{d['low']:.{digits}f}, {d['high']:.{digits}f}]"


def value_ci(ev: Evaluation, metric: str) -> str:
    """A metric of one evaluation with its interval when it has one, else the bare value."""
    iv = ev.intervals.get(metric)
    return ci_text(iv) if iv else fmt_value(ev.metrics.get(metric))


def comparable(metric: str, *evs: Evaluation) -> bool:
    """A paired comparison needs a direction and the per-item values of every side."""
    return metric in BETTER and all(metric in ev.items for ev in evs)


def compare(a: Sequence[Evaluation], b: Sequence[Evaluation], metric: str, name_a: str, name_b: str,
            seeds: Sequence[int]) -> dict[str, Any]:  # fmt: skip
    """``name_b`` vs ``name_a`` on ``metric``, one paired interval of (B − A) per seed (``a[i]`` and
    ``b[i]`` measured on seed ``seeds[i]``, on the same items). Returns the claim, each seed's interval and
    the sentence: "B beats A ..." only when every seed's interval excludes zero in B's favour."""
    if not (len(a) == len(b) == len(seeds)):
        raise ValueError(f"compare: {len(a)} and {len(b)} evaluations for {len(seeds)} seeds")
    per_seed = [paired_difference(x.items[metric], y.items[metric]) for x, y in zip(a, b)]
    v: Verdict = compare_over_seeds(per_seed, metric, name_a, name_b, BETTER[metric])
    diffs = "; ".join(f"seed {s}: {iv.text()}" for s, iv in zip(seeds, per_seed))
    head = CLAIM_WORDS[v.claim].format(a=name_a, b=name_b)
    every = " on every seed" if v.claim != "no_difference" and len(seeds) > 1 else ""
    text = f"{name_b} vs {name_a} on {metric}: {head}{every} (paired 95% CI of {name_b} − {name_a} over items: {diffs})."
    return {"claim": v.claim, "metric": metric, "a": name_a, "b": name_b, "seeds": list(seeds),
            "per_seed": [iv.to_dict() for iv in per_seed], "text": text}  # fmt: skip


def spread(values: Sequence[float], seeds: Sequence[int]) -> dict[str, Any]:
    """Across seeds: mean, sample std (0 for one seed), each seed's value, and which seeds they are."""
    return {**seed_spread(values), "seeds": list(seeds)}


def spread_text(s: Mapping[str, Any]) -> str:
    """``0.193 ± 0.016 (0.176 / 0.195 / 0.208)``."""
    per = " / ".join(fmt_value(v) for v in s["per_seed"])
    return f"{fmt_value(s['mean'])} ± {fmt_value(s['std'])} ({per})"
