"""What a reward model's scores mean when its head has several outputs: an ensemble, or aspects.

A saved reward model says in ``reward_model.json`` what its head outputs:

- ``single`` (no extra keys): one Bradley–Terry score, saved and loaded exactly as a one-head model
  always was;
- ``ensemble`` (``heads: K``, K > 1): K members trained on the same pairs from their own random
  init; the overall score is their mean and their std is the disagreement — large where training
  data said little, which is where a policy finds reward-model errors to exploit;
- ``aspects`` (``aspects: [...]``, ``aspect_weights: [...]``): one score per rated aspect
  (helpfulness, faithfulness, ...); the overall score is Σ_a w_a·r_a.

:class:`HeadSpec` holds that description, builds the matching head and reduces the (N, outputs)
scores to the overall one. :data:`HEAD_KINDS` maps a kind to how a reward source turns the scores
into rewards and logged parts, and which source options it accepts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vlalign.models.heads import MultiHead, ScalarHead
from vlalign.objectives.reward_model import (
    ENSEMBLE_AGGREGATIONS,
    conservative_reward,
    ensemble_mean_std,
    weighted_aspects,
)
from vlalign.registry import Registry


@dataclass(frozen=True)
class HeadSpec:
    """The head of a reward model: ``heads`` ensemble members, or one output per name in ``aspects``
    with the overall score's ``aspect_weights`` (same order)."""

    heads: int = 1
    aspects: tuple[str, ...] = ()
    aspect_weights: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.heads < 1:
            raise ValueError(f"heads must be >= 1, got {self.heads}")
        if self.aspects and self.heads != 1:
            raise ValueError(f"a reward model is either an ensemble (model.heads={self.heads}) or a multi-aspect model "
                             f"(aspects={list(self.aspects)}), not both; set heads to 1 or drop the aspects")
        if len(set(self.aspects)) != len(self.aspects):
            raise ValueError(f"aspects are listed twice: {list(self.aspects)}")
        if len(self.aspect_weights) != len(self.aspects):
            raise ValueError(f"{len(self.aspect_weights)} aspect weights for {len(self.aspects)} aspects")

    @property
    def kind(self) -> str:
        """``single``, ``ensemble`` or ``aspects``: the name in :data:`HEAD_KINDS`."""
        return "aspects" if self.aspects else "ensemble" if self.heads > 1 else "single"

    @property
    def outputs(self) -> int:
        return len(self.aspects) or self.heads

    def make_head(self, hidden_size: int) -> nn.Module:
        """A fresh head. The single kind is the plain :class:`ScalarHead` (same RNG draws, same saved
        keys, score shape (B,)), so a one-head model is the same model it always was."""
        return ScalarHead(hidden_size) if self.kind == "single" else MultiHead(hidden_size, self.outputs)

    def meta(self) -> dict[str, Any]:
        """Keys for ``reward_model.json`` (none for a single head)."""
        return HEAD_KINDS.get(self.kind).meta(self)

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> HeadSpec:
        return cls(int(meta.get("heads", 1)), tuple(meta.get("aspects", ())), tuple(meta.get("aspect_weights", ())))

    def weights(self) -> torch.Tensor:
        return torch.tensor(self.aspect_weights, dtype=torch.float32)  # (A,)

    def overall(self, scores: torch.Tensor) -> torch.Tensor:
        """(N, outputs) -> (N,): the single score, the ensemble mean, or the weighted sum of aspects."""
        if scores.dim() != 2 or scores.shape[1] != self.outputs:
            raise ValueError(f"expected scores (N, {self.outputs}) for a {self.kind} head, got {tuple(scores.shape)}")
        return HEAD_KINDS.get(self.kind).overall(self, scores)


# ------------------------------------------------------------------------------- kinds of heads


@dataclass(frozen=True)
class HeadKind:
    """How one kind of head is saved, reduced to an overall score and read by a reward source.

    ``view(spec, scores (N, outputs), options) -> (rewards (N,), parts {name: (N,)})``; ``options``
    are the source's own keyword arguments this kind accepts (``option_names``), checked by
    ``check(spec, options)`` when the source is built."""

    meta: Callable[[HeadSpec], dict[str, Any]]
    overall: Callable[[HeadSpec, torch.Tensor], torch.Tensor]
    view: Callable[[HeadSpec, torch.Tensor, dict[str, Any]], tuple[torch.Tensor, dict[str, torch.Tensor]]]
    option_names: frozenset[str]
    check: Callable[[HeadSpec, dict[str, Any]], None] = lambda spec, options: None


HEAD_KINDS: Registry = Registry("reward-model head kind")


def _single_view(spec: HeadSpec, scores: torch.Tensor, options: dict[str, Any]) -> tuple[torch.Tensor, dict]:
    return scores[:, 0], {}


HEAD_KINDS.register("single")(HeadKind(meta=lambda spec: {}, overall=lambda spec, s: s[:, 0], view=_single_view,
                                       option_names=frozenset()))


def _check_ensemble(spec: HeadSpec, options: dict[str, Any]) -> None:
    ENSEMBLE_AGGREGATIONS.known(options.get("aggregate", "mean"))
    if float(options.get("coef", 1.0)) < 0:
        raise ValueError(f"coef must be >= 0 (the weight of the disagreement penalty), got {options['coef']}")


def _ensemble_view(spec: HeadSpec, scores: torch.Tensor, options: dict[str, Any]) -> tuple[torch.Tensor, dict]:
    mean, std = ensemble_mean_std(scores)  # (N,), (N,)
    reward = conservative_reward(scores, float(options.get("coef", 1.0)), options.get("aggregate", "mean"))
    return reward, {"ensemble_mean": mean, "ensemble_std": std}


HEAD_KINDS.register("ensemble")(HeadKind(
    meta=lambda spec: {"heads": spec.heads}, overall=lambda spec, s: ensemble_mean_std(s)[0], view=_ensemble_view,
    option_names=frozenset({"aggregate", "coef"}), check=_check_ensemble,
))


def aspect_selection(spec: HeadSpec, chosen: str | list[str] | dict[str, float] | None) -> tuple[list[int], torch.Tensor]:
    """Which aspect outputs a source sums and with which weights: None = every aspect with the
    model's own ``aspect_weights`` (its overall score); a list = those aspects, weight 1 each (one name:
    that aspect's score alone); a dict = those aspects with the given weights."""
    if chosen is None:
        return list(range(len(spec.aspects))), spec.weights()
    if isinstance(chosen, str):
        chosen = [chosen]
    weights = dict(chosen) if isinstance(chosen, dict) else {name: 1.0 for name in chosen}
    unknown = sorted(set(weights) - set(spec.aspects))
    if unknown or not weights:
        raise ValueError(f"aspects: {unknown or 'empty'} — the model scores the aspects {list(spec.aspects)}; "
                         "fix: name some of those (a list, or {aspect: weight})")
    return [spec.aspects.index(a) for a in weights], torch.tensor(list(weights.values()), dtype=torch.float32)


def _aspects_view(spec: HeadSpec, scores: torch.Tensor, options: dict[str, Any]) -> tuple[torch.Tensor, dict]:
    idx, weights = aspect_selection(spec, options.get("aspects"))
    parts = {f"aspect/{name}": scores[:, i] for i, name in enumerate(spec.aspects)}
    return weighted_aspects(scores[:, idx], weights), parts


def _check_aspects(spec: HeadSpec, options: dict[str, Any]) -> None:
    aspect_selection(spec, options.get("aspects"))


HEAD_KINDS.register("aspects")(HeadKind(
    meta=lambda spec: {"aspects": list(spec.aspects), "aspect_weights": list(spec.aspect_weights)},
    overall=lambda spec, s: weighted_aspects(s, spec.weights()), view=_aspects_view,
    option_names=frozenset({"aspects"}), check=_check_aspects,
))


def check_source_options(spec: HeadSpec, options: dict[str, Any], where: str) -> None:
    """Options a reward source was given for this model's head: each must belong to its kind."""
    kind = HEAD_KINDS.get(spec.kind)
    for name in sorted(options):
        if name not in kind.option_names:
            owners = [k for k in HEAD_KINDS if name in HEAD_KINDS.get(k).option_names]
            raise ValueError(f"{where}: option {name!r} applies to {' / '.join(owners)} reward models, but this one is "
                             f"a {spec.kind} model ({spec.outputs} output(s)); fix: drop {name!r} or train the model "
                             f"with {'model.heads > 1' if 'ensemble' in owners else '`aspects:`'}")
    kind.check(spec, options)
