"""The scalar-head model of a critique reward model: one forward gives the score and the critique's log-probs.

WHY a subclass and not a second forward: training needs the log-probs of the critique tokens (its language-
model loss) and the hidden state at the critique's last token (the score) of the same rows; both come out of
one decoder pass, and data-parallel wrappers see one ``forward`` call per micro-batch.
"""

from __future__ import annotations

from typing import Any

import torch

from vlalign.models.heads import ScalarHeadModel, last_token_index
from vlalign.models.logprobs import response_logprobs


class CritiqueHeadModel(ScalarHeadModel):
    """A scalar-head model whose forward can also return the log-probs of the critique tokens.

    ``forward(inputs, mask)`` -> scores (B,) (as :class:`ScalarHeadModel`); with ``with_logprobs=True`` ->
    (scores (B,), token log-probs (B, T), token mask (B, T)) from the same forward, so data-parallel
    wrappers see one call per micro-batch."""

    def forward(self, inputs: dict[str, Any], mask: torch.Tensor | None = None,
                with_logprobs: bool = False) -> Any:
        if not with_logprobs:
            return self.score(inputs, mask)
        mask = inputs["attention_mask"] if mask is None else mask  # (B, T)
        logps, token_mask, hidden = response_logprobs(self.backbone, inputs, mask, return_hidden=True)
        idx = last_token_index(mask)  # (B,)
        picked = hidden[torch.arange(hidden.shape[0], device=hidden.device), idx]  # (B, H)
        return self.head(picked), logps, token_mask  # (B,), (B, T), (B, T)
