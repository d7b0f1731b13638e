"""Size the bound of a learning test: rerun it over seeds x CPU kernels x thread counts, print the spread.

A test that asserts learning (reward rises, loss falls, accuracy above chance) passes on the machine it
was written on and can fail on another one: CPUs with other vector units (AVX-512 vs AVX2) or another
thread count sum floats in another order, and over a few steps of training those last-bit differences
grow into a different run, much like another seed. Such a bound is therefore sized from the spread of
the measured effect over seeds and kernels, not from one run.

How: the test takes the ``learning`` fixture (tests/conftest.py), passes ``learning.seed`` to its run and
asserts ``learning.above("reward rise", last - first, 0.05)`` (or ``below``). This script runs the
selected tests once per (kernels, threads, seed) in a fresh pytest process with ``ATEN_CPU_CAPABILITY``,
``VLALIGN_TEST_THREADS`` and ``VLALIGN_TEST_SEED`` set, collects every recorded value and prints, per
assertion, the range per kernel set and overall, mean ± std, the bound and the worst case's margin.

    .venv/bin/python scripts/learning_spread.py --jobs 4            # every learning test, 5 seeds x 3 kernels
    .venv/bin/python scripts/learning_spread.py tests/integration/test_rl_ppo.py::test_ppo_reward_rises \
        --seeds 0-9 --kernels native,avx2,default --threads 1,2 --json runs/spread_ppo.json
    .venv/bin/python scripts/learning_spread.py --from runs/spread_ppo.json runs/more.json   # tabulate only

Without test ids it runs every test of the default suite that uses the ``learning`` fixture. ``native``
means ``ATEN_CPU_CAPABILITY`` unset (the CPU's best kernels). See docs/reproducibility.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from vlalign.evaluation.stats import seed_spread
from vlalign.machine import machine_line

ROOT = Path(__file__).resolve().parents[1]


def parse_seeds(text: str) -> list[int]:
    """``0-4`` -> [0, 1, 2, 3, 4]; ``0,3,7`` -> [0, 3, 7]; both forms may be mixed (``0-2,9``)."""
    seeds: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        seeds += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    return seeds


def run_once(tests: list[str], kernels: str, threads: int, seed: int, log: Path, marker: str,
             extra: list[str]) -> tuple[int, float]:
    """One pytest process for one (kernels, threads, seed); its learning values are appended to ``log``."""
    env = dict(os.environ, VLALIGN_TEST_SEED=str(seed), VLALIGN_TEST_THREADS=str(threads),
               VLALIGN_LEARNING_LOG=str(log), HF_HUB_OFFLINE="1")
    env.pop("ATEN_CPU_CAPABILITY", None)
    if kernels != "native":
        env["ATEN_CPU_CAPABILITY"] = kernels
    if not tests:
        env["VLALIGN_LEARNING_ONLY"] = "1"  # conftest keeps only the tests that use the `learning` fixture
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", marker,
           f"--basetemp={log.with_suffix('')}", *extra, *(tests or ["tests"])]  # own temp folder: runs may overlap
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    tail = (proc.stdout.strip().splitlines() or ["(no output)"])[-1]
    print(f"kernels={kernels:<7} threads={threads} seed={seed}: {tail}", flush=True)
    return proc.returncode, time.perf_counter() - t0


def summarise(rows: list[dict]) -> list[dict]:
    """One entry per (test, assertion): values per kernel set and overall, and the worst case's margin."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["test"], r["name"])].append(r)
    out = []
    for (test, name), rs in groups.items():
        values = [r["value"] for r in rs]
        op, bound = rs[0]["op"], rs[0]["bound"]
        worst = min(values) if op == ">" else max(values)
        per_kernel: dict[str, list[float]] = defaultdict(list)
        for r in rs:
            per_kernel[f"{r.get('run_kernels', '?')}/{r['kernels']} t{r['threads']}"].append(r["value"])
        spread = seed_spread(values)
        out.append({
            "test": test, "name": name, "op": op, "bound": bound, "n": len(values),
            "min": min(values), "max": max(values), "mean": spread["mean"], "std": spread["std"],
            "worst": worst, "margin": worst - bound if op == ">" else bound - worst,
            "fails": sum(not (v > bound if op == ">" else v < bound) for v in values),
            "per_kernels": {k: [round(v, 4) for v in vs] for k, vs in per_kernel.items()},
        })
    return out


def print_table(summary: list[dict]) -> None:
    for s in summary:
        print(f"\n{s['test']}\n  {s['name']} {s['op']} {s['bound']}: over {s['n']} runs "
              f"{s['min']:.4f} .. {s['max']:.4f} (mean {s['mean']:.4f} ± {s['std']:.4f}); "
              f"worst {s['worst']:.4f}, margin {s['margin']:+.4f}, failing runs {s['fails']}")
        for k, vs in s["per_kernels"].items():
            print(f"    {k:<24} " + " ".join(f"{v:.4f}" for v in vs) + f"   range {min(vs):.4f} .. {max(vs):.4f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("tests", nargs="*", help="pytest node ids (default: every test using the `learning` fixture)")
    ap.add_argument("--seeds", default="0-4", help="e.g. 0-4 or 0,3,7 (default 0-4)")
    ap.add_argument("--kernels", default="native,avx2,default",
                    help="ATEN_CPU_CAPABILITY values; native = unset (default native,avx2,default)")
    ap.add_argument("--threads", default="2", help="torch thread counts, e.g. 1,2 (default 2, as the suite pins)")
    ap.add_argument("-m", "--marker", default="not slow", help="pytest -m expression (default 'not slow')")
    ap.add_argument("--pytest-args", default="", help="more pytest arguments, e.g. \"-k 'not ppo'\"")
    ap.add_argument("--jobs", type=int, default=1,
                    help="pytest processes at once (each uses --threads threads; default 1)")
    ap.add_argument("--from", dest="from_files", type=Path, nargs="+",
                    help="only tabulate: earlier --json files and VLALIGN_LEARNING_LOG .jsonl files")
    ap.add_argument("--json", type=Path, help="write every value and the summary here")
    args = ap.parse_args(argv)

    print(f"machine: {machine_line()}", flush=True)
    rows: list[dict] = []
    failed_runs = []
    t0 = time.perf_counter()
    if args.from_files:  # no runs: tabulate earlier --json outputs and VLALIGN_LEARNING_LOG files together
        for path in args.from_files:
            text = path.read_text()
            rows += json.loads(text)["rows"] if path.suffix == ".json" else [json.loads(x) for x in text.splitlines()]
        print_table(summarise(rows))
        return 0
    combos = [(k, int(t), s) for k in args.kernels.split(",") for t in args.threads.split(",")
              for s in parse_seeds(args.seeds)]
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(args.jobs) as pool:
        logs = {c: Path(tmp) / "{}-{}-{}.jsonl".format(*c) for c in combos}
        extra = shlex.split(args.pytest_args)
        codes = pool.map(lambda c: run_once(args.tests, *c, logs[c], args.marker, extra)[0], combos)
        for (kernels, threads, seed), code in zip(combos, codes, strict=True):
            if code not in (0, 1):  # 1 = a test failed, which is what the spread is about
                failed_runs.append((kernels, threads, seed, code))
            log = logs[(kernels, threads, seed)]
            got = [json.loads(x) for x in log.read_text().splitlines()] if log.is_file() else []
            rows += [{**r, "run_kernels": kernels} for r in got]
    summary = summarise(rows)
    print_table(summary)
    print(f"\n{len(rows)} values in {time.perf_counter() - t0:.0f} s")
    for kernels, threads, seed, code in failed_runs:
        print(f"pytest exited {code} (not a test failure) for kernels={kernels} threads={threads} seed={seed}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine_line(), "rows": rows, "summary": summary}, indent=1))
    return 1 if failed_runs or not rows else 0


if __name__ == "__main__":
    raise SystemExit(main())
