"""Segment-level rewards for PPO (``reward_granularity: segment``): the reward source's judged spans
(character offsets into each decoded response, e.g. every Shapes mention with its share of the score,
:class:`vlalign.rewards.base.JudgedSpan`) become rewards on the response tokens where the spans end.

The mapping from characters to tokens decodes each response's token prefixes with the same tokenizer
and settings that produced the response text (``skip_special_tokens=True``), so token j covers the
characters between the decoded lengths of prefixes j−1 and j; a span goes to the token holding its
last character (:func:`vlalign.objectives.token_at_char`). The values, and the sequence score minus
their sum on the last token, make the token rewards (:func:`vlalign.objectives.span_token_rewards`):
each response's total reward is the same as at ``sequence`` granularity, only the credit moves.
"""

from __future__ import annotations

from typing import Any

import torch

from vlalign.objectives import span_token_rewards, token_at_char
from vlalign.rewards.base import RewardOutput, Sample


class KeepOutput:
    """A reward source that remembers its last :class:`RewardOutput` (the spans ride along with the
    scores the shared scoring step reads, so nothing is scored twice)."""

    def __init__(self, source: Any) -> None:
        self.source, self.name = source, getattr(source, "name", type(source).__name__)
        self.last: RewardOutput | None = None

    def score(self, samples: list[Sample]) -> RewardOutput:
        self.last = self.source.score(samples)
        return self.last


def piece_ends(tokenizer: Any, token_ids: list[int]) -> list[int]:
    """Decoded length after each token of a response: ``ends[j]`` = len(decode(tokens[:j+1]))."""
    ends, longest = [], 0
    for j in range(len(token_ids)):
        longest = max(longest, len(tokenizer.decode(token_ids[: j + 1], skip_special_tokens=True)))
        ends.append(longest)  # kept non-decreasing (a merge may shorten a prefix's decoding)
    return ends


def span_columns(tokenizer: Any, input_ids: torch.Tensor, mask: torch.Tensor, spans: list[list[Any]]) -> list[list[int]]:
    """For each row, the (N, T) column of the token where each judged span ends."""
    out = []
    for i, row_spans in enumerate(spans):
        cols = mask[i].nonzero().squeeze(1).tolist()
        if not cols:
            out.append([])
            continue
        ends = piece_ends(tokenizer, input_ids[i, cols].tolist())
        out.append([cols[token_at_char(ends, s.end)] for s in row_spans])
    return out


def segment_token_rewards(tokenizer: Any, exp: Any, scores: torch.Tensor, output: RewardOutput | None,
                          scale: float = 1.0, source: str = "reward") -> torch.Tensor:
    """(N, T) token rewards from the judged spans of ``output`` (the source's output for ``exp``'s rows):
    each span's value × ``scale`` at its end token, ``scores`` minus their sum on the last token.
    ``scale`` is the factor the scores were scaled by (``whiten_rewards``)."""
    spans = None if output is None else output.spans
    if spans is None:
        raise ValueError(f"reward_granularity: segment needs a reward source that judges spans of the answer "
                         f"(JudgedSpan values: shapes_rules, shapes_objects, shapes_colors, shapes_counts); "
                         f"{source!r} returned none. Use reward_granularity: sequence with this source")
    if len(spans) != exp.num_rows:
        raise ValueError(f"{source!r} returned spans for {len(spans)} samples, expected {exp.num_rows}")
    columns = span_columns(tokenizer, exp.input_ids, exp.response_mask, spans)
    values = [[s.value * scale for s in row] for row in spans]
    return span_token_rewards(scores, exp.response_mask, columns, values)
