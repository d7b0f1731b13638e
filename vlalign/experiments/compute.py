"""Compute accounting of the experiments: token positions through the language model's forward passes.

Compute is counted by :class:`TokenCounter` as token positions entering the language model's input
embedding (prompt, image placeholders and response, padding included; one per decode step with the
KV cache). Backward passes are not counted (≈ 2× the forward of the trained rows).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.nn.modules.module import register_module_forward_pre_hook
from transformers import AutoConfig


class TokenCounter:
    """Counts token positions entering the text embedding (``num_embeddings == vocab_size``) of any
    model while active — trainers load their own model copies, so a global module hook is the only
    way to see them all without touching the trainers."""

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size
        self.tokens = 0
        self._handle: Any = None

    def _hook(self, module: Any, args: tuple) -> None:
        if isinstance(module, torch.nn.Embedding) and module.num_embeddings == self.vocab_size and args:
            self.tokens += int(args[0].numel())

    def __enter__(self) -> TokenCounter:  # noqa: PYI034 (Self needs Python 3.11; we support 3.10)
        self._handle = register_module_forward_pre_hook(self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.remove()


def text_vocab_size(model_dir: Path) -> int:
    """Vocabulary size of the language model of a saved VLM (what :class:`TokenCounter` watches for)."""
    cfg = AutoConfig.from_pretrained(model_dir)
    text = getattr(cfg, "text_config", None) or cfg
    return int(text.vocab_size)
