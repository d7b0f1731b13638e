"""Scalar heads on a VLM's decoder: reward/cost models (one score per sequence) and PPO values.

WHY a wrapper and not a new model class: any image-text-to-text model becomes a reward, cost or
value model by adding one ``Linear(hidden, 1)``; the backbone, its processor and its LoRA adapter
stay exactly as loaded, so a reward model is saved as backbone (or adapter) + ``score_head.pt``.
A reward model with several scores per sequence (an ensemble of K heads, or one head per rated
aspect) swaps the head for :class:`MultiHead`; the backbone is shared and computed once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlalign.models.logprobs import last_hidden_states, unwrap_model


def hidden_size_of(model: Any) -> int:
    config = unwrap_model(model).config
    text_config = getattr(config, "text_config", None) or config
    return int(text_config.hidden_size)


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last True position per row; mask (B, T) -> (B,). Works with left or right padding."""
    if not mask.any(dim=1).all():
        raise ValueError("a row of the mask has no True position: no token to read the score from")
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)  # (B, T)
    return torch.where(mask.bool(), positions, -1).max(dim=1).values  # (B,)


class ScalarHead(nn.Module):
    """Linear(hidden -> 1), zero-initialised bias and small weights so initial scores are near 0."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.proj = nn.Linear(hidden_size, 1)
        nn.init.normal_(self.proj.weight, std=1.0 / (hidden_size + 1) ** 0.5)
        nn.init.zeros_(self.proj.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.proj(hidden.to(self.proj.weight.dtype)).squeeze(-1)  # (..., H) -> (...)


class MultiHead(nn.Module):
    """K linear heads side by side, Linear(hidden -> K): scores (..., H) -> (..., K).

    Each output row of the weight is its own head with its own N(0, 1/(H+1)) draw, bias 0, so the K
    heads of an ensemble start apart and their disagreement means something from step 0. The
    output keeps its K axis even for K = 1, unlike :class:`ScalarHead`."""

    def __init__(self, hidden_size: int, outputs: int) -> None:
        super().__init__()
        if outputs < 1:
            raise ValueError(f"MultiHead: outputs must be >= 1, got {outputs}")
        self.proj = nn.Linear(hidden_size, outputs)
        nn.init.normal_(self.proj.weight, std=1.0 / (hidden_size + 1) ** 0.5)
        nn.init.zeros_(self.proj.bias)

    @property
    def outputs(self) -> int:
        return self.proj.out_features

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.proj(hidden.to(self.proj.weight.dtype))  # (..., H) -> (..., K)


class ScalarHeadModel(nn.Module):
    """A VLM backbone + ScalarHead (or MultiHead).

    ``score(inputs, mask)`` -> (B,) value at the LAST True position of ``mask`` (reward/cost models:
    pass the attention mask, or a mask ending at the last response token); (B, K) with a MultiHead.
    ``values(inputs)`` -> (B, T) value at every position (PPO critic); (B, T, K) with a MultiHead.
    """

    def __init__(self, backbone: Any, head: nn.Module | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head if head is not None else ScalarHead(hidden_size_of(backbone))

    def values(self, inputs: dict[str, Any]) -> torch.Tensor:
        hidden = last_hidden_states(self.backbone, inputs)  # (B, T, H)
        return self.head(hidden)  # (B, T) or (B, T, K)

    def score(self, inputs: dict[str, Any], mask: torch.Tensor | None = None) -> torch.Tensor:
        mask = inputs["attention_mask"] if mask is None else mask  # (B, T)
        hidden = last_hidden_states(self.backbone, inputs)  # (B, T, H)
        idx = last_token_index(mask)  # (B,)
        picked = hidden[torch.arange(hidden.shape[0], device=hidden.device), idx]  # (B, H)
        return self.head(picked)  # (B,) or (B, K)

    def forward(self, inputs: dict[str, Any], mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.score(inputs, mask)

    def save_head(self, directory: str | Path) -> Path:
        path = Path(directory) / "score_head.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(self.head.state_dict(), path)
        return path

    def load_head(self, directory: str | Path) -> None:
        path = Path(directory) / "score_head.pt"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: the directory holds no saved score head (save_head writes it)")
        self.head.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
