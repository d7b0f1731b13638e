"""The critique reward model's loss (MM-RLHF, Zhang et al. 2025), as pure torch functions.

A critique reward model writes a critique of an answer, then its scalar head reads (prompt + image,
answer, critique) and scores it. It is trained on both at once, per preference pair:

    loss = lm_weight · (NLL(critique_c) + NLL(critique_r)) / 2  +  score term

- NLL(critique) is the mean negative log-likelihood per token of the reference critique (teacher forcing):
  the language-model part, which teaches the model to write the critique;
- the score term is Bradley–Terry on the head's scores, −log σ(s_c − s_r), or, where a pair carries an
  absolute score for both answers, the squared error (s_c − y_c)² + (s_r − y_r)² halved (regression).

WHY a mean per critique (not a sum over all tokens of the batch): every pair weighs the same in both terms,
so ``lm_weight`` trades the two parts off the same way for short and long critiques.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from vlalign.objectives._checks import check_ndim, check_same_shape


class CritiqueLoss(NamedTuple):
    losses: torch.Tensor  # (B,) total per pair
    lm: torch.Tensor  # (B,) mean critique NLL of the pair's two critiques
    score: torch.Tensor  # (B,) Bradley–Terry or regression term


def sequence_nll(token_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood per row over its masked tokens: (B, T), (B, T) → (B,).

    A row without a masked token has no critique to learn from: an error, not a silent 0/0.
    """
    check_ndim("sequence_nll", 2, token_logps=token_logps, mask=mask)
    check_same_shape("sequence_nll", token_logps=token_logps, mask=mask)
    m = mask.to(token_logps.dtype)  # (B, T)
    counts = m.sum(dim=1)  # (B,)
    if bool((counts == 0).any()):
        raise ValueError("sequence_nll: a row has no critique token in its mask")
    return -(token_logps * m).sum(dim=1) / counts  # (B,)


def critique_rm_loss(
    nll_chosen: torch.Tensor,
    nll_rejected: torch.Tensor,
    chosen_scores: torch.Tensor,
    rejected_scores: torch.Tensor,
    lm_weight: float = 1.0,
    targets: torch.Tensor | None = None,
    has_target: torch.Tensor | None = None,
) -> CritiqueLoss:
    """Per-pair critique reward-model loss (see the module docstring); every input (B,), ``targets`` (B, 2)
    holds (y_c, y_r) and ``has_target`` (B,) bool says which pairs regress on them (the others use
    Bradley–Terry)."""
    check_ndim("critique_rm_loss", 1, nll_chosen=nll_chosen, nll_rejected=nll_rejected,
               chosen_scores=chosen_scores, rejected_scores=rejected_scores)
    check_same_shape("critique_rm_loss", nll_chosen=nll_chosen, nll_rejected=nll_rejected,
                     chosen_scores=chosen_scores, rejected_scores=rejected_scores)
    if lm_weight < 0:
        raise ValueError(f"critique_rm_loss: lm_weight must be >= 0, got {lm_weight}")
    lm = (nll_chosen + nll_rejected) / 2  # (B,)
    score = -F.logsigmoid(chosen_scores - rejected_scores)  # (B,)
    if targets is not None:
        if has_target is None or targets.shape != (chosen_scores.shape[0], 2):
            raise ValueError("critique_rm_loss: targets must be (B, 2) and come with has_target (B,)")
        y = targets.to(chosen_scores.dtype)
        regression = ((chosen_scores - y[:, 0]) ** 2 + (rejected_scores - y[:, 1]) ** 2) / 2  # (B,)
        score = torch.where(has_target.bool(), regression, score)
    return CritiqueLoss(lm_weight * lm + score, lm, score)
