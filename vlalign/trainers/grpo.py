"""GRPO (Shao et al. 2024): K samples per prompt, group-relative advantages, clipped surrogate, k3 KL to
the reference inside the loss — a preset of the critic-free trainer :mod:`vlalign.trainers.pg`
(``advantage_estimator: grpo``). Options, all by config:

- ``scale_rewards: false``            advantages r − mean_group (Dr. GRPO: no std scaling); ``batch`` =
                                       one std over the whole batch (TRL's ``scale_rewards="batch"``);
- ``loss_aggregation: token_sum_norm`` Σ tokens / constant (Dr. GRPO: no length normalisation);
- ``clip_eps_high``                   asymmetric clipping (DAPO clip-higher); ``dual_clip_c`` dual clip;
- ``drop_zero_variance_groups``       skip groups whose K rewards are equal (DAPO dynamic sampling:
                                       their advantages are 0, they only cost compute);
- ``group_by``, ``singleton_groups``  groups given by a meta key; what a one-sample group gets.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from vlalign.trainers.pg import PGConfig, train_pg


class GRPOConfig(PGConfig):
    """GRPO: ``advantage_estimator: grpo`` with the KL as a loss term."""

    advantage_estimator: str = Field("grpo", description="grpo | dr_grpo | rloo (objectives ADVANTAGE_ESTIMATORS)")
    scale_rewards: bool | Literal["group", "batch", "none"] | None = Field(
        None, description="true / group (the default): ÷ the group's reward std; batch: ÷ the batch's; false / "
        "none: Dr. GRPO",
    )


def train_grpo(cfg: GRPOConfig, **kwargs: Any) -> dict[str, Any]:
    """GRPO as configured (``stop_after`` for tests); returns the run summary."""
    return train_pg(cfg, **kwargs)
