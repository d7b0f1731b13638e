"""Advantage estimators of the RL path: GAE (PPO with a critic) and group baselines (GRPO, RLOO).

Token tensors are (B, T), right-padded, with an explicit float ``mask`` (1 = response token).
Group estimators take one scalar reward per sample (N,), in consecutive groups of ``group_size``
samples of the same prompt, or with a group id per sample (``group_ids``: non-consecutive, any size).
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


SINGLETON_MODES = ("zero", "raw")
SCALE_MODES = ("group", "batch", "none")


def group_index(rewards: torch.Tensor, group_size: int | None, group_ids: torch.Tensor | None,
                fn: str, minimum: int = 1) -> tuple[torch.Tensor, int]:
    """(group of each sample (N,) in 0..G−1, G) from consecutive groups of ``group_size`` or from an
    id per sample (``group_ids`` (N,), any integers, in any order; groups may differ in size)."""
    check_ndim(fn, 1, rewards=rewards)
    if group_ids is not None:
        check_ndim(fn, 1, group_ids=group_ids)
        if group_ids.shape != rewards.shape:
            raise ValueError(f"{fn}: group_ids has shape {tuple(group_ids.shape)}, rewards {tuple(rewards.shape)}; "
                             "pass one group id per sample")
        _, inverse = torch.unique(group_ids.to(rewards.device), return_inverse=True)  # (N,)
        return inverse, int(inverse.max()) + 1 if inverse.numel() else 0
    if group_size is None:
        raise ValueError(f"{fn}: pass group_size (consecutive groups) or group_ids (one id per sample)")
    n_groups = check_group_size(fn, rewards, group_size, minimum)
    return torch.arange(n_groups, device=rewards.device).repeat_interleave(group_size), n_groups


def _group_sums(values: torch.Tensor, inverse: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Σ of ``values`` (N,) per group → (G,)."""
    return values.new_zeros(n_groups).index_add_(0, inverse, values)


def _group_moments(rewards: torch.Tensor, inverse: torch.Tensor, n_groups: int) -> tuple[torch.Tensor, ...]:
    """Per sample: (its group's size, mean, Bessel-corrected std (0 for singletons), constant?) — (N,) each."""
    count = _group_sums(torch.ones_like(rewards), inverse, n_groups)  # (G,)
    mean = _group_sums(rewards, inverse, n_groups) / count  # (G,)
    centred = rewards - mean[inverse]  # (N,)
    var = _group_sums(centred**2, inverse, n_groups) / (count - 1).clamp(min=1)  # (G,)
    # exactly constant groups (e.g. three 0.7s, whose float mean can leave ~1e-8 residues)
    first = torch.full((n_groups,), float("nan"), dtype=rewards.dtype, device=rewards.device)
    first = first.scatter(0, inverse.flip(0), rewards.flip(0))  # (G,) one member of each group
    same = _group_sums((rewards != first[inverse]).to(rewards.dtype), inverse, n_groups) == 0  # (G,)
    return count[inverse], mean[inverse], var.sqrt()[inverse], same[inverse]


def _check_mode(fn: str, name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{fn}: {name} must be one of {', '.join(allowed)}; got {value!r}")


def grpo_advantages(
    rewards: torch.Tensor, group_size: int | None = None, scale: bool | str = True, eps: float = 1e-6, *,
    group_ids: torch.Tensor | None = None, singleton: str = "zero", batch_std: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Group-relative advantage of GRPO (Shao et al. 2024, "DeepSeekMath"), per sample (N,):

        A_i = (r_i − mean_g(r)) / (std_g(r) + eps)    scale="group" (True): the original GRPO; std Bessel-corrected
        A_i = (r_i − mean_g(r)) / (std(r) + eps)      scale="batch": TRL's ``scale_rewards="batch"``, one std over
                                                      the whole batch (``batch_std`` when the batch spans processes)
        A_i =  r_i − mean_g(r)                        scale="none" (False): Dr. GRPO (Liu et al. 2025)

    Groups are consecutive blocks of ``group_size`` samples, or given by ``group_ids`` (N,) (any ids,
    any order, any sizes). A constant group gives exactly 0 (not NaN). A group of ONE sample has no
    baseline: ``singleton="zero"`` gives it 0 (no signal), ``"raw"`` gives it verl's value (mean 0,
    std 1: r/(1 + eps) with group scaling, r/(std + eps) with batch scaling, r without).
    """
    fn = "grpo_advantages"
    mode = ("group" if scale else "none") if isinstance(scale, bool) else scale
    _check_mode(fn, "scale", mode, SCALE_MODES)
    _check_mode(fn, "singleton", singleton, SINGLETON_MODES)
    inverse, n_groups = group_index(rewards, group_size, group_ids, fn)
    count, mean, std, same = _group_moments(rewards, inverse, n_groups)
    single = count == 1  # (N,)
    centred = torch.where(single, rewards, rewards - mean)  # (N,) singletons: baseline 0 (verl)
    if mode == "group":
        centred = centred / (torch.where(single, torch.ones_like(std), std) + eps)
    elif mode == "batch":
        spread = rewards.std() if (batch_std is None and rewards.numel() > 1) else batch_std
        centred = centred / (torch.as_tensor(0.0 if spread is None else spread, dtype=rewards.dtype) + eps)
    zero = (same & ~single) | (single & (singleton == "zero"))
    return torch.where(zero, torch.zeros_like(centred), centred)


def zero_variance_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """(N / group_size,) bool: groups whose rewards are all equal. Their GRPO/RLOO advantages are 0,
    so their samples add no policy gradient; dropping them before the update saves compute
    (DAPO's dynamic sampling, Yu et al. 2025)."""
    inverse, n_groups = group_index(rewards, group_size, None, "zero_variance_groups")
    return _group_moments(rewards, inverse, n_groups)[3][::group_size]


def constant_group_rows(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """(N,) bool: samples whose group (by id) has two or more members, all with the same reward —
    the rows that carry no GRPO/RLOO signal whatever the options (singletons are left to the caller)."""
    inverse, n_groups = group_index(rewards, None, group_ids, "constant_group_rows")
    count, _, _, same = _group_moments(rewards, inverse, n_groups)
    return same & (count > 1)


def rloo_advantages(rewards: torch.Tensor, group_size: int | None = None, *, group_ids: torch.Tensor | None = None,
                    singleton: str = "zero") -> torch.Tensor:
    """REINFORCE Leave-One-Out (Kool et al. 2019; Ahmadian et al. 2024, "Back to Basics"), (N,):

        A_i = r_i − (Σ_{j≠i} r_j) / (n_g − 1)

    the baseline of each sample is the mean reward of the OTHER samples of its group, so it is
    independent of the sample itself (unbiased). Groups as in :func:`grpo_advantages`; consecutive
    groups need group_size ≥ 2. A singleton group has no other sample: ``singleton="zero"`` gives 0,
    ``"raw"`` gives r_i (verl's choice: baseline 0).
    """
    fn = "rloo_advantages"
    _check_mode(fn, "singleton", singleton, SINGLETON_MODES)
    inverse, n_groups = group_index(rewards, group_size, group_ids, fn, minimum=2)
    count, mean, _, same = _group_moments(rewards, inverse, n_groups)
    single = count == 1
    others_mean = (mean * count - rewards) / (count - 1).clamp(min=1)  # (N,)
    adv = torch.where(single, rewards, rewards - others_mean)
    zero = (same & ~single) | (single & (singleton == "zero"))
    return torch.where(zero, torch.zeros_like(adv), adv)


def whiten_batch_advantages(advantages: torch.Tensor, eps: float = 1e-6,
                            batch_stats: tuple[float, float] | None = None) -> torch.Tensor:
    """Whiten per-sample advantages over the whole rollout batch, (N,) → (N,):

        A'_i = (A_i − mean(A)) / (std(A) + eps)          std Bessel-corrected, over all N samples

    ``batch_stats`` = (mean, std) of the whole batch when it spans several processes (the trainer
    reduces them), so every process whitens with the same numbers.

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
    if batch_stats is None:
        if advantages.numel() < 2 or bool((advantages == advantages[0]).all()):
            return torch.zeros_like(advantages)
        mean, std = advantages.mean(), advantages.std()
    else:
        mean, std = (torch.as_tensor(v, dtype=advantages.dtype) for v in batch_stats)
    if not float(std) > 0:
        return torch.zeros_like(advantages)
    return (advantages - mean) / (std + eps)


class AdvantageOutput(NamedTuple):
    advantages: torch.Tensor  # (B, T), 0 at masked positions
    returns: torch.Tensor  # (B, T), value targets (= advantages for critic-free estimators)


@dataclass(frozen=True)
class AdvantageEstimator:
    """A registered estimator: ``est(token_rewards, mask, values=..., group_size=..., group_ids=..., **hparams)``.

    ``token_rewards`` (B, T): per-token rewards (e.g. the score on the last token minus a KL
    penalty). Outcome estimators (grpo, dr_grpo, rloo) sum them per sequence to get one reward per
    sample; their groups are consecutive blocks of ``group_size`` or given by ``group_ids`` (B,).
    """

    name: str
    fn: Callable[..., AdvantageOutput]
    requires_values: bool
    requires_groups: bool
    defaults: dict[str, Any] = field(default_factory=dict)

    def __call__(self, token_rewards: torch.Tensor, mask: torch.Tensor, *, values: torch.Tensor | None = None,
                 group_size: int | None = None, group_ids: torch.Tensor | None = None,
                 **hparams: Any) -> AdvantageOutput:
        unknown = sorted(set(hparams) - set(self.defaults))
        if unknown:
            raise ValueError(f"advantage estimator {self.name!r} got unknown hyper-parameters {unknown}; "
                             f"it accepts {sorted(self.defaults)}")
        if self.requires_values and values is None:
            raise ValueError(f"advantage estimator {self.name!r} needs values (B, T) from a critic")
        if self.requires_groups and group_size is None and group_ids is None:
            raise ValueError(f"advantage estimator {self.name!r} needs group_size (samples per prompt) or group_ids")
        check_ndim(f"advantage estimator {self.name!r}", 2, token_rewards=token_rewards, mask=mask)
        check_same_shape(f"advantage estimator {self.name!r}", token_rewards=token_rewards, mask=mask)
        extra = {"group_ids": group_ids} if self.requires_groups else {}
        return self.fn(token_rewards, mask, values=values, group_size=group_size, **extra,
                       **{**self.defaults, **hparams})


ADVANTAGE_ESTIMATORS: Registry[AdvantageEstimator] = Registry("advantage estimator")


def _outcome(per_sample: Callable[..., torch.Tensor]) -> Callable[..., AdvantageOutput]:
    """Lift a (N,) → (N,) group estimator to token level: broadcast each sample's advantage over
    its valid tokens."""
    def run(token_rewards: torch.Tensor, mask: torch.Tensor, *, values: Any, group_size: int | None,
            group_ids: torch.Tensor | None, **hp: Any) -> AdvantageOutput:
        scores = masked_sum(token_rewards, mask, dim=-1)  # (B,)
        adv = per_sample(scores, group_size, group_ids=group_ids, **hp)  # (B,)
        adv = zero_masked(adv[:, None].expand_as(token_rewards), mask)  # (B, T)
        return AdvantageOutput(adv, adv)
    return run


def _gae(token_rewards: torch.Tensor, mask: torch.Tensor, *, values: torch.Tensor, group_size: Any,
         gamma: float, lam: float) -> AdvantageOutput:
    return AdvantageOutput(*gae(token_rewards, values, mask, gamma=gamma, lam=lam))


def _rloo_outcome(scores: torch.Tensor, group_size: int | None, *, group_ids: torch.Tensor | None, whiten: bool,
                  eps: float, singleton: str, batch_stats: tuple[float, float] | None) -> torch.Tensor:
    """RLOO per sample (N,), then optionally whitened over the batch (``whiten``; see
    :func:`whiten_batch_advantages`)."""
    adv = rloo_advantages(scores, group_size, group_ids=group_ids, singleton=singleton)  # (N,)
    return whiten_batch_advantages(adv, eps, batch_stats) if whiten else adv


def _dr_grpo(scores: torch.Tensor, group_size: int | None, *, group_ids: torch.Tensor | None,
             singleton: str) -> torch.Tensor:
    return grpo_advantages(scores, group_size, scale="none", group_ids=group_ids, singleton=singleton)


_GROUP_DEFAULTS = {"singleton": "zero"}
for _name, _est in {
    "gae": AdvantageEstimator("gae", _gae, True, False, {"gamma": 1.0, "lam": 0.95}),
    "grpo": AdvantageEstimator("grpo", _outcome(grpo_advantages), False, True,
                               {"eps": 1e-6, "scale": "group", "batch_std": None, **_GROUP_DEFAULTS}),
    "dr_grpo": AdvantageEstimator("dr_grpo", _outcome(_dr_grpo), False, True, dict(_GROUP_DEFAULTS)),
    "rloo": AdvantageEstimator("rloo", _outcome(_rloo_outcome), False, True,
                               {"whiten": False, "eps": 1e-6, "batch_stats": None, **_GROUP_DEFAULTS}),
}.items():
    ADVANTAGE_ESTIMATORS.register(_name)(_est)
