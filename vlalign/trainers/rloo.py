"""RLOO (Ahmadian et al. 2024, "Back to Basics"): REINFORCE with a leave-one-out baseline over the K
samples of each prompt — a preset of the critic-free trainer :mod:`vlalign.trainers.pg`
(``advantage_estimator: rloo``). As in that paper the KL to the reference is a penalty on the reward
(r − β·Σ_t k1_t per response, ``kl_in_reward: true``), not a loss term; with one update per rollout the
clipped surrogate reduces to plain REINFORCE (ratio = 1).

Option: ``normalize_advantages: true`` whitens the advantages over the rollout batch (mean 0, std 1;
TRL's RLOO ``normalize_advantages``). Off by default, as in the paper, TRL (default False) and OpenRLHF
(which whitens gae/reinforce/reinforce_baseline, not rloo).

What it does and does not fix (issue #7, toy task of tests/integration/test_rl_grpo.py, lr 3e-2): raw
leave-one-out advantages there are ~0.05 against GRPO's ~0.7, but with Adam a constant factor cancels
(raw advantages × 14 gave nearly the whitened run's reward curve; neither rose by 0.1). The test failed
because 8 rollouts of 8 samples were too few (GRPO itself missed the +0.1 on seed 1, Dr. GRPO on all 3
seeds). With 16 rollouts of 16 samples GRPO, Dr. GRPO and whitened RLOO rose > 0.1 on every seed tried,
raw RLOO on 4 of 5 (0.099 on the fifth); whitened RLOO rose faster than raw (mean 0.27 vs 0.20 over 5
seeds): every rollout gets the same step size, whatever its reward spread.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from vlalign.trainers.pg import PGConfig, train_pg


class RLOOConfig(PGConfig):
    """RLOO: K (rollout.num_samples ≥ 2), kl_coef (a k1 penalty on the reward), the shared PG settings, and
    whether to whiten the advantages over the batch."""

    advantage_estimator: str = Field("rloo", description="grpo | dr_grpo | rloo (objectives ADVANTAGE_ESTIMATORS)")
    kl_in_reward: bool = Field(True, description="true = −β·KL per token on the reward; false = β·KL loss term")
    kl_estimator: str = Field("k1", description="name in objectives KL_ESTIMATORS (the reward penalty: k1)")
    normalize_advantages: bool = Field(
        False,
        description="whiten advantages over the rollout batch (mean 0, std 1), so their size no longer "
        "depends on the reward's spread; off = plain leave-one-out advantages, in reward units",
    )


def train_rloo(cfg: RLOOConfig, **kwargs: Any) -> dict[str, Any]:
    """RLOO as configured (``stop_after`` for tests); returns the run summary."""
    return train_pg(cfg, **kwargs)
