"""Shared pieces of the side-by-side benchmarks: run a worker in its own process, measure memory,
measure the machine, and turn raw timings into the numbers the report shows.

WHY subprocesses: peak resident memory is a per-process high-water mark, and each framework's
imports (TRL pulls in far more than vlalign) are part of what a user pays. Each side therefore runs
alone in a fresh interpreter, one after the other so they never compete for the 2 cores, and reports:

- ``baseline_rss_mb``: VmHWM right after its imports (before the model is loaded) — the import baseline;
- ``peak_rss_mb``: VmHWM at the end of the run (whole-process peak resident memory);
- ``peak_above_baseline_mb``: the difference, i.e. what the training itself needed.

The parent cross-checks the peak with ``os.wait4`` (the kernel's ru_maxrss of that one child).

This file is also imported by the workers (``sys.path`` holds ``bench/`` when a worker runs), so it
must not import torch at module level; functions that need torch import it inside.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
MIB = 1024.0

# ----------------------------------------------------------------------------------------- memory


def parse_proc_status(text: str) -> dict[str, float]:
    """``/proc/<pid>/status`` text → {"VmRSS": MiB, "VmHWM": MiB, ...} for the memory lines in kB.

    Example line: ``VmHWM:\t  1277952 kB`` → 1248.0 MiB (1277952 / 1024).
    """
    out: dict[str, float] = {}
    for line in text.splitlines():
        key, sep, rest = line.partition(":")
        parts = rest.split()
        if not sep or len(parts) != 2 or parts[1] != "kB" or not key.startswith("Vm"):
            continue
        out[key.strip()] = int(parts[0]) / MIB
    return out


def rss_snapshot(pid: int | str = "self") -> dict[str, float]:
    """Current (``rss_mb``) and peak (``hwm_mb``) resident memory of a process, in MiB."""
    status = parse_proc_status(Path(f"/proc/{pid}/status").read_text())
    return {"rss_mb": status["VmRSS"], "hwm_mb": status["VmHWM"]}


def maxrss_to_mb(ru_maxrss: int) -> float:
    """``ru_maxrss`` is in KiB on Linux (bytes on macOS) → MiB."""
    return ru_maxrss / (MIB * MIB) if sys.platform == "darwin" else ru_maxrss / MIB


def memory_report(baseline_hwm_mb: float, final_hwm_mb: float) -> dict[str, float]:
    """Peak RSS and peak above the import baseline (both MiB, rounded to 0.1)."""
    return {
        "baseline_rss_mb": round(baseline_hwm_mb, 1),
        "peak_rss_mb": round(final_hwm_mb, 1),
        "peak_above_baseline_mb": round(final_hwm_mb - baseline_hwm_mb, 1),
    }


# ---------------------------------------------------------------------------------------- timings


def cuda_sync() -> None:
    """Wait for queued GPU work, so a clock read after it counts it (no-op on CPU)."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def gpu_memory() -> dict[str, float]:
    """Peak GPU memory allocated by torch in this process (MiB); {} when no GPU was used."""
    import torch

    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return {}
    return {"peak_gpu_mb": round(torch.cuda.max_memory_allocated() / MIB / MIB, 1)}


class StepClock:
    """Wall-clock (``perf_counter``) and process CPU seconds at the end of every optimizer step.

    A global optimizer step post-hook: the same instrument inside every framework (an optimizer step is
    the end of a training step's work whatever the trainer's loop looks like). ``start()`` marks the
    start of the end-to-end clock, right before the trainer is built.
    """

    def __init__(self) -> None:
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.t0 = self.c0 = 0.0
        self._handle = register_optimizer_step_post_hook(self._on_step)

    def _on_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        cuda_sync()
        self.wall.append(time.perf_counter())
        self.cpu.append(time.process_time())

    def start(self) -> None:
        self.t0, self.c0 = time.perf_counter(), time.process_time()

    def stop(self) -> dict[str, float]:
        """End-to-end wall and CPU seconds since ``start()``, and when the first step ended."""
        cuda_sync()
        wall, cpu = time.perf_counter() - self.t0, time.process_time() - self.c0
        self._handle.remove()
        first = self.wall[0] - self.t0 if self.wall else None
        return {"e2e_s": round(wall, 3), "e2e_cpu_s": round(cpu, 3),
                "first_step_end_s": None if first is None else round(first, 3)}

    def step_times(self) -> list[float]:
        return [round(b - a, 4) for a, b in zip([self.t0, *self.wall[:-1]], self.wall, strict=True)]


def steady_rate(step_ends: Sequence[float], units_per_step: float, warmup: int) -> float:
    """Units/s over the steps after ``warmup``.

    ``step_ends[i]`` is the wall-clock time at which step i finished. Steps warmup..N-1 take
    ``step_ends[N-1] - step_ends[warmup-1]`` seconds, so e.g. ends [1, 2, 3, 4, 5] (s), 4 pairs per
    step, warmup 3 → (5 − 3) steps × 4 pairs / (5 − 3) s = 4.0 pairs/s.
    """
    if warmup < 1:
        raise ValueError("warmup must be >= 1: the first step's end is the start of the steady-state clock")
    if len(step_ends) <= warmup:
        raise ValueError(f"need more than {warmup} steps to measure after the warm-up, got {len(step_ends)}")
    elapsed = step_ends[-1] - step_ends[warmup - 1]
    if elapsed <= 0:
        raise ValueError(f"non-increasing step times: {list(step_ends)}")
    return (len(step_ends) - warmup) * units_per_step / elapsed


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b rounded to 3 digits; None if either side is missing or b is 0 (a side failed)."""
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 3)


# ----------------------------------------------------------------------------------------- machine


def matmul_gflops(n: int = 2048, threads: int = 2, repeats: int = 5, dtype: str = "float32",
                  device: str = "cpu", per_cpu_second: bool = False) -> float:
    """Best-of-``repeats`` GFLOP/s of an n×n @ n×n matmul (2·n³ FLOPs) on ``threads`` CPU threads (or
    on the GPU, synchronised around each product). ``per_cpu_second``: GFLOP per process CPU-second
    instead (all threads summed), which other jobs on a shared machine move far less than wall time."""
    import torch

    torch.set_num_threads(threads)
    dt = getattr(torch, dtype)
    a, b = torch.randn(n, n, dtype=dt, device=device), torch.randn(n, n, dtype=dt, device=device)
    a @ b  # warm-up (allocations, kernel selection)
    clock = time.process_time if per_cpu_second else time.perf_counter
    best = float("inf")
    for _ in range(repeats):
        cuda_sync()
        t0 = clock()
        a @ b
        cuda_sync()
        best = min(best, clock() - t0)
    return 2.0 * n**3 / max(best, 1e-9) / 1e9


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(threads: int, device: str = "cpu") -> dict[str, Any]:
    """What the numbers were measured on: CPU, cores, threads used, the measured matmul peak (fp32 on
    the CPU; bf16 8192² on a GPU, the dtype the GPU benchmark trains in)."""
    import torch

    info = {"cpu": cpu_name(), "logical_cpus": os.cpu_count(), "threads": threads, "device": device,
            "torch": torch.__version__, "python": platform.python_version()}
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
        info["matmul_gflops_fp32"] = round(matmul_gflops(8192, threads, dtype="bfloat16", device="cuda"), 1)
        info["matmul_dtype"] = "bfloat16"
    else:
        info["matmul_gflops_fp32"] = round(matmul_gflops(threads=threads), 1)
        info["matmul_gflops_per_cpu_s"] = round(matmul_gflops(threads=threads, per_cpu_second=True), 1)
    return info


def package_versions(names: Sequence[str]) -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def count_params(model: Any) -> dict[str, int]:
    """Total parameters and the ones that cost FLOPs per token (embedding look-ups cost none)."""
    total = sum(p.numel() for p in model.parameters())
    emb = model.get_input_embeddings()
    emb_n = sum(p.numel() for p in emb.parameters()) if emb is not None else 0
    return {"params": total, "params_non_embedding": total - emb_n}


# ----------------------------------------------------------------------------------------- inputs


def safetensors_param_count(model_dir: Path) -> dict[str, int]:
    """Parameters of a saved model, read from the safetensors headers (no torch, no model load).

    Header layout: 8-byte little-endian length, then JSON {name: {"shape": [...], ...}}.
    ``params_non_embedding`` leaves out the token-embedding tables (a look-up costs no FLOPs).
    """
    total = emb = 0
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{model_dir}: no *.safetensors files")
    for f in files:
        with f.open("rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(n))
        for name, info in header.items():
            if name == "__metadata__":
                continue
            count = 1
            for d in info["shape"]:
                count *= d
            total += count
            emb += count if "embed_tokens" in name else 0
    return {"params": total, "params_non_embedding": total - emb}


# ---------------------------------------------------------------------------------------- running


def run_worker(script: str, spec: dict[str, Any], workdir: Path, timeout_s: float = 3600,
               mem_cap_mb: float | None = None) -> dict[str, Any]:
    """Run ``bench/<script>`` in a fresh interpreter with ``spec``; return its result JSON.

    The child's own numbers are kept; the kernel's ``ru_maxrss`` for that child (``os.wait4``) is
    added as ``peak_rss_mb_kernel`` (a cross-check of the in-process VmHWM; it is at least the parent's
    own high-water mark at spawn time, which exec carries over). A failed worker
    gives ``{"error": ...}`` with the tail of its log instead of raising, so one side failing still
    reports the other. With ``mem_cap_mb`` the child is killed as soon as its resident memory exceeds
    the cap (``{"error": ..., "over_cap": True}``): what the max-batch search calls "does not fit".
    """
    workdir = Path(workdir).resolve()  # the child runs with this as its cwd: every path it gets is absolute
    workdir.mkdir(parents=True, exist_ok=True)
    name = Path(script).stem
    spec_path, out_path = workdir / f"{name}.spec.json", workdir / f"{name}.result.json"
    log_path = workdir / f"{name}.log"
    spec_path.write_text(json.dumps(spec, indent=2))
    out_path.unlink(missing_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1",
           "OMP_NUM_THREADS": str(spec.get("threads", 2)), "HF_DATASETS_OFFLINE": "1",
           "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1", "WANDB_DISABLED": "true"}
    if spec.get("device", "cpu") == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # a CPU run on a GPU machine stays on the CPU, for both frameworks
    cmd = [sys.executable, str(BENCH_DIR / script), "--spec", str(spec_path), "--out", str(out_path)]
    t0 = time.perf_counter()
    over_cap = timed_out = False
    seen_mb = 0.0
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(workdir))
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if mem_cap_mb is not None:
                try:
                    seen_mb = max(seen_mb, rss_snapshot(proc.pid)["rss_mb"])
                except (OSError, KeyError):
                    pass
                over_cap = seen_mb > mem_cap_mb
            timed_out = time.perf_counter() - t0 > timeout_s
            if over_cap or timed_out:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05 if mem_cap_mb is not None else 0.2)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    # ru_maxrss can hold the parent's high-water mark (exec records the address space it replaces), so the
    # cap is judged on the polled RSS and on the child's own VmHWM (its result's peak_rss_mb), not on it.
    peak_kernel = round(maxrss_to_mb(usage.ru_maxrss), 1)
    result = json.loads(out_path.read_text()) if proc.returncode == 0 and out_path.exists() else None
    if over_cap or (mem_cap_mb is not None and result is not None and result.get("peak_rss_mb", 0) > mem_cap_mb):
        return {"error": f"{script}: resident memory above the {mem_cap_mb:.0f} MiB cap (after {wall:.0f}s)",
                "over_cap": True, "peak_rss_mb_seen": round(seen_mb, 1)}
    if result is None:
        tail = log_path.read_text()[-3000:]
        why = "timed out" if timed_out else f"exited with {proc.returncode}"
        return {"error": f"{script} {why} after {wall:.0f}s; log {log_path}", "log_tail": tail}
    result["peak_rss_mb_kernel"] = peak_kernel
    result["process_wall_s"] = round(wall, 1)
    return result


def run_sides(kind: str, scripts: dict[str, str], sides: Sequence[str], spec: dict[str, Any], workdir: Path,
              brief_keys: Sequence[str], side_specs: dict[str, dict[str, Any]] | None = None,
              ) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Probe the machine, then run each side's worker in turn (never two at once).

    ``side_specs[name]`` is merged into that side's spec (a variant of one worker, e.g. vlalign with a
    memory-lean setting). The 1-minute load average is recorded before and after each side: on a
    shared machine it says whether the sides ran under comparable conditions.
    """
    machine = machine_info(spec["threads"], spec.get("device", "cpu"))
    machine["load_avg_start"] = [round(x, 2) for x in os.getloadavg()]
    machine["versions"] = package_versions(["vlalign", "trl", "transformers", "accelerate", "torch"])
    results: dict[str, dict[str, Any]] = {}
    for name in sides:
        print(f"[bench {kind}] running {name} ...", file=sys.stderr, flush=True)
        load_before = [round(x, 2) for x in os.getloadavg()]
        results[name] = run_worker(scripts[name], {**spec, **(side_specs or {}).get(name, {})}, workdir / f"{kind}_{name}")
        results[name]["load_avg_before"] = load_before
        results[name]["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
        side = results[name]
        brief = side["error"] if "error" in side else ", ".join(f"{k} {side[k]}" for k in brief_keys if k in side)
        print(f"[bench {kind}] {name}: {brief} ({side.get('process_wall_s', '?')} s)", file=sys.stderr, flush=True)
    return results, machine


def read_spec(argv: Sequence[str] | None = None) -> tuple[dict[str, Any], Path]:
    """Workers' command line: ``--spec SPEC.json --out RESULT.json``."""
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--spec", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    return json.loads(Path(args.spec).read_text()), Path(args.out)


def read_rows(path: Path, limit: int) -> list[dict[str, Any]]:
    """The first ``limit`` rows of a canonical JSONL file (fails if it has fewer: runs must match)."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()][:limit]
    if len(rows) < limit:
        raise ValueError(f"{path}: {len(rows)} rows, the benchmark needs {limit}; generate more (--n-train)")
    return rows


def write_result(out: Path, result: dict[str, Any]) -> None:
    out.write_text(json.dumps(result, indent=2) + "\n")
