"""Where vlalign's DPO peak memory comes from: resident memory sampled through the phases of a run.

WHY this and not tracemalloc: torch allocates tensors in C++ (tracemalloc sees none of it), and what
a user pays is resident memory, allocator slack included. A background thread reads ``VmRSS``
(with its anonymous / file-backed split) from ``/proc/self/status`` every ~2 ms; the run's phases are
marked by wrapping the functions that do them (model load, reference-cache pass, forward + loss,
backward, grad clipping, optimizer step, final save), so each phase gets the RSS at its start and the
highest RSS seen while it ran. The run is the benchmark's vlalign side (same config, same data).

Run (same inputs as ``dpo_vs_trl.py``; a few steps suffice, the peak is reached by step 2)::

    python bench/dpo_memory_profile.py --workdir runs/bench --steps 3 [--json out.json]
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import MIB, prepare_inputs


def read_rss() -> dict[str, float]:
    """VmRSS / RssAnon / RssFile / VmHWM of this process in MiB."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            out[key] = int(rest.split()[0]) / MIB
    return out


class PhaseSampler:
    """Samples RSS in a thread; ``phase(name)`` wraps a function so its calls are one named phase."""

    def __init__(self, interval_s: float = 0.002) -> None:
        self.interval_s = interval_s
        self.current = "imports"
        self.rows: list[dict[str, Any]] = []  # one per phase occurrence: name, start, peak, end
        self._open = self._new_row("imports")
        self._stop = threading.Event()
        self._lock = threading.RLock()  # enter() samples while holding it
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _new_row(self, name: str) -> dict[str, Any]:
        rss = read_rss()
        row = {"phase": name, "start_mb": rss["VmRSS"], "peak_mb": rss["VmRSS"], "peak_anon_mb": rss["RssAnon"],
               "peak_file_mb": rss["RssFile"], "t0": time.perf_counter()}
        self.rows.append(row)
        return row

    def _sample(self) -> None:
        rss = read_rss()
        with self._lock:
            row = self._open
            if rss["VmRSS"] > row["peak_mb"]:
                row["peak_mb"], row["peak_anon_mb"], row["peak_file_mb"] = rss["VmRSS"], rss["RssAnon"], rss["RssFile"]

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            time.sleep(self.interval_s)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._close()

    def _close(self) -> None:
        self._sample()
        self._open["end_mb"] = read_rss()["VmRSS"]
        self._open["seconds"] = round(time.perf_counter() - self._open["t0"], 3)

    def enter(self, name: str) -> str:
        with self._lock:
            self._close()
            previous, self.current = self.current, name
            self._open = self._new_row(name)
        return previous

    def phase(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            previous = self.enter(name)
            try:
                return fn(*args, **kwargs)
            finally:
                self.enter(f"{previous}")  # back to the enclosing phase (a new occurrence of it)

        return wrapped


def instrument(sampler: PhaseSampler) -> None:
    """Wrap the functions that make up a DPO run (in the modules that call them)."""
    import accelerate
    from accelerate.optimizer import AcceleratedOptimizer

    from vlalign.models import load
    from vlalign.trainers import dpo, run

    load.load_model = sampler.phase("load_model", load.load_model)
    dpo.build_reference_cache = sampler.phase("reference_cache", dpo.build_reference_cache)
    dpo.dpo_micro_step = sampler.phase("forward+loss", dpo.dpo_micro_step)
    run.finish_run = sampler.phase("final_save", run.finish_run)
    dpo.finish_run = run.finish_run
    accelerate.Accelerator.backward = sampler.phase("backward", accelerate.Accelerator.backward)
    accelerate.Accelerator.clip_grad_norm_ = sampler.phase("clip_grad", accelerate.Accelerator.clip_grad_norm_)
    AcceleratedOptimizer.step = sampler.phase("optimizer_step", AcceleratedOptimizer.step)
    AcceleratedOptimizer.zero_grad = sampler.phase("zero_grad", AcceleratedOptimizer.zero_grad)


def summarise(rows: list[dict[str, Any]], baseline_mb: float) -> list[dict[str, Any]]:
    """Per phase name: how often, the highest peak, and the largest rise within one occurrence."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        s = out.setdefault(r["phase"], {"phase": r["phase"], "count": 0, "peak_mb": 0.0, "max_rise_mb": 0.0,
                                        "seconds": 0.0})
        s["count"] += 1
        s["seconds"] += r.get("seconds", 0.0)
        if r["peak_mb"] > s["peak_mb"]:
            s.update(peak_mb=r["peak_mb"], peak_anon_mb=r["peak_anon_mb"], peak_file_mb=r["peak_file_mb"])
        s["max_rise_mb"] = max(s["max_rise_mb"], r["peak_mb"] - r["start_mb"])
    for s in out.values():
        s["peak_above_baseline_mb"] = s["peak_mb"] - baseline_mb
        for k, v in list(s.items()):
            if isinstance(v, float):
                s[k] = round(v, 1)
    return sorted(out.values(), key=lambda s: -s["peak_mb"])


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path("runs/bench"))
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--forward", default="auto")
    ap.add_argument("--adamw-kwargs", type=json.loads, default=None,
                    help='experiment: extra torch.optim.AdamW arguments, e.g. \'{"foreach": false}\'')
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--trace", action="store_true", help="also print every phase occurrence")
    a = ap.parse_args()

    inputs = prepare_inputs(a.workdir, a.batch_size * a.steps)
    import torch

    torch.set_num_threads(a.threads)
    import transformers  # noqa: F401  (import baseline as in the benchmark worker)

    from vlalign.trainers.configs import DPOConfig
    from vlalign.trainers.dpo import train_dpo

    if a.adamw_kwargs:
        import functools

        torch.optim.AdamW = functools.partial(torch.optim.AdamW, **a.adamw_kwargs)
    sampler = PhaseSampler()
    baseline = read_rss()["VmHWM"]
    instrument(sampler)
    sampler.start()
    run_dir = a.workdir / "memory_profile_out"
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    cfg = DPOConfig(
        output_dir=str(run_dir), seed=0,
        model={"name_or_path": str(inputs["model_dir"]), "dtype": "float32"},
        data={"train": str(inputs["pairs"]), "limit": a.batch_size * a.steps, "max_length": 128},
        per_device_batch_size=a.batch_size, max_steps=a.steps, learning_rate=1e-6, lr_scheduler="constant",
        max_grad_norm=1.0, mixed_precision="no", loss="dpo", beta=0.1, progress=False, save_merged=False,
        forward=a.forward,
    )
    sampler.enter("train_dpo (other)")
    train_dpo(cfg)
    sampler.stop()
    hwm = read_rss()["VmHWM"]
    table = summarise(sampler.rows, baseline)
    print(f"import baseline (VmHWM) {baseline:.0f} MiB; final VmHWM {hwm:.0f} MiB; above baseline {hwm - baseline:.0f} MiB")
    print(f"{'phase':22s} {'n':>3s} {'peak MiB':>9s} {'above base':>10s} {'anon':>7s} {'file':>6s} {'max rise':>9s} {'s':>7s}")
    for s in table:
        print(f"{s['phase']:22s} {s['count']:3d} {s['peak_mb']:9.0f} {s['peak_above_baseline_mb']:10.0f} "
              f"{s['peak_anon_mb']:7.0f} {s['peak_file_mb']:6.0f} {s['max_rise_mb']:9.0f} {s['seconds']:7.1f}")
    if a.trace:
        for r in sampler.rows:
            print(f"  {r['phase']:22s} start {r['start_mb']:7.0f} peak {r['peak_mb']:7.0f} end {r.get('end_mb', 0):7.0f}")
    if a.json:
        a.json.write_text(json.dumps({"baseline_mb": baseline, "final_hwm_mb": hwm, "phases": table,
                                      "trace": sampler.rows}, indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()
