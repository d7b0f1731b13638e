"""Build any reward source from config, normalise it per batch, and combine several into one.

A config names a source in one of three shapes, all handled by :func:`build_source`::

    reward: exact_match                                   # a name
    reward: {name: clip, kwargs: {model: openai/clip-vit-base-patch32}, normalize: zscore}
    reward:
      composite:
        normalize: null
        parts:
          - {name: factuality, weight: 1.0, kwargs: {mode: phrase}}
          - {name: length_penalty, weight: 0.5, kwargs: {max_len: 40}}

The composite's reward is ``sum_k weight_k * part_k``; each part (after its own optional
normalisation, before weighting) is logged in ``RewardOutput.parts`` under its label so a reward-hacking
monitor can see which part moved. Per-batch normalisation exists because sources live on very
different scales (CLIP cosine ~0.3, judge 0..10, rules 0/1) and a weighted sum of raw values lets
the widest one dominate.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from pydantic import Field, field_validator, model_validator

from vlalign.config import BaseConfig
from vlalign.registry import Registry
from vlalign.rewards.base import REWARD_SOURCES, RewardOutput, RewardSource, Sample

NORMALIZERS: Registry = Registry("reward normalizer")
_EPS = 1e-6


@NORMALIZERS.register("zscore")
def zscore(x: torch.Tensor) -> torch.Tensor:
    """(x - mean) / std over the batch (population std); a constant batch maps to zeros."""
    std = x.std(unbiased=False) if x.numel() > 1 else x.new_tensor(0.0)
    return (x - x.mean()) / std if std > _EPS else torch.zeros_like(x)


@NORMALIZERS.register("center")
def center(x: torch.Tensor) -> torch.Tensor:
    """x - mean: keeps the scale, removes the batch offset (a baseline)."""
    return x - x.mean()


@NORMALIZERS.register("minmax")
def minmax(x: torch.Tensor) -> torch.Tensor:
    """Map the batch to [0, 1]; a constant batch maps to zeros."""
    span = x.max() - x.min()
    return (x - x.min()) / span if span > _EPS else torch.zeros_like(x)


@NORMALIZERS.register("rank")
def rank(x: torch.Tensor) -> torch.Tensor:
    """Rank in the batch scaled to [0, 1] (ties get their mean rank): robust to outliers."""
    n = x.numel()
    if n < 2:
        return torch.zeros_like(x)
    less = (x[None, :] < x[:, None]).sum(1).float()  # (N,) how many are strictly smaller
    equal = (x[None, :] == x[:, None]).sum(1).float()  # (N,) including itself
    return (less + (equal - 1) / 2) / (n - 1)


class RewardSourceConfig(BaseConfig):
    """One reward source as a config section (used by the RL trainers and `vlalign label`)."""

    name: str = Field(description="registered reward source name, e.g. clip, judge, learned, composite")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="arguments of the source factory")
    normalize: str | None = Field(default=None, description=f"per-batch normalisation: {NORMALIZERS.names()}")

    @field_validator("name")
    @classmethod
    def _known_name(cls, name: str) -> str:
        """Unknown names fail when the config is read (with a did-you-mean), not after model loading."""
        import vlalign.rewards  # noqa: F401  (registers every source)

        return REWARD_SOURCES.known(name)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        """``"clip"`` → ``{name: clip}``; ``{composite: {...}}`` → ``{name: composite, kwargs: {...}}``."""
        if isinstance(data, str):
            return {"name": data}
        if isinstance(data, dict) and set(data) == {"composite"}:
            return {"name": "composite", "kwargs": dict(data["composite"] or {})}
        return data


class Normalized:
    """Wraps a source and normalises its rewards per batch; parts stay raw for logging."""

    def __init__(self, source: RewardSource, method: str):
        self.source, self.method = source, method
        self.fn: Callable[[torch.Tensor], torch.Tensor] = NORMALIZERS.get(method)
        self.name = source.name

    def score(self, samples: list[Sample]) -> RewardOutput:
        out = self.source.score(samples)
        return RewardOutput(rewards=self.fn(out.rewards), parts=dict(out.parts), info=dict(out.info))


def build_source(spec: str | dict[str, Any] | RewardSourceConfig) -> RewardSource:
    """Name / dict / config → a ready reward source (see the module docstring for the shapes)."""
    if not isinstance(spec, RewardSourceConfig):
        spec = RewardSourceConfig.model_validate(spec)
    source = REWARD_SOURCES.get(spec.name)(**spec.kwargs)
    return Normalized(source, spec.normalize) if spec.normalize else source


class Composite:
    """Weighted sum of sources; every part logged under its label (``label`` or the source name)."""

    def __init__(self, parts: list[dict[str, Any]], normalize: str | None = None):
        if not parts:
            raise ValueError("composite reward: `parts` is empty; list at least one {name, weight, kwargs}")
        self.name = "composite"
        self.parts: list[tuple[str, float, RewardSource]] = []
        for i, part in enumerate(parts):
            part = dict(part)
            unknown = set(part) - {"name", "weight", "kwargs", "label", "normalize"}
            if "name" not in part or unknown:
                raise ValueError(
                    f"composite reward part {i}: needs `name` and only name/weight/kwargs/label/normalize "
                    f"keys (unknown: {sorted(unknown)})"
                )
            label = part.pop("label", None) or part["name"]
            if any(label == seen for seen, _, _ in self.parts):
                raise ValueError(f"composite reward part {i}: label {label!r} is used twice; set `label:`")
            weight = float(part.pop("weight", 1.0))
            self.parts.append((label, weight, build_source(part)))
        self.normalize = NORMALIZERS.get(normalize) if normalize else None

    def score(self, samples: list[Sample]) -> RewardOutput:
        total = torch.zeros(len(samples), dtype=torch.float32)  # (N,)
        parts: dict[str, torch.Tensor] = {}
        info: dict[str, float] = {}
        for label, weight, source in self.parts:
            out = source.score(samples)
            r = out.rewards.float()  # (N,)
            total = total + weight * r
            parts[label] = r
            for sub, value in out.parts.items():
                if sub != label and sub != source.name:
                    parts[f"{label}/{sub}"] = value
            info.update({f"{label}/{k}": v for k, v in out.info.items()})
        if self.normalize is not None:
            total = self.normalize(total)
        return RewardOutput(rewards=total, parts=parts, info=info)


REWARD_SOURCES.register("composite")(Composite)
