"""The largest per-device batch a framework trains under a resident-memory cap.

Each probe is the side's own worker in a fresh process, training 2 steps (1 warm-up, 1 measured) at
batch b on 2·b rows (vlalign's reference-cache pass at the same batch), killed by the parent as soon
as its resident memory passes the cap (:func:`common.run_worker` with ``mem_cap_mb``). The search
doubles b from 1 until a probe fails, then bisects between the last fit and the first failure, so
finding B costs about 2·log2(B) probes.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import run_worker


def largest_fitting(fits: Callable[[int], bool], limit: int) -> tuple[int, list[tuple[int, bool]]]:
    """Largest b in 1..limit with ``fits(b)``, assuming fitting is monotone in b; 0 when b = 1 fails.

    Returns (b, probes in the order run). E.g. fits = b ≤ 5: 1, 2, 4, 8 (no), then 6 (no), 5 → 5.
    """
    probes: list[tuple[int, bool]] = []

    def probe(b: int) -> bool:
        ok = fits(b)
        probes.append((b, ok))
        return ok

    good, bad = 0, None
    b = 1
    while b <= limit:
        if not probe(b):
            bad = b
            break
        good = b
        b *= 2
    if bad is None:
        if good < limit and probe(limit):  # doubling overshot the limit: try the limit itself
            good = limit
        elif good < limit:
            bad = limit
    if bad is not None:
        while bad - good > 1:
            mid = (good + bad) // 2
            if probe(mid):
                good = mid
            else:
                bad = mid
    return good, probes


def probe_spec(spec: dict[str, Any], batch: int) -> dict[str, Any]:
    """A side's spec turned into a 2-step probe at ``batch`` (1 warm-up step, 1 measured)."""
    return {**spec, "batch_size": batch, "reference_batch_size": batch, "rows": 2 * batch, "max_steps": 2,
            "warmup_steps": 1}


def max_batch(script: str, spec: dict[str, Any], workdir: Path, cap_mb: float, limit: int) -> dict[str, Any]:
    """Search one side; every probe's outcome and peak resident memory is kept in the report."""
    log: list[dict[str, Any]] = []

    def fits(b: int) -> bool:
        res = run_worker(script, probe_spec(spec, b), workdir / f"b{b}", mem_cap_mb=cap_mb)
        ok = "error" not in res
        peak = res.get("peak_rss_mb", res.get("peak_rss_mb_seen"))
        log.append({"batch": b, "fits": ok, "peak_rss_mb": peak, "error": res.get("error") if not ok else None})
        print(f"[max batch] {script} b={b}: {'fits' if ok else 'does not fit'} ({peak} MiB)", file=sys.stderr,
              flush=True)
        return ok

    best, _ = largest_fitting(fits, limit)
    return {"max_batch": best, "cap_mb": cap_mb, "limit": limit, "probes": log}
