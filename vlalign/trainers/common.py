"""Shared trainer pieces as plain functions: optimizer and schedule registries, the accelerator (with
the ``deterministic`` switch), memory metrics.

The optimizer step itself is :mod:`vlalign.trainers.step`, the data order :mod:`vlalign.trainers.sources`,
the run around them (set-up, resume, logging, monitors, checkpoints) :mod:`vlalign.trainers.run`.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlalign.registry import Registry
from vlalign.trainers.sources import global_batch_indices, local_micro_batches, steps_per_epoch
from vlalign.trainers.step import NonFiniteError, StepResult

__all__ = [  # the data order and step names are re-exported for callers of earlier versions
    "OPTIMIZERS", "SCHEDULES", "NonFiniteError", "StepResult", "build_optimizer", "build_scheduler",
    "global_batch_indices", "local_micro_batches", "memory_metrics", "setup_accelerator", "steps_per_epoch",
]

# ------------------------------------------------------------------------------------ optimizer, schedule

# name -> factory(params, cfg) -> torch.optim.Optimizer
OPTIMIZERS: Registry[Callable[..., Any]] = Registry("optimizer")
# name -> lr factor(step, warmup_steps, total_steps) -> float in [0, 1]
SCHEDULES: Registry[Callable[[int, int, int], float]] = Registry("lr schedule")


def fused_supported(params: Sequence[torch.Tensor]) -> bool:
    """Whether torch has a fused (single-kernel) AdamW for every parameter: floating dtype on CPU/CUDA."""
    return all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)


@OPTIMIZERS.register("adamw")
def _adamw(params: Any, cfg: Any) -> torch.optim.Optimizer:
    """AdamW, fused where torch has the kernel.

    WHY fused: the default multi-tensor (foreach) AdamW builds whole-model temporaries (e.g. the
    sqrt of every second moment) on each step, which set the run's peak memory on CPU, and it was
    ~5x slower per step on the benchmark's 30M-parameter model (2 CPU threads). The fused kernel
    updates each parameter in place in one pass: same formula, different float rounding order.
    """
    params = list(params)  # tensors, or param groups (dicts) when parts train at their own rate
    tensors = [t for g in params for t in g["params"]] if params and isinstance(params[0], dict) else params
    return torch.optim.AdamW(
        params, lr=cfg.learning_rate, betas=tuple(cfg.adam_betas), eps=cfg.adam_eps, weight_decay=cfg.weight_decay,
        fused=fused_supported(tensors) or None,
    )


@OPTIMIZERS.register("sgd")
def _sgd(params: Any, cfg: Any) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)


def _warmup(step: int, warmup: int) -> float | None:
    """Linear warm-up factor (step+1)/warmup while warming up, else None."""
    return (step + 1) / warmup if step < warmup else None


@SCHEDULES.register("constant")
def constant_schedule(step: int, warmup: int, total: int) -> float:
    w = _warmup(step, warmup)
    return 1.0 if w is None else w


@SCHEDULES.register("linear")
def linear_schedule(step: int, warmup: int, total: int) -> float:
    """Warm up, then decay linearly to 0 at ``total``."""
    w = _warmup(step, warmup)
    if w is not None:
        return w
    return max(0.0, (total - step) / max(1, total - warmup))


@SCHEDULES.register("cosine")
def cosine_schedule(step: int, warmup: int, total: int) -> float:
    """Warm up, then half a cosine from 1 to 0 at ``total``."""
    w = _warmup(step, warmup)
    if w is not None:
        return w
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def build_optimizer(model: torch.nn.Module, cfg: Any) -> torch.optim.Optimizer:
    """Optimizer over the trainable parameters only (LoRA: just the adapter); the parts of ``model.lr_scale``
    in their own groups at their multiple of the learning rate (the policy is ``model["model"]`` when extra
    modules such as critics train beside it)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters (check model.freeze_* / lora settings)")
    scales = getattr(getattr(cfg, "model", None), "lr_scale", None)
    if scales:
        from vlalign.models.freeze import scaled_param_groups

        policy = model["model"] if isinstance(model, torch.nn.ModuleDict) and "model" in model else model
        return OPTIMIZERS.get(cfg.optimizer)(scaled_param_groups(policy, params, cfg.learning_rate, scales), cfg)
    return OPTIMIZERS.get(cfg.optimizer)(params, cfg)


def warmup_steps(cfg: Any, total: int) -> int:
    return cfg.warmup_steps or round(cfg.warmup_ratio * total)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: Any, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Plain LambdaLR stepped once per optimizer step (not accelerate's per-process stepping)."""
    fn = SCHEDULES.get(cfg.lr_scheduler)
    warm = warmup_steps(cfg, total)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: fn(s, warm, total))


# ------------------------------------------------------------------------------------------ allocator

M_MMAP_THRESHOLD = -3  # glibc mallopt parameter (malloc.h)
MMAP_THRESHOLD_BYTES = 128 * 1024  # glibc's own initial value, made fixed


def return_freed_memory_to_os(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Make glibc give every freed block of ``threshold`` bytes or more back to the OS at once.

    WHY: torch CPU tensors come from malloc. glibc serves large blocks with mmap (returned to the OS
    on free) but, after the first such free, raises its mmap threshold to that block's size (up to
    32 MiB), so later activations, gradients and optimizer temporaries land in the heap, where freed
    space stays resident and fragments. On the DPO benchmark (30M-parameter LLaVA, CPU) that retained
    space was ~145 MiB of a 912 MiB rise above the import baseline (bench/dpo_memory_profile.py).
    A fixed threshold (mallopt also turns the dynamic adjustment off) keeps large tensors mmapped.

    The cost: every such tensor is a fresh mmap (page faults, zero-fill) — 1.7x slower SFT steps on the
    demo's 1M-parameter model, whose activations are mostly 0.1-2 MiB — so it is opt-in
    (``release_freed_memory: true``); the DPO benchmark runs vlalign with and without it (DPO step on
    its 30M-parameter model: 0.98 s vs 0.65 s, peak RSS 1309 vs 1450 MiB).
    Process-wide and harmless to results; skipped when the user set ``MALLOC_MMAP_THRESHOLD_``
    themselves, and a no-op (returns False) where the C library is not glibc.
    """
    import os

    from vlalign.data.memory import glibc

    libc = glibc()
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or libc is None:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, threshold))


# ------------------------------------------------------------------------------------------ accelerator


def resolve_precision(choice: str) -> str:
    """``auto`` → bf16 on a GPU that supports it, else fp32 ("no"): CPU bf16 matmul is slow here."""
    if choice != "auto":
        return choice
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


class GlobalTorchState:
    """Thread count, deterministic-algorithms flag and the random generators (``random``, numpy, torch's
    CPU and CUDA ones) of the process, saved before a run changes them (``num_threads``, the run's seed)
    and restored after it: a library call must not leave the caller's process altered."""

    def __init__(self) -> None:
        self.threads = torch.get_num_threads()
        self.deterministic = torch.are_deterministic_algorithms_enabled()
        self.cublas = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
        self.rng = (random.getstate(), np.random.get_state(), torch.random.get_rng_state(),
                    torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None)

    def restore(self) -> None:
        torch.set_num_threads(self.threads)
        torch.use_deterministic_algorithms(self.deterministic)
        py, np_state, cpu, cuda = self.rng
        random.setstate(py)
        np.random.set_state(np_state)
        torch.random.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        if self.cublas is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = self.cublas


def apply_determinism(cfg: Any) -> GlobalTorchState:
    """``num_threads`` and ``deterministic`` of a config; returns what to restore at the end.

    ``deterministic: true`` = torch.use_deterministic_algorithms(True) (ops without a deterministic
    kernel raise instead of silently varying), cuBLAS's fixed workspace, cuDNN deterministic (through
    accelerate's set_seed), and a fixed thread count (``num_threads``, default 1) so float sums are
    split the same way on every machine. Same machine + same seed → bit-identical weights (tested);
    across CPU instruction sets, thread counts or GPUs the float rounding differs.
    """
    saved = GlobalTorchState()
    threads = getattr(cfg, "num_threads", None)
    if getattr(cfg, "deterministic", False):
        threads = threads or 1
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
        torch.use_deterministic_algorithms(True)
    if threads:
        torch.set_num_threads(threads)
    return saved


def setup_accelerator(cfg: Any) -> Any:
    """An Accelerator that owns gradient accumulation (so DDP/FSDP/DeepSpeed skip syncs correctly)."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, set_seed

    # On a machine without GPUs, processes started by torchrun (`accelerate launch --multi_gpu`, see
    # configs/accelerate/cpu_2proc.yaml) must be told to use CPU/gloo, or each one trains alone.
    cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    if getattr(cfg, "release_freed_memory", False):
        return_freed_memory_to_os()  # before the model is loaded: its tensors are the first large blocks
    acc = Accelerator(
        cpu=cpu,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        mixed_precision=resolve_precision(cfg.mixed_precision),
        log_with=list(cfg.report_to) or None,
        project_dir=cfg.output_dir,
        step_scheduler_with_optimizer=False,
        # VLMs often hold trainable parameters a forward never touches (e.g. CLIP's post-layernorm when
        # features come from hidden states): DDP must be told, or it stalls at the second step.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=getattr(cfg, "ddp_find_unused_parameters", False))],
    )
    if cpu and os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        enable_fsdp_on_cpu(acc)
    # the same seed on every process: model heads and adapters start identical everywhere; sampling
    # draws from its own per-process stream (vlalign.trainers.rl_common.sampling_stream)
    set_seed(cfg.seed, deterministic=bool(getattr(cfg, "deterministic", False)))
    return acc


def enable_fsdp_on_cpu(acc: Any) -> None:
    """Run accelerate's own FSDP2 path on CPU processes (gloo) when launched with an FSDP config.

    WHY: accelerate selects FSDP only for accelerator devices. ``AcceleratorState.__init__``
    (accelerate/state.py, 1.15: the ``elif self.distributed_type in [DistributedType.MULTI_GPU,
    DistributedType.MULTI_MLU, ...]`` branch) is the only place that turns ``ACCELERATE_USE_FSDP`` into
    ``DistributedType.FSDP``; on CPUs the state is ``MULTI_CPU`` and ``prepare`` silently wraps the model
    in DDP instead (or, with ``cpu=False``, every process trains alone). torch's FSDP2 (``fully_shard``)
    itself runs on CPU with gloo, so vlalign hands accelerate the FSDP plugin of the launch config and
    accelerate shards the model exactly as it does on GPUs. FSDP1 has no CPU support and is refused.
    """
    from accelerate import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin()  # from the FSDP_* variables `accelerate launch` set
    if plugin.fsdp_version != 2:
        raise ValueError("FSDP on CPU processes needs fsdp_version: 2 in the accelerate config (torch's FSDP1 "
                         "has no CPU/gloo support); see configs/accelerate/fsdp_cpu_2proc.yaml")
    # both states: every later AcceleratorState() (e.g. in AcceleratedOptimizer) copies PartialState's
    # fields over its own; the collectives of both branch on FSDP exactly as on MULTI_CPU (torch.distributed)
    PartialState().distributed_type = DistributedType.FSDP
    acc.state.distributed_type = DistributedType.FSDP
    acc.state.fsdp_plugin = plugin


def memory_metrics() -> dict[str, float]:
    """Current and peak RSS of this process (MiB), and CUDA peak allocated when on GPU."""
    import resource

    import psutil

    out = {
        "rss_mib": psutil.Process().memory_info().rss / 2**20,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux: KiB
    }
    if torch.cuda.is_available():
        out["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def chunks(seq: Sequence[int], size: int) -> Iterator[list[int]]:
    for i in range(0, len(seq), size):
        yield list(seq[i : i + size])


def ensure_dir(path: str | Path) -> Path:
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    return p
