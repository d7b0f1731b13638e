"""Lagrange multiplier for constrained RL (Safe RLHF's max_θ min_{λ≥0} −J_R + λ·(J_C − d)).

Safe RLHF (Dai et al. 2024, "Safe RLHF: Safe Reinforcement Learning from Human Feedback", §3.3)
maximises reward subject to expected cost J_C ≤ d. λ is kept ≥ 0 by learning log λ; one gradient
step on  L(log λ) = −λ·(J_C − d)  moves log λ by  +lr·λ·(J_C − d): λ grows while the constraint is
violated and decays toward (never below) 0 once it holds.

log λ is kept in float64: after hundreds of small updates (lr·λ·(J_C − d) of order 1e-3) float32's
7 significant digits lose the small steps once |log λ| is large, and the value saved in a checkpoint
must reload to exactly the same λ. λ = inf (or NaN) is refused: it would turn every advantage into
−A_c and hide that the constraint could not be met; cap it with ``max_value`` instead.
"""

from __future__ import annotations

import math
import sys

import torch
from torch import nn

from vlalign.objectives._checks import check_same_shape

LOG_FLOAT_MAX = math.log(sys.float_info.max)  # ≈ 709.78: exp() of anything larger is inf


class LagrangeMultiplier(nn.Module):
    """λ = exp(log_lambda), a learnable parameter (log-parameterised so λ ≥ 0 always).

    Use ``.update(mean_episode_cost)`` once per PPO iteration (one gradient step of size lr), or take
    ``.loss(mean_episode_cost)`` into an optimizer of your own. ``.value`` is the detached λ to use
    in :func:`safe_rlhf_advantages`.
    """

    def __init__(self, init_value: float = 1.0, cost_limit: float = 0.0, lr: float = 0.1,
                 max_value: float | None = None) -> None:
        super().__init__()
        if not (init_value > 0 and math.isfinite(init_value)):
            raise ValueError(f"LagrangeMultiplier: init_value must be finite and > 0 (λ = exp(log λ)), got {init_value}")
        if max_value is not None and not math.isfinite(max_value):
            raise ValueError(f"LagrangeMultiplier: max_value must be finite (or None for no cap), got {max_value}")
        if max_value is not None and max_value < init_value:
            raise ValueError(f"LagrangeMultiplier: max_value {max_value} < init_value {init_value}")
        self.log_lambda = nn.Parameter(torch.tensor(math.log(init_value), dtype=torch.float64))
        self.cost_limit = float(cost_limit)
        self.max_value = max_value
        self.lr = float(lr)

    @property
    def value(self) -> torch.Tensor:
        """Current λ ≥ 0, detached (a 0-d tensor)."""
        return self.log_lambda.detach().exp()

    def loss(self, mean_episode_cost: torch.Tensor | float) -> torch.Tensor:
        """L = −λ·(J_C − d); its gradient descent raises λ when J_C > d."""
        violation = torch.as_tensor(mean_episode_cost, dtype=torch.float64).detach() - self.cost_limit
        return -self.log_lambda.exp() * violation

    def update(self, mean_episode_cost: torch.Tensor | float) -> float:
        """One plain gradient-descent step of size ``lr`` on :meth:`loss` (its gradient w.r.t. log λ
        is −λ·(J_C − d), written out so no optimizer object is needed); returns the new λ."""
        cost = float(mean_episode_cost)
        if not math.isfinite(cost):
            raise ValueError(f"LagrangeMultiplier.update: mean_episode_cost must be finite, got {cost}")
        lam = float(self.value)
        new_log = float(self.log_lambda.detach()) + self.lr * lam * (cost - self.cost_limit)
        if self.max_value is not None:
            new_log = min(new_log, math.log(self.max_value))
        if not (math.isfinite(new_log) and new_log < LOG_FLOAT_MAX):
            raise ValueError(
                f"LagrangeMultiplier.update: λ would become inf (log λ = {new_log:.4g}) after mean episode cost "
                f"{cost} against the limit {self.cost_limit}; the constraint cannot be met at this lambda_lr. "
                "Set lambda_max (a cap on λ) or lower lambda_lr"
            )
        with torch.no_grad():
            self.log_lambda.fill_(new_log)
        return float(self.value)


def safe_rlhf_advantages(
    reward_advantages: torch.Tensor, cost_advantages: torch.Tensor, lam: torch.Tensor | float
) -> torch.Tensor:
    """Combined advantage of Safe RLHF (Dai et al. 2024), same shape as the inputs:

        A = (A_r − λ·A_c) / (1 + λ)


    Dividing by 1 + λ keeps the advantage scale bounded as λ grows (the paper's normalisation).
    λ is treated as a constant (detached) here: it is learned by :class:`LagrangeMultiplier`.
    """
    check_same_shape("safe_rlhf_advantages", reward_advantages=reward_advantages,
                     cost_advantages=cost_advantages)
    lam_t = torch.as_tensor(lam, dtype=reward_advantages.dtype, device=reward_advantages.device).detach()
    if lam_t.numel() != 1 or float(lam_t) < 0:
        raise ValueError(f"safe_rlhf_advantages: lam must be a scalar >= 0, got {lam_t.tolist()}")
    return (reward_advantages - lam_t * cost_advantages) / (1.0 + lam_t)


def fixed_penalty_advantages(
    reward_advantages: torch.Tensor, cost_advantages: torch.Tensor, coef: float
) -> torch.Tensor:
    """Advantage of the fixed cost penalty r − c·cost (no Lagrangian): GAE is linear in the rewards and
    the critics, so GAE(r − c·cost, V_r − c·V_c) = A_r − c·A_c. The penalty never adapts: too small a c
    leaves the constraint violated, too large a c costs reward it did not need to (the trade-off the
    Lagrangian searches for). Same shape as the inputs."""
    check_same_shape("fixed_penalty_advantages", reward_advantages=reward_advantages,
                     cost_advantages=cost_advantages)
    if not coef >= 0:
        raise ValueError(f"fixed_penalty_advantages: coef must be >= 0, got {coef}")
    return reward_advantages - coef * cost_advantages
