"""The maths of alignment as pure torch functions (no model, no I/O, no config objects).

Trainers call these and never re-implement a formula. Everything a config names is reachable
from a registry:

- PREFERENCE_LOSSES   dpo, cdpo, ipo, hinge, simpo, orpo, kto, mdpo, dense_dpo, mm_dpo
                      (entries take a PreferenceBatchLogps; ``.requires_reference`` is False for
                      simpo and orpo, so trainers can skip the reference pass)
- ADVANTAGE_ESTIMATORS gae, grpo, dr_grpo, rloo (groups by size or by id; grpo ``scale=group|batch|none``;
                      rloo ``whiten=True`` whitens over the batch; ``singleton=zero|raw`` for 1-sample groups)
- KL_ESTIMATORS       k1, k2, k3, low_var_kl (verl's, clamped), abs
- ENSEMBLE_AGGREGATIONS mean_minus_std (alias conservative), uwo (alias penalty: mean − c·variance),
                      wco (minimum), mean: K reward-model members' scores → one conservative reward
- PG_LOSS_AGGREGATIONS token_mean, seq_mean_token_mean, token_sum_norm (each with a ``unit`` and an
                      optional global ``denominator``, so a batch split over micro-batches/processes
                      gives the same loss)
"""

from vlalign.objectives.advantages import (
    ADVANTAGE_ESTIMATORS,
    AdvantageEstimator,
    AdvantageOutput,
    constant_group_rows,
    gae,
    group_index,
    grpo_advantages,
    rloo_advantages,
    whiten_batch_advantages,
    zero_variance_groups,
)
from vlalign.objectives.dense_rewards import span_token_rewards, token_at_char
from vlalign.objectives.kl import (
    KL_ESTIMATORS,
    AdaptiveKLController,
    FixedKLController,
    kl_abs,
    kl_estimate,
    kl_k1,
    kl_k2,
    kl_k3,
    kl_low_var,
)
from vlalign.objectives.lagrangian import LagrangeMultiplier, fixed_penalty_advantages, safe_rlhf_advantages
from vlalign.objectives.masked import masked_mean, masked_sum, masked_var, masked_whiten, zero_masked
from vlalign.objectives.policy_gradient import (
    PG_LOSS_AGGREGATIONS,
    Aggregation,
    PolicyLossOutput,
    count_units,
    ppo_policy_loss,
    ppo_value_loss,
    seq_mean_token_mean,
    token_mean,
    token_sum_norm,
    truncated_importance_weights,
)
from vlalign.objectives.preference import (
    KTOLossOutput,
    PreferenceLossOutput,
    dense_dpo_loss,
    dpo_loss,
    dynamic_beta,
    hinge_loss,
    ipo_loss,
    kto_kl_reference,
    kto_loss,
    log1mexp,
    mdpo_anchor_loss,
    mdpo_conditional_loss,
    mdpo_loss,
    mm_dpo_loss,
    orpo_loss,
    segment_weighted_logps,
    simpo_loss,
)
from vlalign.objectives.preference_registry import (
    PREFERENCE_LOSSES,
    PreferenceBatchLogps,
    PreferenceObjective,
    preference_batch_fields,
)
from vlalign.objectives.reward_model import (
    ENSEMBLE_AGGREGATIONS,
    aspect_bt_loss,
    aspect_labels,
    bootstrap_weights,
    bradley_terry_loss,
    conservative_reward,
    ensemble_bt_loss,
    ensemble_mean_std,
    plackett_luce_loss,
    preference_accuracy,
    safe_rlhf_cost_loss,
    weighted_aspects,
)

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "ENSEMBLE_AGGREGATIONS",
    "KL_ESTIMATORS",
    "PG_LOSS_AGGREGATIONS",
    "PREFERENCE_LOSSES",
    "AdaptiveKLController",
    "AdvantageEstimator",
    "AdvantageOutput",
    "Aggregation",
    "FixedKLController",
    "KTOLossOutput",
    "LagrangeMultiplier",
    "PolicyLossOutput",
    "PreferenceBatchLogps",
    "PreferenceLossOutput",
    "PreferenceObjective",
    "aspect_bt_loss",
    "aspect_labels",
    "bootstrap_weights",
    "bradley_terry_loss",
    "conservative_reward",
    "constant_group_rows",
    "count_units",
    "dense_dpo_loss",
    "dpo_loss",
    "dynamic_beta",
    "ensemble_bt_loss",
    "ensemble_mean_std",
    "fixed_penalty_advantages",
    "gae",
    "group_index",
    "grpo_advantages",
    "hinge_loss",
    "ipo_loss",
    "kl_abs",
    "kl_estimate",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "kl_low_var",
    "kto_kl_reference",
    "kto_loss",
    "log1mexp",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "mdpo_anchor_loss",
    "mdpo_conditional_loss",
    "mdpo_loss",
    "mm_dpo_loss",
    "orpo_loss",
    "plackett_luce_loss",
    "ppo_policy_loss",
    "ppo_value_loss",
    "preference_accuracy",
    "preference_batch_fields",
    "rloo_advantages",
    "safe_rlhf_advantages",
    "safe_rlhf_cost_loss",
    "segment_weighted_logps",
    "seq_mean_token_mean",
    "simpo_loss",
    "span_token_rewards",
    "token_at_char",
    "token_mean",
    "token_sum_norm",
    "truncated_importance_weights",
    "weighted_aspects",
    "whiten_batch_advantages",
    "zero_masked",
    "zero_variance_groups",
]
