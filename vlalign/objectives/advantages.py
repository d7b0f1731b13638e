"""Advantage estimators of the RL path: GAE (PPO with a critic) and group baselines (GRPO, RLOO).

Token tensors are (B, T), right-padded, with an explicit float ``mask`` (1 = response token).
Group estimators take one scalar reward per sample (N,), ordered as consecutive groups of
``group_size`` samples of the same prompt.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

from vlalign.objectives._checks import check_group_size, check_ndim, check_same_shape
from vlalign.objectives.masked import masked_sum, zero_masked
from vlalign.registry import Registry


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised Advantage Estimation (Schulman et al. 2016, "High-Dimensional Continuous Control
    Using Generalized Advantage Estimation"), per token, right to left over VALID positions only:

        δ_t = r_t + γ·V_{t'} − V_t          t' = next valid position (V = 0 after the last)
        A_t = δ_t + γλ·A_{t'}
        returns_t = A_t + V_t

    Masked positions are skipped (a hole in the mask does not break the recursion) and get
    advantage 0 and return 0. rewards, values, mask: (B, T); returns (advantages, returns), (B, T).
    """
    check_ndim("gae", 2, rewards=rewards, values=values, mask=mask)
    check_same_shape("gae", rewards=rewards, values=values, mask=mask)
    valid = mask.bool()  # (B, T)
    rewards = zero_masked(rewards, mask)
    values = zero_masked(values, mask)
    B, T = rewards.shape
    next_value = rewards.new_zeros(B)  # (B,) V at the next valid position
    next_adv = rewards.new_zeros(B)  # (B,) A at the next valid position
    advantages = [rewards.new_zeros(B)] * T
    for t in reversed(range(T)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv_t = delta + gamma * lam * next_adv
        advantages[t] = torch.where(valid[:, t], adv_t, torch.zeros_like(adv_t))
        next_value = torch.where(valid[:, t], values[:, t], next_value)
        next_adv = torch.where(valid[:, t], adv_t, next_adv)
    adv = torch.stack(advantages, dim=1)  # (B, T)
    returns = zero_masked(adv + values, mask)
    return adv, returns


def _zero_constant_groups(grouped: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """Exactly 0 for groups whose rewards are all equal: rounding in the mean (e.g. three 0.7s)
    would otherwise leave ~1e-8, which a std division can blow up."""
    constant = (grouped == grouped[:, :1]).all(dim=1, keepdim=True)  # (G, 1)
    return torch.where(constant, torch.zeros_like(advantages), advantages)


def _grouped(rewards: torch.Tensor, group_size: int, fn: str, minimum: int = 1) -> torch.Tensor:
    n_groups = check_group_size(fn, rewards, group_size, minimum)
    return rewards.view(n_groups, group_size)  # (G, group_size)


def grpo_advantages(
    rewards: torch.Tensor, group_size: int, scale: bool = True, eps: float = 1e-6
) -> torch.Tensor:
    """Group-relative advantage of GRPO (Shao et al. 2024, "DeepSeekMath"), per sample (N,):

        A_i = (r_i − mean_group(r)) / (std_group(r) + eps)     (scale=True; std Bessel-corrected)
        A_i =  r_i − mean_group(r)                              (scale=False, Dr. GRPO: Liu et al. 2025)

    A constant group gives exactly 0 (not NaN); so does a group of size 1.
    """
    grouped = _grouped(rewards, group_size, "grpo_advantages")  # (G, K)
    centred = grouped - grouped.mean(dim=1, keepdim=True)  # (G, K)
    if scale:
        std = grouped.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(centred[:, :1])
        centred = centred / (std + eps)
    return _zero_constant_groups(grouped, centred).reshape(-1)


def zero_variance_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """(N / group_size,) bool: groups whose rewards are all equal. Their GRPO/RLOO advantages are 0,
    so their samples add no policy gradient; dropping them before the update saves compute
    (DAPO's dynamic sampling, Yu et al. 2025)."""
    grouped = _grouped(rewards, group_size, "zero_variance_groups")  # (G, K)
    return (grouped == grouped[:, :1]).all(dim=1)


def rloo_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """REINFORCE Leave-One-Out (Kool et al. 2019; Ahmadian et al. 2024, "Back to Basics"), (N,):

        A_i = r_i − (Σ_{j≠i} r_j) / (K − 1)

    the baseline of each sample is the mean reward of the OTHER samples of its prompt, so it is
    independent of the sample itself (unbiased). Needs group_size ≥ 2.
    """
    grouped = _grouped(rewards, group_size, "rloo_advantages", minimum=2)  # (G, K)
    others_mean = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)  # (G, K)
    return _zero_constant_groups(grouped, grouped - others_mean).reshape(-1)


def whiten_batch_advantages(advantages: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Whiten per-sample advantages over the whole rollout batch, (N,) → (N,):

        A'_i = (A_i − mean(A)) / (std(A) + eps)          std Bessel-corrected, over all N samples

    WHY: leave-one-out advantages keep the reward's units, so their size depends on the reward's
    spread (share-of-spaces rewards give |A| ~ 0.05, 0/1 verifiers ~ 0.5). Whitening gives every
    rollout unit-scale advantages whatever the reward, as TRL's RLOO ``normalize_advantages`` (one
    value per completion) and the advantage whitening of PPO implementations (Schulman et al. 2017;
    OpenRLHF) do. Under Adam a constant scale cancels; what whitening changes is that every rollout
    gets the same step size, however wide its rewards spread. Unlike GRPO's per-group std it
    keeps the relative weight of groups: a prompt whose samples differ more still pushes harder.
    Fewer than 2 samples or a constant batch give zeros (nothing to learn from, never NaN).
    """
    check_ndim("whiten_batch_advantages", 1, advantages=advantages)
    if advantages.numel() < 2:
        return torch.zeros_like(advantages)
    centred = advantages - advantages.mean()  # (N,)
    if bool((centred == 0).all()):
        return centred
    return centred / (advantages.std() + eps)


class AdvantageOutput(NamedTuple):
    advantages: torch.Tensor  # (B, T), 0 at masked positions
    returns: torch.Tensor  # (B, T), value targets (= advantages for critic-free estimators)


@dataclass(frozen=True)
class AdvantageEstimator:
    """A registered estimator: ``est(token_rewards, mask, values=..., group_size=..., **hparams)``.

    ``token_rewards`` (B, T): per-token rewards (e.g. the score on the last token minus a KL
    penalty). Outcome estimators (grpo, rloo) sum them per sequence to get one reward per sample.
    """

    name: str
    fn: Callable[..., AdvantageOutput]
    requires_values: bool
    requires_groups: bool
    defaults: dict[str, Any] = field(default_factory=dict)

    def __call__(self, token_rewards: torch.Tensor, mask: torch.Tensor, *, values: torch.Tensor | None = None,
                 group_size: int | None = None, **hparams: Any) -> AdvantageOutput:
        unknown = sorted(set(hparams) - set(self.defaults))
        if unknown:
            raise ValueError(f"advantage estimator {self.name!r} got unknown hyper-parameters {unknown}; "
                             f"it accepts {sorted(self.defaults)}")
        if self.requires_values and values is None:
            raise ValueError(f"advantage estimator {self.name!r} needs values (B, T) from a critic")
        if self.requires_groups and group_size is None:
            raise ValueError(f"advantage estimator {self.name!r} needs group_size (samples per prompt)")
        check_ndim(f"advantage estimator {self.name!r}", 2, token_rewards=token_rewards, mask=mask)
        check_same_shape(f"advantage estimator {self.name!r}", token_rewards=token_rewards, mask=mask)
        return self.fn(token_rewards, mask, values=values, group_size=group_size,
                       **{**self.defaults, **hparams})


ADVANTAGE_ESTIMATORS: Registry[AdvantageEstimator] = Registry("advantage estimator")


def _outcome(per_sample: Callable[[torch.Tensor, int], torch.Tensor]) -> Callable[..., AdvantageOutput]:
    """Lift a (N,) → (N,) group estimator to token level: broadcast each sample's advantage over
    its valid tokens."""
    def run(token_rewards: torch.Tensor, mask: torch.Tensor, *, values: Any, group_size: int,
            **hp: Any) -> AdvantageOutput:
        scores = masked_sum(token_rewards, mask, dim=-1)  # (B,)
        adv = zero_masked(per_sample(scores, group_size, **hp)[:, None].expand_as(token_rewards), mask)
        return AdvantageOutput(adv, adv)
    return run


def _gae(token_rewards: torch.Tensor, mask: torch.Tensor, *, values: torch.Tensor, group_size: Any,
         gamma: float, lam: float) -> AdvantageOutput:
    return AdvantageOutput(*gae(token_rewards, values, mask, gamma=gamma, lam=lam))


def _rloo_outcome(scores: torch.Tensor, group_size: int, whiten: bool, eps: float) -> torch.Tensor:
    """RLOO per sample (N,), then optionally whitened over the batch (``whiten``; see
    :func:`whiten_batch_advantages`)."""
    adv = rloo_advantages(scores, group_size)  # (N,)
    return whiten_batch_advantages(adv, eps) if whiten else adv


for _name, _est in {
    "gae": AdvantageEstimator("gae", _gae, True, False, {"gamma": 1.0, "lam": 0.95}),
    "grpo": AdvantageEstimator("grpo", _outcome(lambda r, g, eps: grpo_advantages(r, g, True, eps)),
                               False, True, {"eps": 1e-6}),
    "dr_grpo": AdvantageEstimator("dr_grpo", _outcome(lambda r, g: grpo_advantages(r, g, scale=False)),
                                  False, True, {}),
    "rloo": AdvantageEstimator("rloo", _outcome(_rloo_outcome), False, True, {"whiten": False, "eps": 1e-6}),
}.items():
    ADVANTAGE_ESTIMATORS.register(_name)(_est)
