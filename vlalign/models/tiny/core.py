"""Registry, size presets and the save step shared by every tiny family."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlalign.registry import Registry

# name -> builder(size: SizeSpec, seed: int) -> (model, processor)
TINY_FAMILIES: Registry[Callable[..., tuple[Any, Any]]] = Registry("tiny model family")


@dataclass(frozen=True)
class SizeSpec:
    """Dimensions of a tiny model; every family maps them onto its own config classes."""

    text_hidden: int
    text_layers: int
    text_heads: int
    text_intermediate: int
    vision_hidden: int
    vision_layers: int
    vision_heads: int
    vision_intermediate: int
    vocab_size: int  # BPE target (the trainer stops earlier when the built-in corpus has no more merges)
    image_size: int = 64  # pixels per side (LLaVA: the processor's crop; Qwen2-VL: sqrt of max_pixels)
    patch_size: int = 8  # -> (64 / 8)^2 = 64 patches per image before any merging
    text_kv_heads: int | None = None  # grouped-query attention (Qwen2-VL-2B: 12 heads, 2 KV heads); None = text_heads
    pad_vocab_to: int | None = None  # model vocabulary (embedding + output rows) beyond the tokenizer's, as
    # real checkpoints pad theirs (Qwen2-VL: 151,936 rows for a 151,657-token tokenizer)

    @property
    def kv_heads(self) -> int:
        return self.text_kv_heads or self.text_heads

    def model_vocab(self, tokenizer_len: int) -> int:
        return max(tokenizer_len, self.pad_vocab_to or 0)


TINY_SIZES: dict[str, SizeSpec] = {
    # builds in ~1-2 s, well under 1M parameters: for unit/integration tests
    "tiny": SizeSpec(64, 2, 4, 256, 64, 2, 4, 256, vocab_size=640),
    # ~20-40M parameters: for benchmarks (DESIGN.md "small LLaVA")
    "small": SizeSpec(512, 8, 8, 1376, 256, 4, 4, 1024, vocab_size=1024),
}

# Benchmark models with the shapes of real checkpoints, per family (bench/README.md, "Benchmark models",
# has the table `python bench/model_shapes.py` computes from the public configs in bench/configs/):
# - bench-mini: the FLOP balance of a DPO pair (decoder layers : output layer : vision tower) and the token
#   composition (image tokens per image as the real processor gives them) of Qwen2-VL-2B / LLaVA-1.5;
# - bench-vocab: the real vocabulary (Qwen2-VL 151,936; LLaVA-1.5 32,064) on a narrow decoder, where the
#   output layer is most of the work.
FAMILY_SIZES: dict[str, dict[str, SizeSpec]] = {
    "bench-mini": {
        # Qwen2-VL-2B: 1536 x 28 (12 heads, 2 KV), MLP 8960, vocab 151,936, ViT 1280 x 32; 448 px -> 256 tokens
        "qwen2_vl": SizeSpec(512, 8, 8, 2944, 448, 7, 8, 1792, vocab_size=14336, image_size=448, patch_size=14,
                             text_kv_heads=2, pad_vocab_to=14336),
        # LLaVA-1.5-7B: 4096 x 32, MLP 11008, vocab 32,064, CLIP-L/14 1024 x 24 at 336 px -> 576 tokens
        "llava": SizeSpec(512, 8, 8, 1376, 128, 4, 4, 512, vocab_size=1024, image_size=336, patch_size=14,
                          pad_vocab_to=1024),
    },
    "bench-vocab": {
        "qwen2_vl": SizeSpec(256, 4, 4, 1472, 256, 4, 4, 1024, vocab_size=151936, image_size=448, patch_size=14,
                             text_kv_heads=1, pad_vocab_to=151936),
        "llava": SizeSpec(256, 4, 4, 688, 128, 4, 4, 512, vocab_size=32064, image_size=336, patch_size=14,
                          pad_vocab_to=32064),
    },
}


def size_names() -> list[str]:
    return [*TINY_SIZES, *FAMILY_SIZES]


def size_spec(family: str, size: str) -> SizeSpec:
    """The dimensions of ``size`` for ``family`` (family-specific for the benchmark sizes)."""
    if size in TINY_SIZES:
        return TINY_SIZES[size]
    if size not in FAMILY_SIZES:
        raise KeyError(f"unknown tiny size {size!r}; choose one of {', '.join(size_names())}")
    per_family = FAMILY_SIZES[size]
    if family not in per_family:
        raise KeyError(f"size {size!r} exists for {', '.join(per_family)}, not for {family!r}")
    return per_family[family]


def spec_from_config(config: dict[str, Any]) -> SizeSpec:
    """The :class:`SizeSpec` of a Qwen2-VL ``config.json`` (nested text/vision configs, as in
    ``bench/configs/qwen2_vl_2b.json``): its real dimensions and vocabulary, 448-pixel images."""
    t, v = config["text_config"], config["vision_config"]
    return SizeSpec(
        text_hidden=t["hidden_size"], text_layers=t["num_hidden_layers"], text_heads=t["num_attention_heads"],
        text_intermediate=t["intermediate_size"], vision_hidden=v["embed_dim"], vision_layers=v["depth"],
        vision_heads=v["num_heads"], vision_intermediate=int(v["embed_dim"] * v["mlp_ratio"]),
        vocab_size=t["vocab_size"], image_size=448, patch_size=v["patch_size"],
        text_kv_heads=t["num_key_value_heads"], pad_vocab_to=t["vocab_size"],
    )


def build_tiny(family: str, out_dir: str | Path, size: str = "tiny", seed: int = 0, spec: SizeSpec | None = None,
               dtype: str = "float32") -> Path:
    """Build a random ``family`` model of ``size`` (or of the dimensions ``spec``), save model +
    processor into ``out_dir`` with weights in ``dtype``; return the folder.

    The result loads with ``AutoModelForImageTextToText.from_pretrained(out_dir)`` and
    ``AutoProcessor.from_pretrained(out_dir)`` with ``HF_HUB_OFFLINE=1``.
    """
    import torch

    builder = TINY_FAMILIES.get(family)
    spec = spec or size_spec(family, size)
    torch.manual_seed(seed)
    model, processor = builder(spec, seed)
    model = model.to(getattr(torch, dtype))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    n_params = sum(p.numel() for p in model.parameters())
    info = {"family": family, "size": size, "seed": seed, "num_parameters": n_params}
    (out / "vlalign_tiny.json").write_text(json.dumps(info, indent=2) + "\n")
    return out


def finish_model(model: Any, tokenizer: Any) -> Any:
    """Common last touches: float32, eval mode, generation config that knows eos/pad."""
    import torch

    model = model.to(torch.float32).eval()
    gen = model.generation_config
    gen.eos_token_id = tokenizer.eos_token_id
    gen.pad_token_id = tokenizer.pad_token_id
    if tokenizer.bos_token_id is not None:
        gen.bos_token_id = tokenizer.bos_token_id
    return model
