"""Tiny, randomly initialised models of REAL Hugging Face image-text-to-text architectures.

WHY: every code path (SFT, DPO, reward models, PPO/GRPO, evaluation) must run end to end on CPU in
seconds and on every supported family, with no network. Each family has one builder function in
``TINY_FAMILIES``; it returns an unsaved ``(model, processor)`` pair built from the family's real
config/processor classes, a locally trained tokenizer and a chat template. :func:`build_tiny` saves
it with ``save_pretrained`` so that it loads back through ``AutoModelForImageTextToText`` and
``AutoProcessor`` exactly like a hub checkpoint.
"""

from __future__ import annotations

from vlalign.models.tiny.core import (
    FAMILY_SIZES,
    TINY_FAMILIES,
    TINY_SIZES,
    SizeSpec,
    build_tiny,
    size_names,
    size_spec,
    spec_from_config,
)

# Importing the family modules registers their builders.
from vlalign.models.tiny import idefics3, llava, qwen2_vl  # noqa: F401  isort: skip

# One name per distinct architecture (TINY_FAMILIES also holds aliases such as "smolvlm" -> idefics3):
# tests parametrize over these so that each architecture is built and checked once.
ARCHITECTURES: tuple[str, ...] = ("llava", "qwen2_vl", "idefics3")

__all__ = ["ARCHITECTURES", "FAMILY_SIZES", "TINY_FAMILIES", "TINY_SIZES", "SizeSpec", "build_tiny", "size_names",
           "size_spec", "spec_from_config"]
