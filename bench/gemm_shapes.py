"""fp32 matmul rate at the shapes a benchmark model's layers use, beside the square 2048² probe the
benchmarks count their "matmul peak" against: how much of that peak each layer's GEMM can reach at all.

Run: ``python bench/gemm_shapes.py [--threads 2] [--json bench/results/gemm_shapes.json]``. Each shape is
timed best-of-5 after a warm-up, in one process, one after the other (so a busy machine slows all alike).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

# (name, M tokens, K, N): forward GEMMs of the benchmark models' layers on ~1200 packed tokens (a DPO micro-
# batch of 4 pairs, one prompt + two responses each, ~300 tokens per packed row on average), and one tile
# of vlalign's chunked output layer (vlalign.models.chunked_head.tile_shape: the ~1320 response tokens of
# 4 pairs × 2**21 // 1320 = 1588 words).
SHAPES = [
    ("probe 2048 x 2048 x 2048", 2048, 2048, 2048),
    ("bench-mini decoder MLP up (512 -> 2944)", 1216, 512, 2944),
    ("bench-mini decoder MLP down (2944 -> 512)", 1216, 2944, 512),
    ("bench-mini attention q/o (512 -> 512)", 1216, 512, 512),
    ("bench-mini output-layer tile (512 -> 1588 words)", 1320, 512, 1588),
    ("bench-mini vision MLP (448 -> 1792), 1024 patches", 1024, 448, 1792),
    ("bench-vocab output-layer tile (256 -> 1588 words)", 1320, 256, 1588),
    ("bench-vocab decoder MLP up (256 -> 1472)", 1216, 256, 1472),
]


def gflops(m: int, k: int, n: int, repeats: int = 5) -> float:
    """Best-of-``repeats`` fp32 rate of an (m, k) @ (k, n) product, in GFLOP/s (2·m·k·n FLOPs)."""
    a, b = torch.randn(m, k), torch.randn(k, n)
    a @ b  # warm-up (allocations, kernel choice)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(3):
            a @ b
        best = min(best, (time.perf_counter() - t0) / 3)
    return 2 * m * k * n / best / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = [{"shape": name, "m": m, "k": k, "n": n, "gflops": round(gflops(m, k, n), 1)} for name, m, k, n in SHAPES]
    peak = rows[0]["gflops"]
    print("| GEMM (M x K x N) | GFLOP/s | of the 2048² probe |\n|---|---|---|")
    for r in rows:
        r["of_probe"] = round(r["gflops"] / peak, 3)
        print(f"| {r['shape']} ({r['m']} x {r['k']} x {r['n']}) | {r['gflops']} | {r['of_probe']:.0%} |")
    if args.json:
        args.json.write_text(json.dumps({"threads": args.threads, "torch": torch.__version__, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
