"""What a figure was measured on: CPU model, the instruction set torch's kernels use, threads, versions.

WHY: floating-point results of training differ between machines (AVX2 vs AVX-512 kernels reduce in a
different order, and the differences compound over steps), so every reported result names the machine
and every run records it. ``ATEN_CPU_CAPABILITY`` (avx512, avx2, default) picks torch's CPU kernels;
:func:`machine_info` reports the capability actually in use, not only what the CPU offers.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else the platform's processor string."""
    info = Path("/proc/cpuinfo")
    if info.is_file():
        for line in info.read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def cpu_flags() -> set[str]:
    info = Path("/proc/cpuinfo")
    if info.is_file():
        for line in info.read_text(errors="replace").splitlines():
            if line.lower().startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def best_instruction_set(flags: set[str]) -> str:
    """The widest x86 vector set the CPU offers: avx512 (avx512f), avx2, or default."""
    if "avx512f" in flags:
        return "avx512"
    if "avx2" in flags:
        return "avx2"
    return "default"


def machine_info() -> dict[str, Any]:
    """A JSON-ready description of this machine and torch's numerics on it (read afresh each call: the
    thread count is whatever the run has set by then)."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": cpu_model(),
        "cpu_instruction_set": best_instruction_set(cpu_flags()),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),  # the kernels in use
        "aten_cpu_capability_env": os.environ.get("ATEN_CPU_CAPABILITY"),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def machine_line(info: dict[str, Any] | None = None) -> str:
    """``AMD EPYC, 2 cores, torch kernels AVX2 (CPU offers avx2), 2 threads, torch 2.14.1``."""
    m = info or machine_info()
    dev = f"GPU {m['gpu']}, " if m.get("gpu") else ""
    return (f"{dev}{m['cpu']}, {m['cpu_count']} cores, torch kernels {m['torch_cpu_capability']} "
            f"(CPU offers {m['cpu_instruction_set']}), {m['torch_threads']} threads, torch {m['torch']}")
