"""How the benchmark models match real checkpoints: the table in bench/README.md ("Benchmark models").

For each real checkpoint (public config numbers in ``bench/configs/``) and each benchmark miniature
(``vlalign tiny-model --size bench-mini|bench-vocab``, built here on the meta device: no weights), one
DPO pair's forward FLOPs (:mod:`flops`) with the benchmark's token composition, split into decoder
layers (matrices + attention), the output layer (response tokens only) and the vision tower
(+ projector / patch merger), and the parameters behind them.

Run: ``python bench/model_shapes.py`` (markdown table on stdout; ``--json PATH`` for the numbers).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from flops import Arch, arch_from_config, forward_flops, shares

CONFIGS = Path(__file__).resolve().parent / "configs"
REAL = {"qwen2_vl": ("Qwen2-VL-2B", "qwen2_vl_2b.json"), "llava": ("LLaVA-1.5-7B", "llava_1_5_7b.json")}

# The benchmark's token composition (bench/inputs.py draws the rows from these ranges): responses 64–256
# tokens (mean 160); Qwen2-VL prompts 300–600 tokens (mean 450) of which 256 image tokens (a 448×448
# image); LLaVA prompts are 576 image tokens (any image, 336 px crop) + 32–128 text tokens (mean 80).
COMPOSITION = {
    "qwen2_vl": {"image_hw": (448, 448), "prompt_mean": 450, "response_mean": 160},
    "llava": {"image_hw": (336, 336), "prompt_mean": 576 + 80, "response_mean": 160},
}


def real_config(family: str) -> dict[str, Any]:
    return json.loads((CONFIGS / REAL[family][1]).read_text())


def miniature_config(family: str, size: str) -> tuple[dict[str, Any], int]:
    """(config dict, parameter count) of a benchmark miniature, built on the meta device (no memory)."""
    import torch

    from vlalign.models.tiny import TINY_FAMILIES, size_spec

    with torch.device("meta"):
        model, _ = TINY_FAMILIES.get(family)(size_spec(family, size), 0)
    return model.config.to_dict(), sum(p.numel() for p in model.parameters())


def check_from_config(family: str = "qwen2_vl") -> dict[str, Any]:
    """Build (on the meta device) the model ``--model qwen2-vl-2b`` makes from the public config and
    check that its FLOP-relevant dimensions are the config's; returns its row of the table."""
    import torch

    from vlalign.models.tiny import TINY_FAMILIES, spec_from_config

    real = real_config(family)
    with torch.device("meta"):
        model, _ = TINY_FAMILIES.get(family)(spec_from_config(real), 0)
    built = arch_from_config(model.config.to_dict())
    want = arch_from_config(real)
    if built != want:
        raise SystemExit(f"the model built from {REAL[family][1]} differs from it:\n built {built}\n config {want}")
    return row(f"{REAL[family][0]} (built from config, untied head)", family, model.config.to_dict(),
               sum(p.numel() for p in model.parameters()))


def pair_parts(arch: Arch, family: str) -> dict[str, float]:
    """Forward FLOPs of one DPO pair at the family's mean composition, in 4 parts."""
    comp = COMPOSITION[family]
    tokens, positions = arch.image_tokens(*comp["image_hw"])
    r = comp["response_mean"]
    return forward_flops(arch, comp["prompt_mean"], [r, r], [positions], tokens)


def row(name: str, family: str, cfg: dict[str, Any], params: int | None) -> dict[str, Any]:
    arch = arch_from_config(cfg)
    parts = pair_parts(arch, family)
    s = shares(parts)
    image_tokens, positions = arch.image_tokens(*COMPOSITION[family]["image_hw"])
    return {
        "model": name, "family": family, "params": params,
        "text": f"{arch.hidden}×{arch.layers} ({arch.heads} heads, {arch.kv_heads} KV), MLP {arch.intermediate}",
        "vocab": arch.vocab,
        "vision": f"{arch.v_hidden}×{arch.v_layers}, patch {arch.patch}",
        "image_tokens": image_tokens, "vision_positions": positions,
        "pair_forward_gflop": round(sum(parts.values()) / 1e9, 2),
        "share_layers": round(s["decoder_linear"] + s["decoder_attention"], 3),
        "share_attention": s["decoder_attention"],
        "share_output_layer": s["output_layer"],
        "share_vision": s["vision"],
    }


def table() -> list[dict[str, Any]]:
    rows = []
    for family, (real_name, _) in REAL.items():
        rows.append(row(real_name, family, real_config(family), None))
        for size in ("bench-mini", "bench-vocab"):
            cfg, n = miniature_config(family, size)
            rows.append(row(f"{family} {size}", family, cfg, n))
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    head = ("| model | text | vocab | vision | image tokens (tower positions) | params | one pair's forward, GFLOP "
            "| layers (of it attention) | output layer | vision tower |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        params = f"{r['params'] / 1e6:.1f}M" if r["params"] else "(real)"
        lines.append(
            f"| {r['model']} | {r['text']} | {r['vocab']:,} | {r['vision']} | {r['image_tokens']} ({r['vision_positions']}) "
            f"| {params} | {r['pair_forward_gflop']:,} | {r['share_layers']:.1%} ({r['share_attention']:.1%}) "
            f"| {r['share_output_layer']:.1%} | {r['share_vision']:.1%} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path)
    ap.add_argument("--check-config", action="store_true",
                    help="only check that --model qwen2-vl-2b builds with the public config's dimensions")
    args = ap.parse_args()
    if args.check_config:
        print(markdown([check_from_config()]))
        raise SystemExit(0)
    rows = table()
    print(markdown(rows))
    if args.json:
        args.json.write_text(json.dumps({"composition": COMPOSITION, "rows": rows}, indent=2) + "\n")
