"""One small interface for every reward (and cost) source.

Any source — a learned reward model, CLIP score, a judge VLM, rule-based verifiers, a composite —
scores a batch of (image, prompt, response) samples and returns one scalar per sample plus the
named parts it was made of (so a composite can log each part). Sources are picked by name from
:data:`REWARD_SOURCES` with their keyword arguments from the config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch

from vlalign.registry import Registry


@dataclass
class Sample:
    """What a reward source sees. ``meta`` carries ground truth where a dataset has it
    (e.g. the Shapes scene under ``meta["scene"]``, harm labels under ``meta["safety"]``)."""

    images: list[Any]  # PIL images or image refs (path / bytes / HF Image dict)
    prompt: str
    response: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class JudgedSpan:
    """A span ``[start, end)`` of a response (character offsets) that a source judged, and the part of
    the sample's reward it accounts for (negative for a wrong segment). Segment-level RL
    (``reward_granularity: segment``) puts ``value`` on the token where the span ends."""

    start: int
    end: int
    value: float
    kind: str | None = None


@dataclass
class RewardOutput:
    rewards: torch.Tensor  # (N,) float32, one score per sample
    parts: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> (N,), for logging
    info: dict[str, float] = field(default_factory=dict)  # counters, e.g. {"judge_unparsed": 2}
    # per sample: the judged spans whose values make up (part of) its reward; None = the source
    # judges whole answers only
    spans: list[list[JudgedSpan]] | None = None
    # per sample: free text the source produced while scoring (e.g. a critique), for logs and labels
    notes: list[str] | None = None


@runtime_checkable
class RewardSource(Protocol):
    name: str

    def score(self, samples: list[Sample]) -> RewardOutput: ...


# name -> factory(**kwargs) -> RewardSource
REWARD_SOURCES: Registry = Registry("reward source")
