"""How the RL path scores an :class:`Experience`: one row per sample, or one packed row per group.

WHY a choice: the policy, old-policy and reference passes of GRPO/RLOO all score the same N = G·K
rows, and the K rows of a group share their prompt and image (~85% of every sequence on VLM data).
``shared_prefix`` packs each group as ``[prompt | r_1 | ... | r_K]``
(:mod:`vlalign.models.group_prefix`) so the prompt and the vision tower run once per group — same
log-probs up to float rounding; ``batched`` is the plain layout and works for every model. ``auto``
picks ``shared_prefix`` where it is verified exact (the model types in
:data:`vlalign.models.shared_prefix.VERIFIED_EXACT`, an attention kernel that honours a 4D mask,
K ≥ 2), else ``batched``.

Rows that are not whole groups (a minibatch cut across groups) are scored batched: the packed layout
needs every sample of a prompt in the same call. Whole groups in shuffled order (the one minibatch of
a rollout, whose rows ``minibatch_rows`` permutes) are sorted by group, scored packed, and put back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from vlalign.registry import Registry
from vlalign.rollout.experience import Experience

# name -> fn(model, exp, group_size, temperature, return_entropy) -> (logps (N, T), mask (N, T)[, entropy (N, T)])
RL_FORWARDS: Registry[Callable[..., tuple[torch.Tensor, ...]]] = Registry("RL forward")


@RL_FORWARDS.register("batched")
def batched_logprobs(model: Any, exp: Experience, group_size: int, temperature: float = 1.0,
                     return_entropy: bool = False) -> tuple[torch.Tensor, ...]:
    """Every sample as its own row (prompt and image recomputed per sample)."""
    from vlalign.models.logprobs import response_logprobs
    from vlalign.models.shared_prefix import complete_inputs

    inputs = complete_inputs(model, exp.model_inputs())
    return response_logprobs(model, inputs, exp.response_mask.bool(), return_entropy=return_entropy,
                             temperature=temperature)


@RL_FORWARDS.register("shared_prefix")
def shared_prefix_logprobs(model: Any, exp: Experience, group_size: int, temperature: float = 1.0,
                           return_entropy: bool = False) -> tuple[torch.Tensor, ...]:
    """Each group packed as one row. Rows that are whole groups in any order (a shuffled full-batch
    minibatch) are sorted by group first and put back after; rows that are not whole groups fall back
    to :func:`batched_logprobs`."""
    from vlalign.models.group_prefix import group_logprobs, is_grouped

    order = torch.argsort(exp.group_ids.cpu(), stable=True)  # (N,) rows grouped, sample order kept
    if not is_grouped(exp.group_ids.cpu()[order], group_size):
        return batched_logprobs(model, exp, group_size, temperature, return_entropy)
    in_order = order.tolist() == list(range(exp.num_rows))
    grouped = exp if in_order else exp.select(order)
    out = group_logprobs(model, grouped.model_inputs(), grouped.response_mask.bool(), group_size,
                         grouped.group_image_inputs(group_size), temperature=temperature,
                         return_entropy=return_entropy)
    if in_order:
        return out
    back = torch.empty_like(order)
    back[order] = torch.arange(order.numel())  # (N,) position of each original row in the sorted rows
    back = back.to(out[0].device)
    return tuple(t[back] for t in out)


def resolve_forward(name: str, model: Any, group_size: int) -> tuple[str, str | None]:
    """Config name (``auto``/``shared_prefix``/``batched``) → (forward used, why not shared_prefix or None).

    An explicit ``shared_prefix`` that cannot be exact falls back to ``batched`` with the reason (the
    trainer logs it), as DPO's pair forward does.
    """
    if name == "batched":
        return "batched", None
    if name not in ("auto", "shared_prefix"):
        RL_FORWARDS.get(name)  # raises with the known names
        return name, None
    from vlalign.models.shared_prefix import auto_forward_reason, unsupported_reason

    if group_size < 2:
        return "batched", "rollout.num_samples is 1: no group shares a prompt"
    # auto: only the families whose packed forward is tested exact (the same set DPO's auto uses;
    # tests/unit/test_group_prefix.py checks the group layout on each); explicit: wherever it can be
    reason = auto_forward_reason(model) if name == "auto" else unsupported_reason(model)
    return ("batched", reason) if reason else ("shared_prefix", None)


def experience_logprobs(model: Any, exp: Experience, *, forward: str = "batched", group_size: int = 1,
                        temperature: float = 1.0, return_entropy: bool = False) -> tuple[torch.Tensor, ...]:
    """Log-probs (and entropy) of ``exp``'s response tokens with the named forward (see module doc)."""
    return RL_FORWARDS.get(forward)(model, exp, group_size, temperature, return_entropy)
