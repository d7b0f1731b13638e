"""Shared-prefix forward for RL groups: the K samples of a prompt scored in ONE packed row.

WHY: GRPO/RLOO sample K responses per prompt, and the prompt (image tokens + text) is ~85% of each
of the K sequences. The batched forward runs the prompt and the vision tower K times; here every
group becomes one row ``[prompt | r_1 | ... | r_K]`` with the block attention mask and per-block
position ids of :mod:`vlalign.models.shared_prefix` (each response sees the prompt and its own
earlier tokens only, at the positions it has in its own row), so the log-probs are the batched ones
up to float rounding while the prompt and image are computed once per group.

This module only adapts the pair packing to the RL layout; the packing itself is
:func:`vlalign.models.shared_prefix.pack_layout`:

- rows are group-major (``g·K + j`` = sample j of prompt g, as :class:`vlalign.rollout.Experience`
  lays them out) while ``pack_layout`` reads block-major rows (``j·G + g``): :func:`group_order`
  permutes one into the other;
- the images come once per group (``group_images``), not K times;
- RL needs the sampling temperature and, for the policy pass, the per-token entropy.
"""

from __future__ import annotations

from typing import Any

import torch

from vlalign.models.logprobs import _check_mask, head_logprobs, scatter_tokens
from vlalign.models.shared_prefix import (
    PAIR_POSITIONS,
    SharedPrefixError,
    complete_inputs,
    hf_model,
    pack_layout,
    packed_inputs,
    unsupported_reason,
)


def group_order(num_rows: int, group_size: int) -> torch.Tensor:
    """Permutation ``order`` (N,) with ``order[j·G + g] = g·K + j``: group-major rows → block-major rows.

    E.g. N = 4, K = 2 (G = 2): group-major rows [g0s0, g0s1, g1s0, g1s1] = [0, 1, 2, 3] become
    block-major [g0s0, g1s0, g0s1, g1s1] = [0, 2, 1, 3].
    """
    if group_size < 1 or num_rows % group_size:
        raise SharedPrefixError(f"{num_rows} rows are not whole groups of {group_size} samples")
    return torch.arange(num_rows).view(num_rows // group_size, group_size).t().reshape(-1)  # (N,)


def is_grouped(group_ids: torch.Tensor, group_size: int) -> bool:
    """True when the rows are whole groups laid out group-major: rows g·K … g·K+K−1 share one prompt."""
    n = int(group_ids.numel())
    if group_size < 2 or n == 0 or n % group_size:
        return False
    blocks = group_ids.view(-1, group_size)  # (G, K)
    return bool((blocks == blocks[:, :1]).all())


def group_logprobs(
    model: Any,
    inputs: dict[str, Any],
    response_mask: torch.Tensor,
    group_size: int,
    group_images: dict[str, torch.Tensor],
    *,
    temperature: float = 1.0,
    return_entropy: bool = False,
) -> tuple[torch.Tensor, ...]:
    """Response log-probs of group-major rows, each group's prompt and image computed once.

    Args:
        inputs: the batched inputs of the N = G·K rows (``input_ids``/``attention_mask`` (N, T),
            right-padded ``[prompt | response | pad]``); their image tensors are not used here but
            Qwen2-VL's M-RoPE positions are derived from them exactly as the batched forward would.
        response_mask: (N, T) bool, True at the response tokens to score.
        group_size: K; every K consecutive rows must start with the same prompt.
        group_images: the image tensors of the G prompts, once each (what the model takes for G rows).
    Returns:
        ``(logps, mask)`` (N, T) float32, plus ``entropy`` (N, T) with ``return_entropy`` — the same
        as ``response_logprobs(model, inputs, response_mask, temperature=..., return_entropy=...)``.
    """
    reason = unsupported_reason(model)
    if reason:
        raise SharedPrefixError(f"shared-prefix group forward unavailable: {reason}")
    hf = hf_model(model)
    inputs = complete_inputs(model, inputs)
    input_ids = inputs["input_ids"]  # (N, T)
    mask = _check_mask(input_ids, response_mask)  # (N, T)
    N = input_ids.shape[0]
    device = input_ids.device
    order = group_order(N, group_size).to(device)  # (N,) block-major row -> group-major row
    G = N // group_size
    ids_b = input_ids[order]  # (N, T) block-major
    src, seg, hidden_at_b = (
        t.to(device) for t in pack_layout(ids_b, inputs["attention_mask"][order], mask[order], G)
    )  # (G, S), (G, S), (N, T)
    positions = PAIR_POSITIONS.get(hf.config.model_type)(hf, inputs)  # (N, T) or (C, N, T)
    positions_b = positions.index_select(-2, order)  # same rows, block-major
    packed = packed_inputs(hf, ids_b, positions_b, seg, src, group_images)  # (G, S) rows
    out = model(**packed, logits_to_keep=1, output_hidden_states=True, use_cache=False)
    hidden = out.hidden_states[-1]  # (G, S, H)

    hidden_at = torch.empty_like(hidden_at_b)
    hidden_at[order] = hidden_at_b  # (N, T) back to group-major rows
    predicts = mask[:, 1:]  # (N, T-1): the hidden state at t-1 predicts token t
    selected = hidden.reshape(G * hidden.shape[1], -1)[hidden_at[:, :-1][predicts]]  # (M, H)
    targets = input_ids[:, 1:][predicts]  # (M,)
    token_logp, entropy = head_logprobs(model, selected, targets, temperature, return_entropy)
    result: tuple[torch.Tensor, ...] = (scatter_tokens(token_logp, predicts), mask.float())
    if return_entropy:
        result = (*result, scatter_tokens(entropy, predicts))
    return result
