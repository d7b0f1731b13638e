"""FLOPs by formula: what a DPO pair or a GRPO group NEEDS, per part of a vision-language model.

WHY by formula: "useful FLOP/s" must count only the work the algorithm needs, the same for every
framework, so it cannot come from a profiler (that counts what a framework happens to run, padding,
duplicated prompts and full-vocabulary logits included). The needed work of one DPO pair is one
forward of [prompt + image, chosen, rejected] with every response seeing the prompt and itself, the
output layer applied to the response tokens only (the tokens whose log-probs the loss reads), for
the policy (forward + backward = 3 × forward) and once for the reference (1 × forward, cached or
not). A GRPO group needs generation (prefill of the prompt once, then one decode step per sampled
token, each with the full-vocabulary distribution the sampler draws from), the reference forward
and the policy's forward + backward over the group's responses.

Counted: every matrix multiply (2 FLOPs per multiply-add) of the decoder layers, the attention
scores and weighted sums (causal: each query against the keys it sees), the output layer, the vision
tower (patch embedding, blocks with full attention within the image, the projector / patch merger).
Not counted: norms, activations, rotary embeddings, softmax, the optimizer (all O(params) or
O(tokens·hidden), a few percent at these shapes).

Pure Python (no torch): the parent process of the benchmark imports it, and so do the tests.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Arch:
    """The shapes that set the FLOPs of an image-text-to-text model (from its HF config)."""

    family: str  # "llava" | "qwen2_vl"
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    v_hidden: int
    v_layers: int  # vision blocks whose output the model uses (LLaVA's feature layer -2 skips the last)
    v_heads: int
    v_intermediate: int
    patch: int
    merge: int  # Qwen2-VL: 2×2 patches → 1 token; LLaVA: 1
    temporal_patch: int  # Qwen2-VL: 2 frames per patch (an image is repeated); LLaVA: 1
    cls_token: int  # CLIP prepends one class token to the patches
    image_size: int | None  # LLaVA: fixed input side (336); Qwen2-VL: dynamic resolution (None)

    # ---------------------------------------------------------------- weights per token / patch
    @property
    def decoder_linear(self) -> int:
        """Weights of all decoder layers' matrices that every token passes: q, k, v, o, gate, up, down."""
        q = self.hidden * self.heads * self.head_dim
        kv = 2 * self.hidden * self.kv_heads * self.head_dim
        o = self.heads * self.head_dim * self.hidden
        return self.layers * (q + kv + o + 3 * self.hidden * self.intermediate)

    @property
    def head(self) -> int:
        """The output layer: vocab × hidden."""
        return self.vocab * self.hidden

    @property
    def vision_linear_per_patch(self) -> int:
        """Patch embedding + every used vision block's q, k, v, o and MLP, per patch."""
        embed = 3 * self.temporal_patch * self.patch**2 * self.v_hidden
        block = 4 * self.v_hidden**2 + 2 * self.v_hidden * self.v_intermediate
        return embed + self.v_layers * block

    @property
    def projector_per_token(self) -> int:
        """LLaVA: 2-layer MLP v_hidden → hidden → hidden; Qwen2-VL: merger (m²·d)² + m²·d × hidden."""
        if self.family == "llava":
            return self.v_hidden * self.hidden + self.hidden**2
        wide = self.merge**2 * self.v_hidden
        return wide * wide + wide * self.hidden

    # ---------------------------------------------------------------- image token counts
    def image_tokens(self, height: int, width: int) -> tuple[int, int]:
        """(tokens in the text sequence, positions through the vision tower) for one image.

        LLaVA: the processor resizes + crops to ``image_size``: (side / patch)² tokens, +1 CLS position
        in the tower (336 / 14 = 24 → 576 tokens, 577 positions). Qwen2-VL: the processor rounds each
        side to a multiple of patch·merge (28) and keeps the pixel count (within its min/max): 448 × 448
        → 32 × 32 = 1024 patches → 1024 / 2² = 256 tokens.
        """
        if self.image_size is not None:
            n = (self.image_size // self.patch) ** 2
            return n, n + self.cls_token
        factor = self.patch * self.merge
        h, w = max(factor, round(height / factor) * factor), max(factor, round(width / factor) * factor)
        patches = (h // self.patch) * (w // self.patch)
        return patches // self.merge**2, patches


def _get(cfg: dict[str, Any], *keys: str, default: Any = None) -> Any:
    for k in keys:
        if k in cfg and cfg[k] is not None:
            return cfg[k]
    return default


def arch_from_config(cfg: dict[str, Any]) -> Arch:
    """An :class:`Arch` from a LLaVA or Qwen2-VL ``config.json`` (nested ``text_config``/``vision_config``)."""
    family = cfg["model_type"]
    t, v = cfg["text_config"], cfg["vision_config"]
    heads = t["num_attention_heads"]
    head_dim = _get(t, "head_dim", default=t["hidden_size"] // heads)
    common = {"hidden": t["hidden_size"], "layers": t["num_hidden_layers"], "heads": heads,
              "kv_heads": _get(t, "num_key_value_heads", default=heads), "head_dim": head_dim,
              "intermediate": t["intermediate_size"], "vocab": t["vocab_size"]}
    if family == "llava":
        layer = _get(cfg, "vision_feature_layer", default=-2)
        used = v["num_hidden_layers"] + 1 + layer if layer < 0 else layer  # hidden_states[k] = after k blocks
        return Arch("llava", **common, v_hidden=v["hidden_size"], v_layers=used, v_heads=v["num_attention_heads"],
                    v_intermediate=v["intermediate_size"], patch=v["patch_size"], merge=1, temporal_patch=1,
                    cls_token=1, image_size=v["image_size"])
    if family == "qwen2_vl":
        d = v["embed_dim"]
        return Arch("qwen2_vl", **common, v_hidden=d, v_layers=v["depth"], v_heads=v["num_heads"],
                    v_intermediate=int(d * v["mlp_ratio"]), patch=v["patch_size"], merge=v["spatial_merge_size"],
                    temporal_patch=v["temporal_patch_size"], cls_token=0, image_size=None)
    raise ValueError(f"model type {family!r}: FLOP formulas exist for llava and qwen2_vl")


# -------------------------------------------------------------------------------------- counting


def causal_context(prompt: int, responses: Sequence[int]) -> int:
    """Σ over query tokens of the keys each attends to, for [prompt | r_1 | ... | r_K] where every
    response sees the prompt and its own earlier tokens (the pair / group layout).

    E.g. prompt 2, responses [1, 2]: prompt 1 + 2 = 3; r_1: 3; r_2: 3 + 4 = 7 → 13.
    """
    total = prompt * (prompt + 1) // 2
    for r in responses:
        total += r * prompt + r * (r + 1) // 2
    return total


def forward_flops(arch: Arch, prompt: int, responses: Sequence[int], image_positions: Sequence[int],
                  image_tokens: int) -> dict[str, float]:
    """FLOPs of ONE forward of [prompt | responses...] (each response sees the prompt and itself), the
    output layer on the response tokens only, every image of the prompt through the vision tower once.

    ``prompt`` counts all prompt tokens, image tokens included; ``image_positions``: tower positions of
    each image (patches, + CLS for CLIP); ``image_tokens``: the prompt's image tokens (projector rows).
    """
    tokens = prompt + sum(responses)
    ctx = causal_context(prompt, responses)
    attn_width = arch.heads * arch.head_dim
    vision = 0.0
    for n in image_positions:
        vision += 2.0 * arch.vision_linear_per_patch * n + 4.0 * arch.v_hidden * n * n * arch.v_layers
    return {
        "decoder_linear": 2.0 * arch.decoder_linear * tokens,
        "decoder_attention": 4.0 * attn_width * ctx * arch.layers,
        "output_layer": 2.0 * arch.head * sum(responses),
        "vision": vision + 2.0 * arch.projector_per_token * image_tokens,
    }


def total(parts: dict[str, float]) -> float:
    return float(sum(parts.values()))


def dpo_pair_flops(arch: Arch, prompt: int, chosen: int, rejected: int, image_positions: Sequence[int],
                   image_tokens: int) -> dict[str, float]:
    """Needed FLOPs of one pair: ``train`` = policy forward + backward (3 × forward), ``reference`` =
    one forward (scored once per pair and epoch, whether cached or not)."""
    fwd = total(forward_flops(arch, prompt, [chosen, rejected], image_positions, image_tokens))
    return {"forward": fwd, "train": 3.0 * fwd, "reference": fwd, "epoch": 4.0 * fwd}


def generation_flops(arch: Arch, prompt: int, new_tokens: Sequence[int], image_positions: Sequence[int],
                     image_tokens: int) -> float:
    """Sampling K responses to one prompt: the prompt (and image) once, then each sampled token's
    decode step: decoder layers, attention to the prompt + earlier tokens, the full output layer."""
    pre = forward_flops(arch, prompt, [], image_positions, image_tokens)
    pre["output_layer"] = 2.0 * arch.head  # the first token's distribution, from the last prompt position
    steps = sum(max(r - 1, 0) for r in new_tokens)  # the first token came from the prefill
    ctx = causal_context(prompt, new_tokens) - causal_context(prompt, [])
    decode = (2.0 * arch.decoder_linear * steps + 4.0 * arch.heads * arch.head_dim * ctx * arch.layers
              + 2.0 * arch.head * steps)
    return total(pre) + decode


def grpo_group_flops(arch: Arch, prompt: int, new_tokens: Sequence[int], image_positions: Sequence[int],
                     image_tokens: int, kl: bool = True) -> dict[str, float]:
    """Needed FLOPs of one GRPO group (one update per rollout, so π_old = π needs no extra pass):
    generation + reference forward (when the KL term is on) + policy forward and backward."""
    fwd = total(forward_flops(arch, prompt, new_tokens, image_positions, image_tokens))
    gen = generation_flops(arch, prompt, new_tokens, image_positions, image_tokens)
    ref = fwd if kl else 0.0
    return {"generation": gen, "reference": ref, "train": 3.0 * fwd, "step": gen + ref + 3.0 * fwd}


def shares(parts: dict[str, float]) -> dict[str, float]:
    """Each part's fraction of the total, rounded to 3 digits."""
    t = total(parts)
    return {k: round(v / t, 3) if t else math.nan for k, v in parts.items()}


def trl_dpo_pair_flops(arch: Arch, prompt: int, chosen: int, rejected: int, image_positions: Sequence[int],
                       image_tokens: int) -> dict[str, float]:
    """What TRL 1.16's DPOTrainer computes for one pair (padding apart): chosen and rejected as two rows,
    each with the whole prompt and its own pass through the vision tower, the output layer on the
    completion tokens only (its fused LM head), for the policy (3×) and the reference model (1×)."""
    row_c = total(forward_flops(arch, prompt, [chosen], image_positions, image_tokens))
    row_r = total(forward_flops(arch, prompt, [rejected], image_positions, image_tokens))
    fwd = row_c + row_r
    return {"forward": fwd, "train": 3.0 * fwd, "reference": fwd, "epoch": 4.0 * fwd}


def padded_tokens(lengths: Sequence[int], batch: int) -> tuple[int, int]:
    """(tokens, tokens after padding every batch of consecutive rows to its longest) for row lengths."""
    real = sum(lengths)
    padded = sum(max(lengths[i : i + batch]) * len(lengths[i : i + batch]) for i in range(0, len(lengths), batch))
    return real, padded


def trl_grpo_group_flops(arch: Arch, prompt: int, new_tokens: Sequence[int], image_positions: Sequence[int],
                         image_tokens: int, kl: bool = True) -> dict[str, float]:
    """What TRL 1.16's GRPOTrainer computes for one group (padding apart): each of the K samples as its
    own row — prompt and image prefilled K times for generation, and K full rows through the reference
    model and the policy (forward + backward)."""
    gen = sum(generation_flops(arch, prompt, [r], image_positions, image_tokens) for r in new_tokens)
    fwd = sum(total(forward_flops(arch, prompt, [r], image_positions, image_tokens)) for r in new_tokens)
    ref = fwd if kl else 0.0
    return {"generation": gen, "reference": ref, "train": 3.0 * fwd, "step": gen + ref + 3.0 * fwd}
