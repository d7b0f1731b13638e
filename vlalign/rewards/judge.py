"""Judge-model rewards: a VLM grades each response (RLAIF), locally or over HTTP.

Two ways to ask a judge:

- ``judge`` — pointwise grading. The judge reads :data:`DEFAULT_TEMPLATE` (image + question +
  answer) and replies with a score; :func:`parse_score` pulls the number out of whatever it wrote
  ("Score: 7/10", "7", "**8**", ``{"score": 8}``). A reply with no usable number gets ``fallback``
  and is counted in ``RewardOutput.info["unparsed"]`` — a judge that stops following the format
  shows up in the logs instead of silently feeding constant rewards.
- ``judge_pairwise`` — the model as its own preference classifier: P(judge answers "A") from the
  next-token log-probs of "A" vs "B" after a "which answer is better" prompt (local model only; the
  probability needs logits). Each sample is compared with ``meta["baseline"]`` (e.g. the reference
  or the SFT answer) in both orders, which cancels the judge's position bias.

Backends (``JUDGE_BACKENDS``): ``openai`` — any OpenAI-compatible ``/chat/completions`` endpoint
(vLLM, TGI, llama.cpp server, hosted APIs), image sent as a base64 data URL, standard library only,
with timeout and retries; ``hf`` — a local Hugging Face VLM (hub id or path) run with ``generate``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, Protocol

import torch

from vlalign.registry import Registry
from vlalign.rewards.base import REWARD_SOURCES, RewardOutput, Sample

# The grading prompt. Placeholders: {prompt}, {response}, {min_score}, {max_score}. Kept short and
# explicit about the reply format, because small judges follow short formats best; faithfulness to
# the image comes first since hallucination is the failure preference tuning targets.
DEFAULT_TEMPLATE = (
    "You are grading an assistant's answer to a question about the image.\n"
    "Question: {prompt}\n"
    "Answer: {response}\n"
    "Rate the answer from {min_score} (wrong, mentions things not in the image) to {max_score} "
    "(correct, faithful to the image, helpful). Reply with exactly one line: Score: <number>"
)

# Pairwise prompt for the preference-classifier judge. Placeholders: {prompt}, {a}, {b}.
PAIRWISE_TEMPLATE = (
    "Question about the image: {prompt}\n"
    "Answer A: {a}\n"
    "Answer B: {b}\n"
    "Which answer is more accurate and faithful to the image? Reply with one letter, A or B.\n"
    "Better answer:"
)

_NUM = r"-?\d+(?:\.\d+)?"
_SCORE_KEYS = ("score", "rating", "grade")


# ---------------------------------------------------------------- parsing (pure)


def _in_range(value: float, lo: float, hi: float) -> float | None:
    return value if lo <= value <= hi else None


def _fraction(num: str, den: str | None, hi: float) -> float:
    """"4/5" on a 0–10 scale is 8: a judge that picks its own denominator is rescaled to ours."""
    value = float(num)
    if den is not None and float(den) > 0 and float(den) != hi:
        value = value / float(den) * hi
    return value


def _from_json(text: str) -> float | None:
    for blob in re.findall(r"\{[^{}]*\}", text):
        try:
            obj = json.loads(blob)
        except json.JSONDecodeError:
            continue
        for key in _SCORE_KEYS:
            value = obj.get(key) if isinstance(obj, dict) else None
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
            if isinstance(value, str) and re.fullmatch(_NUM, value.strip()):
                return float(value)
    return None


# Ordered from most to least explicit; the first that matches wins.
_PATTERNS = [
    re.compile(rf"(?:{'|'.join(_SCORE_KEYS)})\s*(?:is|of)?\s*[:=]?\s*\**\s*({_NUM})\s*\**\s*(?:(?:/|out of)\s*({_NUM}))?",
               re.IGNORECASE),
    re.compile(rf"\*\*\s*({_NUM})\s*(?:(?:/|out of)\s*({_NUM}))?\s*\*\*"),
    re.compile(rf"({_NUM})\s*(?:/|out of)\s*({_NUM})", re.IGNORECASE),
    re.compile(rf"^\s*({_NUM})\s*(?:(?:/|out of)\s*({_NUM}))?\s*[.!]?\s*$"),
]


def parse_score(text: str, min_score: float = 0.0, max_score: float = 10.0) -> float | None:
    """The judge's score in ``[min_score, max_score]``, or None when the reply holds no usable score."""
    if not text:
        return None
    value = _from_json(text)
    if value is not None:
        return _in_range(value, min_score, max_score)
    for pattern in _PATTERNS:
        m = pattern.search(text)
        if m:
            den = m.group(2) if m.lastindex and m.lastindex >= 2 else None
            return _in_range(_fraction(m.group(1), den, max_score), min_score, max_score)
    return None


# ---------------------------------------------------------------- backends


class JudgeBackend(Protocol):
    def complete(self, prompts: list[str], images: list[list[Any]]) -> list[str]: ...


JUDGE_BACKENDS: Registry[Callable[..., JudgeBackend]] = Registry("judge backend")


def _register_backends() -> None:
    """Backends live in their own modules; importing here keeps the registry complete."""
    from vlalign.rewards import judge_backends  # noqa: F401


def judge_backend(name: str, **kwargs: Any) -> JudgeBackend:
    """A judge backend by :data:`JUDGE_BACKENDS` name (``openai``, ``hf``, ``fixed``) with its arguments."""
    _register_backends()
    return JUDGE_BACKENDS.get(name)(**kwargs)


# ---------------------------------------------------------------- sources


class JudgeReward:
    """Pointwise judge reward: ``(score - min) / (max - min)`` in [0, 1] (or the raw score).

    ``backend`` is a JUDGE_BACKENDS name and ``backend_kwargs`` its arguments (``url``/``model`` for
    ``openai``, ``model`` path for ``hf``). ``fallback`` (raw-score units, default: the middle of the
    scale) is used for unparseable replies — neutral, because a judge's format slip is not the
    policy's fault.
    """

    def __init__(
        self,
        backend: str = "openai",
        backend_kwargs: dict[str, Any] | None = None,
        template: str = DEFAULT_TEMPLATE,
        min_score: float = 0.0,
        max_score: float = 10.0,
        fallback: float | None = None,
        unit_scale: bool = True,
        judge: JudgeBackend | None = None,
    ):
        if max_score <= min_score:
            raise ValueError(f"judge: max_score ({max_score}) must be above min_score ({min_score})")
        _register_backends()
        self.name = "judge"
        self.backend = judge if judge is not None else JUDGE_BACKENDS.get(backend)(**(backend_kwargs or {}))
        self.template = template
        self.lo, self.hi = float(min_score), float(max_score)
        self.fallback = (self.lo + self.hi) / 2 if fallback is None else float(fallback)
        self.unit_scale = unit_scale

    def render(self, s: Sample) -> str:
        return self.template.format(prompt=s.prompt, response=s.response, min_score=self._fmt(self.lo),
                                    max_score=self._fmt(self.hi))

    @staticmethod
    def _fmt(x: float) -> str:
        return str(int(x)) if float(x).is_integer() else str(x)

    def score(self, samples: list[Sample]) -> RewardOutput:
        replies = self.backend.complete([self.render(s) for s in samples], [s.images for s in samples])
        parsed = [parse_score(r, self.lo, self.hi) for r in replies]
        raw = torch.tensor([self.fallback if p is None else p for p in parsed], dtype=torch.float32)  # (N,)
        rewards = (raw - self.lo) / (self.hi - self.lo) if self.unit_scale else raw
        unparsed = sum(p is None for p in parsed)
        return RewardOutput(rewards=rewards, parts={"judge_score": raw},
                            info={"unparsed": float(unparsed), "unparsed_frac": unparsed / max(1, len(samples))})


class PairwiseJudgeReward:
    """P(sample's response beats ``meta[baseline_key]``) from a local judge's "A"/"B" logits.

    Both orders are asked and averaged — ``(P(A | sample first) + P(B | sample second)) / 2`` — so
    a judge that always says "A" scores every sample 0.5 instead of rewarding the first slot.
    """

    def __init__(self, model: str, baseline_key: str = "baseline", template: str = PAIRWISE_TEMPLATE,
                 both_orders: bool = True, classifier: Any = None, **model_kwargs: Any):
        _register_backends()
        from vlalign.rewards.judge_backends import LocalHFJudge

        self.name = "judge_pairwise"
        self.judge = classifier if classifier is not None else LocalHFJudge(model=model, **model_kwargs)
        self.baseline_key, self.template, self.both_orders = baseline_key, template, both_orders

    def prefer(self, samples_a: list[Sample], samples_b: list[Sample]) -> torch.Tensor:
        """(N,) P(a preferred over b) for aligned lists of samples on the same image + prompt."""
        first = self._p_a(samples_a, [b.response for b in samples_b])
        if not self.both_orders:
            return first
        swapped = self._p_a(samples_b, [a.response for a in samples_a])
        return (first + (1.0 - swapped)) / 2

    def _p_a(self, samples: list[Sample], others: list[str]) -> torch.Tensor:
        prompts = [self.template.format(prompt=s.prompt, a=s.response, b=o) for s, o in zip(samples, others)]
        return self.judge.choice_probs(prompts, [s.images for s in samples], ("A", "B"))[:, 0]

    def score(self, samples: list[Sample]) -> RewardOutput:
        baselines = []
        for i, s in enumerate(samples):
            if self.baseline_key not in s.meta:
                raise ValueError(f"judge_pairwise: sample {i} has no meta[{self.baseline_key!r}] to compare "
                                 f"against. Fix: add a baseline response to each sample's meta.")
            baselines.append(Sample(images=s.images, prompt=s.prompt, response=str(s.meta[self.baseline_key])))
        p = self.prefer(samples, baselines)  # (N,)
        return RewardOutput(rewards=p, parts={"p_better_than_baseline": p})


REWARD_SOURCES.register("judge")(JudgeReward)
REWARD_SOURCES.register("judge_pairwise")(PairwiseJudgeReward)
