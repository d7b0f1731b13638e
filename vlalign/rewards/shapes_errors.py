"""Score-only Shapes feedback: how many objects an answer gets wrong, and nothing about the right answer.

WHY: the Shapes rule verifiers (:mod:`vlalign.rewards.shapes_rules`) return corrections with their
scores, so supervised training on the corrected answers learns as much as any preference or RL method
(every Shapes experiment's same-budget control matched its method). A human rater or an AI judge usually
gives a score and no fix. These sources score like such a judge:

- ``shapes_errors``: reward = −(wrong + ``omission_weight`` · missed), where ``wrong`` counts the object
  types an answer names that are not in the image and ``missed`` the types in the image it does not
  name. The judged spans (for ``reward_granularity: segment``) mark only *that* a mention is wrong:
  value −1 on the first mention of each wrong type, kind ``"wrong"``, no correction; the omission part
  of the score has no span (segment PPO puts it on the last token). A yes/no question about one object
  (``meta["task"] == "yes_no"``) gets one verdict: wrong (−1, the whole answer its span) when the answer
  says yes / no against the scene, or neither; omissions do not apply. Each task's judge is one entry of
  :data:`TASK_JUDGES`.
- ``shapes_errors_noisy``: the same judge with seeded noise (:data:`ERROR_NOISE`): ``flip`` turns each
  verdict (each named type: wrong or not; each unnamed present type: missed or not) the other way with
  probability ``rate``; ``count`` reports the error count off by one with probability ``rate``.

The noise of a sample is drawn from a stream seeded by (``seed``, prompt, answer, scene): a judge at
temperature 0 is a function of its input, a resumed run scores a sample as the interrupted one did, and
the order or batching of the samples changes nothing. ``RewardOutput.info`` counts the verdicts judged
and changed (``noise_drawn``, ``noise_flipped``), so a run can report the noise it actually got.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from vlalign.data.shapes.scene import objects_of
from vlalign.data.shapes.text import Mention, parse_mentions
from vlalign.evaluation.hallucination import parse_yes_no
from vlalign.registry import Registry
from vlalign.rewards.base import REWARD_SOURCES, JudgedSpan, RewardOutput, Sample
from vlalign.rewards.shapes_rules import scene_of


@dataclass
class Verdicts:
    """A judge's verdicts on one answer. ``named``: each object type the answer names, once, in text order,
    with its first mention; ``wrong[i]``: the judge says ``named[i]`` is not in the image; ``missed``: one
    verdict per present type the answer does not name (True = the judge counts it as left out);
    ``offset``: added to the error count (the ``count`` noise)."""

    named: list[Mention]
    wrong: list[bool]
    missed: list[bool]
    offset: int = 0
    drawn: int = field(default=0, compare=False)  # noise draws: verdicts (flip) or counts (count) exposed to noise
    flipped: int = field(default=0, compare=False)  # of them, how many the noise changed (the measured rate)

    def errors(self, omission_weight: float) -> float:
        return sum(self.wrong) + omission_weight * sum(self.missed) + self.offset


def judge_errors(text: str, scene: Mapping[str, Any]) -> Verdicts:
    """The exact verdicts on ``text`` against ``scene`` (negated mentions, "no red circle", name nothing)."""
    truth = objects_of(scene)
    named: dict[tuple[str, str], Mention] = {}
    for m in parse_mentions(text):
        if not m.negated and m.obj not in named:
            named[m.obj] = m
    return Verdicts(list(named.values()), [obj not in truth for obj in named], [True for t in truth if t not in named])


def judge_yes_no(text: str, scene: Mapping[str, Any], asked: str) -> Verdicts:
    """The exact verdict on a yes/no answer about the object ``asked`` ("red circle"): one named object (its
    span the whole answer), wrong unless the answer parses to the scene's truth; an answer that says neither
    yes nor no is wrong too (as POPE counts it)."""
    color, shape = asked.split()
    truth = "yes" if (color, shape) in objects_of(scene) else "no"
    start = len(text) - len(text.lstrip())
    mention = Mention(color, shape, 1, start, max(len(text.rstrip()), start))
    return Verdicts([mention], [parse_yes_no(text) != truth], [])


# meta["task"] -> (sample, its scene) -> exact verdicts; records without a task are captions
TASK_JUDGES: Registry[Callable[[Sample, Mapping[str, Any]], Verdicts]] = Registry("shapes_errors task")
TASK_JUDGES.register("caption")(lambda sample, scene: judge_errors(sample.response, scene))
TASK_JUDGES.register("yes_no")(lambda sample, scene: judge_yes_no(sample.response, scene, str(sample.meta["object"])))


def exact_verdicts(sample: Sample, scene: Mapping[str, Any]) -> Verdicts:
    """The exact verdicts on ``sample`` by the judge of its task (``meta["task"]``, default caption)."""
    return TASK_JUDGES.get(sample.meta.get("task", "caption"))(sample, scene)


def error_reward(v: Verdicts, omission_weight: float) -> float:
    """−(wrong + omission_weight · missed + offset): 0 for an answer that names exactly what is there."""
    return -v.errors(omission_weight)


def wrong_spans(text: str, v: Verdicts) -> list[JudgedSpan]:
    """Value −1 on the first mention of each type judged wrong; kind ``wrong`` (never what should stand there)."""
    return [JudgedSpan(m.start, m.end, -1.0, "wrong") for m, bad in zip(v.named, v.wrong) if bad]


# ------------------------------------------------------------------------------------------ noise

# kind -> (exact verdicts, rate, rng) -> noisy verdicts; a new kind of judge error is one function here
ERROR_NOISE: Registry[Callable[[Verdicts, float, random.Random], Verdicts]] = Registry("error noise")


@ERROR_NOISE.register("flip")
def flip_verdicts(v: Verdicts, rate: float, rng: random.Random) -> Verdicts:
    """Each verdict (named type wrong / right, unnamed present type missed / overlooked) turned the other
    way with probability ``rate``, independently: a judge that misperceives single objects."""
    wrong = [(not w) if rng.random() < rate else w for w in v.wrong]
    missed = [(not m) if rng.random() < rate else m for m in v.missed]
    flipped = sum(a != b for a, b in zip(wrong, v.wrong)) + sum(a != b for a, b in zip(missed, v.missed))
    return Verdicts(v.named, wrong, missed, v.offset, len(wrong) + len(missed), flipped)


@ERROR_NOISE.register("count")
def miscount(v: Verdicts, rate: float, rng: random.Random) -> Verdicts:
    """With probability ``rate`` the error count is reported off by one (+1 or −1 at random; +1 when the
    true count is 0, so a miscount is never hidden by a floor): a judge that counts sloppily. One draw per
    answer (its count)."""
    off = 0
    if rng.random() < rate:
        off = 1 if (sum(v.wrong) + sum(v.missed) == 0 or rng.random() < 0.5) else -1
    return Verdicts(v.named, v.wrong, v.missed, v.offset + off, 1, int(off != 0))


def noise_stream(seed: int, sample: Sample, scene: Mapping[str, Any]) -> random.Random:
    """The sample's own RNG: seeded by (seed, prompt, answer, scene), hashed with SHA-512 (``random.Random``
    of a string), so it is the same in every process and independent of batching."""
    key = json.dumps([seed, sample.prompt, sample.response, scene], sort_keys=True, default=str)
    return random.Random(key)


# ------------------------------------------------------------------------------------------ sources


class ShapesErrors:
    """``shapes_errors``: −(wrong + omission_weight · missed) per answer, spans marking wrong mentions."""

    name = "shapes_errors"

    def __init__(self, omission_weight: float = 1.0) -> None:
        if omission_weight < 0:
            raise ValueError(f"{self.name}: omission_weight must be >= 0 (0 = omissions cost nothing), got {omission_weight}")
        self.omission_weight = omission_weight

    def verdicts(self, sample: Sample, scene: Mapping[str, Any]) -> Verdicts:
        return exact_verdicts(sample, scene)

    def score(self, samples: list[Sample]) -> RewardOutput:
        scenes = [scene_of(s) for s in samples]
        vs = [self.verdicts(s, sc) for s, sc in zip(samples, scenes)]
        rewards = torch.tensor([error_reward(v, self.omission_weight) for v in vs], dtype=torch.float32)  # (N,)
        parts = {"wrong": torch.tensor([float(sum(v.wrong)) for v in vs]),  # (N,)
                 "missed": torch.tensor([float(sum(v.missed)) for v in vs])}  # fmt: skip
        info = {"noise_drawn": float(sum(v.drawn for v in vs)), "noise_flipped": float(sum(v.flipped for v in vs))}
        return RewardOutput(rewards, parts, info, spans=[wrong_spans(s.response, v) for s, v in zip(samples, vs)])


class ShapesErrorsNoisy(ShapesErrors):
    """``shapes_errors_noisy``: :class:`ShapesErrors` through a judge that errs (``noise``: flip | count) at
    ``rate``, reproducibly for a given ``seed``."""

    name = "shapes_errors_noisy"

    def __init__(self, noise: str = "flip", rate: float = 0.1, seed: int = 0, omission_weight: float = 1.0) -> None:
        super().__init__(omission_weight)
        if noise not in ERROR_NOISE:
            raise ValueError(f"{self.name}: noise {noise!r} is not a known kind; set noise to one of "
                             f"{', '.join(ERROR_NOISE.names())}")  # fmt: skip
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"{self.name}: rate is a probability, got {rate}; set rate between 0 and 1 (e.g. 0.1)")
        self.noise, self.rate, self.seed = ERROR_NOISE.get(noise), rate, seed

    def verdicts(self, sample: Sample, scene: Mapping[str, Any]) -> Verdicts:
        return self.noise(exact_verdicts(sample, scene), self.rate, noise_stream(self.seed, sample, scene))


REWARD_SOURCES.register("shapes_errors")(ShapesErrors)
REWARD_SOURCES.register("shapes_errors_noisy")(ShapesErrorsNoisy)
