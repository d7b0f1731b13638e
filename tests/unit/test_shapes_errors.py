"""Score-only Shapes feedback (`shapes_errors`, `shapes_errors_noisy`): hand-worked scores, spans that mark
only *that* a mention is wrong, and the noisy judge's measured error rate against its setting."""

from __future__ import annotations

import math
import random

import pytest

from vlalign.rewards.base import REWARD_SOURCES, Sample
from vlalign.rewards.shapes_errors import Verdicts, flip_verdicts, judge_errors, miscount

# red circle and two green triangles
SCENE = {"image_size": 64, "objects": [
    {"color": "red", "shape": "circle", "x": 10, "y": 10},
    {"color": "green", "shape": "triangle", "x": 40, "y": 10},
    {"color": "green", "shape": "triangle", "x": 50, "y": 40},
]}  # fmt: skip


def _score(name, texts, scene=SCENE, **kw):
    return REWARD_SOURCES.get(name)(**kw).score([Sample([], "Describe the image.", t, {"scene": scene}) for t in texts])


def test_errors_scores_by_hand():
    texts = [
        "The image shows a red circle and two green triangles.",  # 0 wrong, 0 missed → 0
        "The image shows a red circle and a blue square.",  # blue square wrong, green triangle missed → −2
        "The image shows a blue square, a blue square and a red square.",  # 2 wrong types (once each) + 2 missed → −4
        "The image shows no red circle.",  # a negation names nothing: 2 missed → −2
    ]
    out = _score("shapes_errors", texts)
    assert out.rewards.tolist() == [0.0, -2.0, -4.0, -2.0]
    assert out.parts["wrong"].tolist() == [0.0, 1.0, 2.0, 0.0] and out.parts["missed"].tolist() == [0.0, 1.0, 2.0, 2.0]
    # omission_weight 0.5: −(1 + 0.5·1) = −1.5; −(2 + 0.5·2) = −3
    half = _score("shapes_errors", texts[1:3], omission_weight=0.5)
    assert half.rewards.tolist() == [-1.5, -3.0]


def test_errors_spans_reveal_no_correction():
    text = "The image shows a blue square, a blue square and a red square."
    (spans,) = _score("shapes_errors", [text]).spans
    # first mention of each wrong type, −1 each, kind "wrong" (never "color"/"object", which would hint at the fix)
    assert [(text[s.start : s.end], s.value, s.kind) for s in spans] == [("a blue square", -1.0, "wrong"),
                                                                       ("a red square", -1.0, "wrong")]  # fmt: skip
    assert not hasattr(_score("shapes_errors", [text]), "segments")  # no corrected spans at all


def _yes_no(answers, obj, scene=SCENE):
    meta = {"task": "yes_no", "scene": scene, "object": obj, "label": "ignored: the judge reads the scene"}
    return [Sample([], f"Is there a {obj} in the image?", a, dict(meta)) for a in answers]


def test_yes_no_answers_get_one_verdict_by_hand():
    source = REWARD_SOURCES.get("shapes_errors")(omission_weight=1.0)
    # red circle present: "Yes." right (0), "No." wrong (−1), neither word wrong (−1); no omissions for a question
    present = source.score(_yes_no(["Yes.", "No.", "The image shows a red circle."], "red circle"))
    assert present.rewards.tolist() == [0.0, -1.0, -1.0]
    assert present.parts["missed"].tolist() == [0.0, 0.0, 0.0]
    # blue square absent: "No." right, "Yes, there is." wrong
    absent = source.score(_yes_no(["No.", "  Yes, there is. "], "blue square"))
    assert absent.rewards.tolist() == [0.0, -1.0]
    # the wrong answer's span is the whole answer (stripped), −1, kind "wrong"; a right answer has none
    assert absent.spans[0] == []
    ((span,),) = absent.spans[1:]
    assert ("  Yes, there is. "[span.start : span.end], span.value, span.kind) == ("Yes, there is.", -1.0, "wrong")
    # the noisy judge flips the one verdict at rate 1: right becomes wrong and wrong becomes right
    flipped = REWARD_SOURCES.get("shapes_errors_noisy")(noise="flip", rate=1.0).score(_yes_no(["Yes.", "No."], "red circle"))
    assert flipped.rewards.tolist() == [-1.0, 0.0]


def test_unknown_task_names_the_known_ones():
    sample = Sample([], "Where is the red circle?", "Top left.", {"task": "position", "scene": SCENE})
    with pytest.raises(KeyError, match="unknown shapes_errors task 'position'.*Known: caption, yes_no"):
        REWARD_SOURCES.get("shapes_errors")().score([sample])


def test_bad_settings_name_the_key():
    with pytest.raises(ValueError, match="noise 'flop' is not a known kind; set noise to one of count, flip"):
        REWARD_SOURCES.get("shapes_errors_noisy")(noise="flop")
    with pytest.raises(ValueError, match="rate is a probability"):
        REWARD_SOURCES.get("shapes_errors_noisy")(rate=1.5)
    with pytest.raises(ValueError, match="omission_weight must be >= 0"):
        REWARD_SOURCES.get("shapes_errors")(omission_weight=-1)


class _Rigged(random.Random):
    """random() returns the given values in turn: the noise functions' draws, chosen by hand."""

    def __init__(self, values):
        super().__init__(0)
        self.values = list(values)

    def random(self):
        return self.values.pop(0)


def test_noise_functions_by_hand():
    v = judge_errors("The image shows a red circle and a blue square.", SCENE)  # wrong [F, T], missed [T]
    assert (v.wrong, v.missed) == ([False, True], [True])
    # rate 0.3: draws 0.1 (< 0.3: flip the red circle to wrong), 0.5 (keep), 0.2 (flip: the missed triangle overlooked)
    f = flip_verdicts(v, 0.3, _Rigged([0.1, 0.5, 0.2]))
    assert (f.wrong, f.missed, f.drawn, f.flipped, f.errors(1.0)) == ([True, True], [False], 3, 2, 2.0)
    # count: draw 0.2 < 0.3 → miscount, sign draw 0.7 ≥ 0.5 → −1: 2 errors reported as 1
    c = miscount(v, 0.3, _Rigged([0.2, 0.7]))
    assert (c.offset, c.errors(1.0), c.drawn, c.flipped) == (-1, 1.0, 1, 1)
    # a correct answer (0 errors) miscounted is always +1 (no sign draw is used)
    ok = judge_errors("The image shows a red circle and two green triangles.", SCENE)
    assert miscount(ok, 0.3, _Rigged([0.29])).errors(1.0) == 1.0
    assert miscount(ok, 0.3, _Rigged([0.31])).errors(1.0) == 0.0
    assert judge_errors("Nothing here.", SCENE) == Verdicts([], [], [True, True])


def _many_samples(n):
    rng = random.Random(7)
    colours, shapes = ["red", "green", "blue", "yellow"], ["circle", "square", "triangle"]
    texts = []
    for _ in range(n):
        objs = [f"a {rng.choice(colours)} {rng.choice(shapes)}" for _ in range(rng.randint(1, 3))]
        texts.append("The image shows " + " and ".join(objs) + ".")
    return texts


@pytest.mark.parametrize("noise,rate", [("flip", 0.1), ("flip", 0.3), ("count", 0.2)])
def test_noisy_judge_rate_matches_its_setting(noise, rate):
    texts = _many_samples(2000)
    out = _score("shapes_errors_noisy", texts, noise=noise, rate=rate, seed=3)
    drawn, flipped = out.info["noise_drawn"], out.info["noise_flipped"]
    # flip: one draw per verdict (≈ 2000 × 4); count: one per answer. Binomial standard error at n draws:
    # sqrt(rate·(1−rate)/n) ≤ 0.009 here; 5 standard errors is a bound a correct sampler fails ~1 in 3.5 million
    se = math.sqrt(rate * (1 - rate) / drawn)
    verdicts = sum(len(v.wrong) + len(v.missed) for v in (judge_errors(t, SCENE) for t in texts))
    assert drawn == (2000 if noise == "count" else verdicts)
    assert abs(flipped / drawn - rate) < 5 * se, (flipped / drawn, rate)
    exact = _score("shapes_errors", texts).rewards
    changed = (out.rewards != exact).float().mean().item()
    assert changed > 0  # the noise reaches the rewards
    # deterministic given the seed (and independent of batching / order); another seed, other noise
    again = _score("shapes_errors_noisy", texts[::-1], noise=noise, rate=rate, seed=3).rewards.flip(0)
    assert again.tolist() == out.rewards.tolist()
    other = _score("shapes_errors_noisy", texts, noise=noise, rate=rate, seed=4).rewards
    assert other.tolist() != out.rewards.tolist()


def test_rate_zero_is_the_exact_judge():
    texts = _many_samples(50)
    exact = _score("shapes_errors", texts)
    for noise in ("flip", "count"):
        noisy = _score("shapes_errors_noisy", texts, noise=noise, rate=0.0)
        assert noisy.rewards.tolist() == exact.rewards.tolist() and noisy.info["noise_flipped"] == 0
