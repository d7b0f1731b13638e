"""Monitors: each fires on a deliberate synthetic trigger and stays silent on a healthy stream."""

from __future__ import annotations

import math
import random

import pytest

from vlalign.monitors import MONITORS, MonitorSet, MonitorSpec, batch_text_stats, repetition_rate, trend
from vlalign.monitors.base import Window


def healthy_stream(steps: int = 60, seed: int = 0) -> list[dict[str, float]]:
    """What a good run looks like: proxy and gold reward rise together with noise, KL grows slowly
    and stays small, entropy declines gently, lengths wander, train/held-out accuracy rise together."""
    rng = random.Random(seed)
    out = []
    for t in range(steps):
        frac = t / steps
        out.append(
            {
                "reward/mean": 0.2 + 0.5 * frac + rng.gauss(0, 0.03),
                "reward/std": 0.3 + rng.gauss(0, 0.02),
                "gold/mean": 0.3 + 0.4 * frac + rng.gauss(0, 0.02),
                "response/length_mean": 12 + rng.gauss(0, 1.5),
                "response/repetition": 0.05 + abs(rng.gauss(0, 0.02)),
                "kl/mean": 0.01 + 0.3 * frac + abs(rng.gauss(0, 0.01)),
                "policy/entropy": 2.0 - 0.8 * frac + rng.gauss(0, 0.05),
                "accuracy": 0.55 + 0.35 * frac,
                **({"eval/accuracy": 0.55 + 0.25 * frac + rng.gauss(0, 0.01)} if t % 5 == 0 else {}),
            }
        )
    return out


def run_stream(spec: MonitorSpec, stream: list[dict[str, float]]):
    ms = MonitorSet([spec])
    for step, metrics in enumerate(stream):
        alerts = ms.update(step, metrics)
        if alerts:
            return step, alerts
    return None, []


ALL = sorted(MONITORS.names())


def test_window_trend_by_hand():
    # Straight line 1, 2, 3, 4: slope 1 × (n−1 = 3) = 3 = last − first.
    assert trend([1, 2, 3, 4]) == pytest.approx(3.0)
    # [0, 2, 1]: x̄=1, ȳ=1; Σ(x−x̄)(y−ȳ) = (−1)(−1)+0+(1)(0) = 1; Σ(x−x̄)² = 2 → slope ½, × 2 = 1.0
    assert trend([0, 2, 1]) == pytest.approx(1.0)
    assert trend([5.0]) == 0.0
    w = Window(3)
    for v in [1.0, float("nan"), 2.0, 3.0, 4.0]:  # NaN is skipped, oldest value falls out
        w.push({"x": v}, "x")
    assert list(w.values) == [2.0, 3.0, 4.0]


def test_repetition_rate_by_hand():
    # "a b a b a b", bigrams: ab ba ab ba ab → 5 grams, 2 distinct → 1 − 2/5 = 0.6
    assert repetition_rate(["a", "b", "a", "b", "a", "b"], n=2) == pytest.approx(0.6)
    assert repetition_rate(["the", "red", "circle"], n=2) == 0.0
    assert repetition_rate(["x"], n=3) == 0.0
    stats = batch_text_stats([[1, 2, 3, 4], [1, 1, 1, 1]], n=2)
    # lengths 4, 4; repetition 0 and 1 − 1/3 → mean 1/3
    assert stats["response/length_mean"] == 4.0
    assert stats["response/repetition"] == pytest.approx(1 / 3)


@pytest.mark.parametrize("name", ALL)
def test_silent_on_healthy_stream(name):
    step, alerts = run_stream(MonitorSpec(name=name, action="stop"), healthy_stream())
    assert step is None, [a.message for a in alerts]


def _with(stream, key, fn):
    return [{**m, key: fn(t, m)} for t, m in enumerate(stream)]


def trigger_reward_hacking():
    # After step 20 the proxy keeps rising while the gold verifier falls by 0.02/step.
    s = healthy_stream()
    return _with(s, "gold/mean", lambda t, m: m["gold/mean"] if t < 20 else 0.5 - 0.02 * (t - 20)), 20


def trigger_length():
    s = healthy_stream()
    return _with(s, "response/length_mean", lambda t, m: m["response/length_mean"] + max(0, t - 20) * 3.0), 20


def trigger_repetition():
    s = healthy_stream()
    return _with(s, "response/repetition", lambda t, m: 0.8 if t >= 30 else m["response/repetition"]), 30


def trigger_kl():
    s = healthy_stream()
    return _with(s, "kl/mean", lambda t, m: m["kl/mean"] * (1.6 ** max(0, t - 25))), 25


def trigger_reward_collapse():
    s = healthy_stream()
    s = _with(s, "reward/mean", lambda t, m: m["reward/mean"] if t < 30 else -0.2)  # falls ~0.65 from its best
    return s, 30


def trigger_entropy():
    s = healthy_stream()
    return _with(s, "policy/entropy", lambda t, m: m["policy/entropy"] if t < 30 else 0.01), 30


def trigger_overfit():
    s = healthy_stream()
    s = _with(s, "accuracy", lambda t, m: 0.99 if t >= 30 else m["accuracy"])
    return _with(s, "eval/accuracy", lambda t, m: (0.8 - 0.03 * (t - 30) if t >= 30 else m.get("eval/accuracy"))
                 if "eval/accuracy" in m else None), 30


TRIGGERS = {
    "reward_hacking": trigger_reward_hacking,
    "length_explosion": trigger_length,
    "repetition": trigger_repetition,
    "kl_explosion": trigger_kl,
    "reward_collapse": trigger_reward_collapse,
    "entropy_collapse": trigger_entropy,
    "preference_overfit": trigger_overfit,
}


def test_every_registered_monitor_has_a_trigger_test():
    assert set(TRIGGERS) == set(ALL)


@pytest.mark.parametrize("name", ALL)
def test_fires_on_deliberate_trigger(name):
    stream, onset = TRIGGERS[name]()
    stream = [{k: v for k, v in m.items() if v is not None} for m in stream]
    step, alerts = run_stream(MonitorSpec(name=name, action="rollback"), stream)
    assert step is not None, f"{name} did not fire"
    assert onset <= step <= onset + 25, f"{name} fired at {step}, trigger began at {onset}"
    assert alerts[0].action == "rollback" and alerts[0].evidence and alerts[0].message


def test_kl_nan_and_threshold_fire_immediately():
    ms = MonitorSet([MonitorSpec(name="kl_explosion", action="stop", kwargs={"threshold": 1.0})])
    assert ms.update(0, {"kl/mean": 0.1}) == []
    assert ms.update(1, {"kl/mean": 1.5})[0].evidence["kl"] == 1.5
    ms2 = MonitorSet([MonitorSpec(name="kl_explosion")])
    assert ms2.update(0, {"kl/mean": math.nan})[0].monitor == "kl_explosion"


def test_reward_std_collapse_fires_after_patience():
    ms = MonitorSet([MonitorSpec(name="reward_collapse", kwargs={"patience": 3, "max_drop": None})])
    fired = [bool(ms.update(t, {"reward/std": 0.0, "reward/mean": 1.0})) for t in range(4)]
    assert fired == [False, False, True, False]  # fires on the 3rd, then the cooldown keeps it quiet


def test_decision_picks_most_drastic_and_logs(caplog):
    ms = MonitorSet(
        [
            MonitorSpec(name="kl_explosion", action="warn", kwargs={"threshold": 1.0}),
            MonitorSpec(name="repetition", action="stop", kwargs={"patience": 1}),
        ]
    )
    with caplog.at_level("WARNING", logger="vlalign.monitors"):
        alerts = ms.update(0, {"kl/mean": 2.0, "response/repetition": 0.9})
    assert MonitorSet.decision(alerts) == "stop"
    assert MonitorSet.decision([]) == "none"
    assert MonitorSet.as_metrics(alerts) == {"monitor/kl_explosion": 1.0, "monitor/repetition": 1.0}
    assert "kl_explosion" in caplog.text and "repetition" in caplog.text


def test_unknown_monitor_and_bad_kwargs_fail_clearly():
    with pytest.raises(KeyError, match="did you mean|Did you mean"):
        MonitorSet([MonitorSpec(name="kl_explosian")])
    with pytest.raises(ValueError, match="kl_explosion.*bad kwargs"):
        MonitorSet([MonitorSpec(name="kl_explosion", kwargs={"treshold": 1})])
