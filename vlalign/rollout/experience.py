"""The unit of data of the RL path: one batch of sampled responses and everything scored on them.

Layout: N = B·K rows, grouped by prompt — rows ``g·K … g·K+K−1`` are the K samples of prompt ``g``
(``group_ids`` says so explicitly). Token tensors are right-padded full sequences
``[prompt | response | pad]`` so that one ordinary forward scores them; every per-token quantity is
aligned with ``input_ids`` and is meaningful only where ``response_mask`` is 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch


@dataclass
class Experience:
    input_ids: torch.Tensor  # (N, T) long, prompt + response, right-padded
    attention_mask: torch.Tensor  # (N, T) long, 1 on prompt and response tokens
    response_mask: torch.Tensor  # (N, T) float, 1 on response tokens (eos included), 0 elsewhere
    image_inputs: dict[str, torch.Tensor]  # processor image tensors for the N rows (each prompt's repeated K×)
    group_ids: torch.Tensor  # (N,) long, index of the prompt each row was sampled from
    texts: list[str]  # N decoded responses (special tokens removed)
    prompts: list[str]  # N prompt texts (the record's user text, not the chat template)
    metas: list[dict[str, Any]]  # N record metas (ground truth for rule rewards)
    images: list[list[Any]]  # N lists of image refs (what reward sources see)
    old_logprobs: torch.Tensor | None = None  # (N, T) log π_old(token), 0 off the response
    ref_logprobs: torch.Tensor | None = None  # (N, T) log π_ref(token), 0 off the response
    values: torch.Tensor | None = None  # (N, T) critic V(s_t) per response token (PPO)
    rewards: torch.Tensor | None = None  # (N,) scalar reward of each response
    costs: torch.Tensor | None = None  # (N,) scalar cost of each response (Safe RLHF)
    advantages: torch.Tensor | None = None  # (N, T) per-token advantage (filled by the trainer)
    returns: torch.Tensor | None = None  # (N, T) value targets (PPO)
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # any other (N, ...) tensor
    ids: list[str] = field(default_factory=list)  # N row ids "<record id>/<sample>" (reports name them)

    @property
    def num_rows(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def response_lengths(self) -> torch.Tensor:
        return self.response_mask.sum(-1)  # (N,)

    def model_inputs(self) -> dict[str, torch.Tensor]:
        """What ``model(**inputs)`` takes for a forward over these rows."""
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask, **self.image_inputs}

    def select(self, rows: torch.Tensor | list[int]) -> Experience:
        """A sub-batch (minibatch) of the rows ``rows``; image tensors are cut per row (see
        :func:`image_rows`), lists and per-row tensors are indexed."""
        idx = torch.as_tensor(rows, dtype=torch.long)
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "image_inputs":
                out[f.name] = select_image_rows(value, self.image_chunks(), idx.tolist())
            elif f.name == "extras":
                out[f.name] = {k: v[idx] for k, v in value.items()}
            elif isinstance(value, torch.Tensor):
                out[f.name] = value[idx]
            elif isinstance(value, list):
                out[f.name] = [value[i] for i in idx.tolist()] if value else []
            else:
                out[f.name] = value
        return replace(self, **out)

    def image_chunks(self) -> dict[str, list[int]]:
        """For each image tensor: how many of its dim-0 entries belong to each row (kept in extras)."""
        return {k: self.extras[f"_chunks/{k}"].tolist() for k in self.image_inputs if f"_chunks/{k}" in self.extras}

    def group_image_inputs(self, group_size: int) -> dict[str, torch.Tensor]:
        """The image tensors once per group (of rows 0, K, 2K, ...): what a shared-prefix forward takes,
        since the K rows of a group carry the same repeated images."""
        return select_image_rows(self.image_inputs, self.image_chunks(), list(range(0, self.num_rows, group_size)))

    def to(self, device: torch.device | str) -> Experience:
        moved = {
            f.name: getattr(self, f.name).to(device)
            for f in fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        moved["image_inputs"] = {k: v.to(device) for k, v in self.image_inputs.items()}
        moved["extras"] = {k: v.to(device) for k, v in self.extras.items()}
        return replace(self, **moved)


def select_image_rows(
    image_inputs: dict[str, torch.Tensor], chunks: dict[str, list[int]], rows: list[int]
) -> dict[str, torch.Tensor]:
    """Cut the image tensors of ``rows`` out of a batch whose row i owns ``chunks[key][i]`` consecutive
    dim-0 entries of ``image_inputs[key]`` (1 image per row for LLaVA; many patches for Qwen2-VL)."""
    out = {}
    for key, tensor in image_inputs.items():
        sizes = chunks.get(key)
        if sizes is None:
            raise KeyError(f"no per-row chunk sizes recorded for image tensor {key!r}")
        pieces = torch.split(tensor, sizes, dim=0)
        out[key] = torch.cat([pieces[i] for i in rows], dim=0)
    return out
