"""Does ``torch.compile`` of the decoder layers speed up vlalign's DPO step on the CPU?

Runs the vlalign side of the DPO benchmark (``bench/vlalign_dpo_worker.py``, one epoch, reference scoring
included) three times in fresh processes on the same rows: plain, with every decoder layer compiled
(regional ``torch.compile``, dynamic shapes), plain again (the spread of two identical runs), and reports
end-to-end time, steady pairs/s and peak RSS above the import baseline for each, and the ratios.

WHY: on bench-mini a DPO step's CPU time is matmul 64%, attention 18%, elementwise 14% (bench/op_profile.py),
and the GEMMs already run at 93-102% of the matmul probe (bench/gemm_shapes.py); fusing the elementwise
chains is the lever named for the 70%-of-peak target. The first compiled run in a fresh cache also pays the
compilation (inductor's on-disk cache makes later runs cheap); ``--cold`` empties that cache first.

    python bench/compile_probe.py --workdir runs/bench_mini        # after `vlalign bench dpo --model bench-mini`
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine_info, package_versions, run_worker


def replicated_pairs(src: Path, rows: int, out: Path) -> Path:
    """``rows`` pairs from ``src`` (repeated with new ids when it has fewer), images made absolute."""
    base = [json.loads(line) for line in src.read_text().splitlines() if line.strip()]
    got = []
    for i in range(rows):
        r = dict(base[i % len(base)])
        r["id"] = f"{r['id']}_r{i}"
        r["images"] = [str(src.parent / im) if isinstance(im, str) and not os.path.isabs(im) else im for im in r["images"]]
        got.append(r)
    out.write_text("".join(json.dumps(r) + "\n" for r in got))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", required=True, help="a `vlalign bench dpo` workdir (its dpo_vlalign/ spec, model, pairs)")
    ap.add_argument("--rows", type=int, default=36)
    ap.add_argument("--cold", action="store_true", help="empty inductor's cache before the compiled run")
    ap.add_argument("--json", default="bench/results/compile_probe.json")
    args = ap.parse_args(argv)
    work = Path(args.workdir).resolve()
    spec = json.loads((work / "dpo_vlalign" / "vlalign_dpo_worker.spec.json").read_text())
    probe = work / "compile_probe"
    probe.mkdir(exist_ok=True)
    spec.update(rows=args.rows, data=str(replicated_pairs(Path(spec["data"]), args.rows, probe / "pairs.jsonl")))
    if args.cold:
        shutil.rmtree(Path(tempfile.gettempdir()) / f"torchinductor_{os.environ.get('USER', 'root')}", ignore_errors=True)
    runs = {}
    for name, compiled in (("plain", False), ("compiled", True), ("plain_again", False)):
        res = run_worker("vlalign_dpo_worker.py", {**spec, "compile_layers": compiled}, probe / name)
        runs[name] = {k: res.get(k) for k in ("e2e_s", "pairs_per_s", "peak_above_baseline_mb", "loss_last", "step_times_s",
                                              "load_avg_before", "error")}
        print(f"[compile_probe] {name}: {json.dumps(runs[name])}", flush=True)
    plain = [runs[k] for k in ("plain", "plain_again")]
    c = runs["compiled"]
    report = {"command": " ".join(["python", *sys.argv]), "machine": machine_info(threads=spec.get("threads", 2)),
              "versions": package_versions(["vlalign", "torch", "transformers"]), "rows": args.rows, "cold": args.cold,
              "runs": runs,
              "steady_speedup": [round(c["pairs_per_s"] / p["pairs_per_s"], 3) for p in plain],
              "e2e_speedup": [round(p["e2e_s"] / c["e2e_s"], 3) for p in plain],
              "peak_above_baseline_ratio": [round(c["peak_above_baseline_mb"] / p["peak_above_baseline_mb"], 3) for p in plain],
              "loss_last_abs_diff": abs(c["loss_last"] - plain[0]["loss_last"])}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("steady_speedup", "e2e_speedup", "peak_above_baseline_ratio", "loss_last_abs_diff")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
