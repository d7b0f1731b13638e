"""How far the same training run drifts under other CPU kernels and thread counts (docs/reproducibility.md).

Builds the tiny LLaVA and a small Shapes set, then runs the same SFT and DPO (fixed seed, a few steps,
every step logged) once per (kernels, threads) in a fresh process, with ``ATEN_CPU_CAPABILITY`` and
``OMP_NUM_THREADS`` set, and compares each run with the first one: the largest difference of a logged loss
at any step, the final losses and the largest difference of a final weight.

    .venv/bin/python scripts/numerics_diff.py --out runs/numerics             # native/avx2/default x 1, 2 threads
    .venv/bin/python scripts/numerics_diff.py --out runs/numerics --kernels avx2,default --threads 2 --steps 10
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file

from vlalign.machine import machine_line

ROOT = Path(__file__).resolve().parents[1]
VLALIGN = [sys.executable, "-m", "vlalign.cli"]


def sh(args: list[str], env: dict[str, str] | None = None) -> None:
    subprocess.run(args, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)


def run_env(kernels: str, threads: int) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # same numerics; idle threads do not spin on a shared CPU
    env.pop("ATEN_CPU_CAPABILITY", None)
    if kernels != "native":
        env["ATEN_CPU_CAPABILITY"] = kernels
    return env


def train(work: Path, tag: str, env: dict[str, str], steps: int) -> Path:
    """SFT from the tiny model, then DPO from the SFT model; both log every step."""
    out = work / tag
    common = [f"max_steps={steps}", "logging_steps=1", "save_steps=0", "progress=false", "seed=0"]
    sh([*VLALIGN, "sft", "--config", "configs/sft_tiny.yaml", f"model.name_or_path={work / 'tiny'}",
        f"data.train={work / 'shapes' / 'sft.jsonl'}", f"output_dir={out / 'sft'}", *common], env)
    sh([*VLALIGN, "dpo", "--config", "configs/dpo_tiny.yaml", f"model.name_or_path={out / 'sft' / 'final'}",
        f"data.train={work / 'shapes' / 'preference.jsonl'}", f"output_dir={out / 'dpo'}", *common], env)
    return out


def losses(run: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]


def max_weight_diff(a: Path, b: Path) -> float:
    wa, wb = load_file(a / "final" / "model.safetensors"), load_file(b / "final" / "model.safetensors")
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/numerics"))
    ap.add_argument("--kernels", default="native,avx2,default")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args(argv)
    work = args.out.resolve()
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "tiny" / "config.json").is_file():
        sh([*VLALIGN, "tiny-model", "--family", "llava", "--out", str(work / "tiny")])
    if not (work / "shapes" / "preference.jsonl").is_file():
        sh([*VLALIGN, "data", "shapes", "--out", str(work / "shapes"), "--n-train", "200", "--n-eval", "20"])

    runs = {}
    for kernels in args.kernels.split(","):
        for threads in (int(t) for t in args.threads.split(",")):
            tag = f"{kernels}-t{threads}"
            runs[tag] = train(work, tag, run_env(kernels, threads), args.steps)
            print(f"{tag}: done", flush=True)

    ref_tag = next(iter(runs))
    ref = runs[ref_tag]
    report = {"machine": machine_line(), "steps": args.steps, "reference": ref_tag, "runs": {}}
    print(f"\nmachine: {report['machine']}; every run against {ref_tag}, {args.steps} steps each")
    print(f"{'run':<14} {'stage':<4} {'final loss':>12} {'max |Δ loss|':>14} {'max |Δ weight|':>15}")
    for tag, run in runs.items():
        for stage in ("sft", "dpo"):
            la, lb = losses(ref / stage), losses(run / stage)
            row = {"final_loss": lb[-1], "max_abs_loss_diff": max(abs(x - y) for x, y in zip(la, lb, strict=True)),
                   "max_abs_weight_diff": max_weight_diff(ref / stage, run / stage), "losses": lb}
            report["runs"][f"{tag}/{stage}"] = row
            print(f"{tag:<14} {stage:<4} {row['final_loss']:>12.6f} {row['max_abs_loss_diff']:>14.2e} "
                  f"{row['max_abs_weight_diff']:>15.2e}")
    (work / "numerics_diff.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"\nwritten: {work / 'numerics_diff.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
