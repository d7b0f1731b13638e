"""Segment-level (dense) rewards for RL: judged spans of a response → per-token rewards.

RLHF-V (Yu et al. 2024, "RLHF-V: Towards Trustworthy MLLMs via Behavior Alignment from Fine-grained
Correctional Human Feedback") shows that telling the model WHICH segment is wrong carries more signal
per label than one score per answer. For PPO that signal becomes a dense reward: each judged span's
value lands on the response token where the span ends, and whatever the spans do not explain (the
sequence score minus the sum of the span values) lands on the last token. The total reward of a
response is therefore unchanged — with γ = 1 the return of the first token is still the sequence
score — only the credit moves: tokens after a wrong segment no longer pay for it. A comparison of
``reward_granularity: segment`` against ``sequence`` thus changes credit assignment and nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from vlalign.objectives._checks import check_ndim


def token_at_char(piece_ends: Sequence[int], char_end: int) -> int:
    """Index of the response token holding the last character of a span ``[start, char_end)``:
    the first token whose text ends at or after ``char_end`` (``piece_ends[j]`` = characters of the
    decoded text covered by tokens 0..j, non-decreasing). A zero-length span (an omission at a
    position) goes to the token that ends at or after the position; position 0 to token 0; a
    position past the text to the last token."""
    if not piece_ends:
        raise ValueError("token_at_char: the response has no tokens")
    for j, end in enumerate(piece_ends):
        if end >= max(char_end, 1):
            return j
    return len(piece_ends) - 1


def span_token_rewards(scores: torch.Tensor, mask: torch.Tensor, span_tokens: Sequence[Sequence[int]],
                       span_values: Sequence[Sequence[float]]) -> torch.Tensor:
    """(N, T) token rewards: row i gets ``span_values[i][s]`` at column ``span_tokens[i][s]`` (several
    spans on one token add up) and ``scores[i] − Σ_s span_values[i][s]`` at its last response token,
    so each row sums to its score. Columns index the (N, T) layout of ``mask``; each must be a
    response token. Rows with an empty mask get nothing."""
    check_ndim("span_token_rewards", 1, scores=scores)
    check_ndim("span_token_rewards", 2, mask=mask)
    n = mask.shape[0]
    if not (scores.shape[0] == n == len(span_tokens) == len(span_values)):
        raise ValueError(f"span_token_rewards: {scores.shape[0]} scores, {n} mask rows, {len(span_tokens)} span "
                         f"token lists and {len(span_values)} span value lists; need one of each per row")
    out = torch.zeros(mask.shape, dtype=torch.float32)  # (N, T)
    for i in range(n):
        cols = mask[i].nonzero().squeeze(1).tolist()
        if not cols:
            continue
        if len(span_tokens[i]) != len(span_values[i]):
            raise ValueError(f"span_token_rewards: row {i} has {len(span_tokens[i])} span tokens but "
                             f"{len(span_values[i])} span values")
        allowed = set(cols)
        for col, value in zip(span_tokens[i], span_values[i], strict=True):
            if col not in allowed:
                raise ValueError(f"span_token_rewards: row {i}: column {col} is not a response token "
                                 f"(response columns {cols[0]}..{cols[-1]})")
            out[i, col] += float(value)
        out[i, cols[-1]] += float(scores[i]) - float(sum(span_values[i]))
    return out
