"""Shared trainer pieces as plain functions: accelerator, optimizer, schedule, data order, NaN guard,
and the one optimizer-step loop every trainer runs.

WHY one loop: SFT, DPO and the RL trainers differ only in how a micro-batch becomes a loss. Each
passes a ``micro_step(batch) -> StepResult`` to :func:`train_loop`, which owns gradient accumulation,
exact global-batch normalisation, clipping, the NaN/inf guard, metrics, checkpoints and resume.

Normalisation: a micro-step returns the SUM of its per-unit losses (unit = pair for DPO, response token
for SFT). The loop divides by the number of units in the whole global batch (all micro-batches, all
processes), so 4 micro-batches × 2 equals 1 × 8 and 2 processes equal 1 process with the same global
batch, up to float rounding.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vlalign.registry import Registry

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
    params = list(params)
    return torch.optim.AdamW(
        params, lr=cfg.learning_rate, betas=tuple(cfg.adam_betas), eps=cfg.adam_eps, weight_decay=cfg.weight_decay,
        fused=fused_supported(params) or None,
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
    """Optimizer over the trainable parameters only (LoRA: just the adapter)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters (check model.freeze_* / lora settings)")
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
    import ctypes
    import os

    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, threshold))


# ------------------------------------------------------------------------------------------ accelerator


def resolve_precision(choice: str) -> str:
    """``auto`` → bf16 on a GPU that supports it, else fp32 ("no"): CPU bf16 matmul is slow here."""
    if choice != "auto":
        return choice
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def setup_accelerator(cfg: Any) -> Any:
    """An Accelerator that owns gradient accumulation (so DDP/FSDP/DeepSpeed skip syncs correctly)."""
    import os

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
    set_seed(cfg.seed)
    return acc


# ------------------------------------------------------------------------------------------- data order


def steps_per_epoch(num_rows: int, global_batch: int) -> int:
    """Full global batches per epoch (the incomplete tail is dropped so every step has the same size)."""
    if global_batch > num_rows:
        raise ValueError(
            f"the dataset has {num_rows} rows but one optimizer step needs {global_batch} "
            "(per_device_batch_size × gradient_accumulation_steps × processes); lower the batch size or add data"
        )
    return num_rows // global_batch


def global_batch_indices(step: int, num_rows: int, global_batch: int, seed: int) -> list[int]:
    """Row indices of optimizer step ``step``: a fixed permutation per (seed, epoch), sliced in order.

    Why a pure function of the step: resuming at step k reproduces exactly the batches an
    uninterrupted run would have seen, on any number of processes.
    """
    spe = steps_per_epoch(num_rows, global_batch)
    epoch, pos = divmod(step, spe)
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    perm = torch.randperm(num_rows, generator=gen)
    return perm[pos * global_batch : (pos + 1) * global_batch].tolist()


def local_micro_batches(indices: Sequence[int], rank: int, world: int, micro: int) -> list[list[int]]:
    """This process's share of a global batch, split into micro-batches of ``micro`` rows."""
    per_proc = len(indices) // world
    mine = list(indices[rank * per_proc : (rank + 1) * per_proc])
    return [mine[i : i + micro] for i in range(0, len(mine), micro)]


def total_steps(cfg: Any, num_rows: int, world: int) -> int:
    gb = cfg.per_device_batch_size * cfg.gradient_accumulation_steps * world
    return cfg.max_steps or max(1, int(cfg.num_epochs * steps_per_epoch(num_rows, gb)))


# ---------------------------------------------------------------------------------------------- the loop


@dataclass
class StepResult:
    """What a micro-step returns. ``loss_sum`` is the sum of per-unit losses (graph attached);
    ``metric_sums`` are sums over units (divided by the global unit count when logged)."""

    loss_sum: torch.Tensor
    metric_sums: dict[str, torch.Tensor] = field(default_factory=dict)
    tokens: int = 0  # tokens processed (throughput)


class NonFiniteError(RuntimeError):
    """Too many consecutive non-finite steps: the run cannot recover by skipping batches."""


@dataclass
class LoopSpec:
    """What :func:`train_loop` needs from a trainer."""

    model: Any
    optimizer: Any
    scheduler: Any
    batches: Callable[[list[int]], Any]  # row indices -> Batch (collated, on CPU)
    units: Callable[[Any], int]  # Batch -> number of loss units in it (pairs, tokens)
    micro_step: Callable[[Any], StepResult]  # Batch on device -> StepResult
    num_rows: int
    unit_name: str = "pairs"  # for the throughput metric name


def _reduce_sum(acc: Any, values: torch.Tensor) -> torch.Tensor:
    return acc.reduce(values.to(acc.device), reduction="sum") if acc.num_processes > 1 else values


def run_optimizer_step(acc: Any, spec: LoopSpec, cfg: Any, step: int) -> tuple[bool, dict[str, float], list[str]]:
    """One optimizer step: accumulate over micro-batches, normalise globally, guard, clip, step.

    Returns (finite, metrics, row ids of this process's batch).
    """
    gb = cfg.per_device_batch_size * cfg.gradient_accumulation_steps * acc.num_processes
    indices = global_batch_indices(step, spec.num_rows, gb, cfg.seed)
    micro_idx = local_micro_batches(indices, acc.process_index, acc.num_processes, cfg.per_device_batch_size)
    batches = [spec.batches(ix) for ix in micro_idx]
    local_units = torch.tensor(float(sum(spec.units(b) for b in batches)))
    global_units = float(_reduce_sum(acc, local_units).item())
    # accelerate divides by gradient_accumulation_steps and DDP averages over processes: undo both.
    scale = cfg.gradient_accumulation_steps * acc.num_processes / max(global_units, 1.0)

    t0 = time.perf_counter()
    sums: dict[str, float] = {}
    loss_total, tokens = 0.0, 0
    for batch in batches:
        # autocast here (not only inside the wrapped forward): the output head is applied to the
        # selected response positions outside model.forward and must see the same precision.
        with acc.accumulate(spec.model), acc.autocast():
            res = spec.micro_step(batch.to(acc.device))
            acc.backward(res.loss_sum * scale)
        loss_total += float(res.loss_sum.detach())
        tokens += res.tokens
        for k, v in res.metric_sums.items():
            sums[k] = sums.get(k, 0.0) + float(v)
    max_norm = cfg.max_grad_norm if cfg.max_grad_norm else float("inf")
    grad_norm = acc.clip_grad_norm_(spec.model.parameters(), max_norm)
    # DeepSpeed clips inside its engine and may report no norm: unknown counts as finite (logged NaN).
    norm_known = grad_norm is not None
    grad_norm = float(grad_norm) if norm_known else float("nan")

    keys = sorted(sums)
    packed = torch.tensor([loss_total, float(tokens), *[sums[k] for k in keys]], dtype=torch.float64)
    packed = _reduce_sum(acc, packed)
    finite = math.isfinite(float(packed[0])) and (math.isfinite(grad_norm) or not norm_known)
    flag = _reduce_sum(acc, torch.tensor([0.0 if finite else 1.0]))
    finite = float(flag.item()) == 0.0
    if finite:
        spec.optimizer.step()
        spec.scheduler.step()
    spec.optimizer.zero_grad(set_to_none=True)
    dt = time.perf_counter() - t0

    metrics = {"loss": float(packed[0]) / max(global_units, 1.0), f"{spec.unit_name}_per_s": global_units / dt}
    metrics.update({k: float(packed[2 + i]) / max(global_units, 1.0) for i, k in enumerate(keys)})
    metrics.update(
        grad_norm=grad_norm,
        lr=spec.scheduler.get_last_lr()[0],
        tokens_per_s=float(packed[1]) / dt,
        step_time_s=dt,
    )
    row_ids = [i for b in batches for i in b.ids]
    return finite, metrics, row_ids


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


def train_loop(acc: Any, spec: LoopSpec, cfg: Any, start_step: int, total: int, log: Any, ckpt: Any) -> int:
    """Run optimizer steps ``start_step .. total-1``; returns the number of skipped (non-finite) steps.

    ``log(step, metrics)`` records metrics; ``ckpt(step_done, state)`` writes a checkpoint.
    A non-finite loss or gradient skips the update, is reported with the batch's row ids, and aborts
    after ``cfg.max_consecutive_nonfinite`` in a row; checkpoints are only written after finite steps.
    """
    spec.model.train()
    consecutive, skipped = 0, 0
    for step in range(start_step, total):
        finite, metrics, row_ids = run_optimizer_step(acc, spec, cfg, step)
        if not finite:
            consecutive += 1
            skipped += 1
            all_ids = _gather_ids(acc, row_ids)
            log.warning(
                f"step {step + 1}: non-finite loss or gradient (loss={metrics['loss']}, "
                f"grad_norm={metrics['grad_norm']}); update skipped. Rows: {', '.join(all_ids)}"
            )
            log.event(step + 1, {"event": "nonfinite_skip", "row_ids": all_ids, **metrics})
            if consecutive >= cfg.max_consecutive_nonfinite:
                raise NonFiniteError(
                    f"{consecutive} consecutive steps had a non-finite loss or gradient (last rows: "
                    f"{', '.join(all_ids)}). Lower learning_rate, set max_grad_norm, check those rows, or use "
                    "fp32 (mixed_precision=no)."
                )
            continue
        consecutive = 0
        if (step + 1) % cfg.logging_steps == 0 or step + 1 == total:
            log.step(step + 1, {**metrics, **memory_metrics(), "skipped_steps": skipped})
        if cfg.save_steps and (step + 1) % cfg.save_steps == 0 and step + 1 < total:
            ckpt(step + 1, {"skipped_steps": skipped})
    return skipped


def _gather_ids(acc: Any, ids: list[str]) -> list[str]:
    if acc.num_processes == 1:
        return list(ids)
    from accelerate.utils import gather_object

    return [str(i) for i in gather_object(list(ids))]


def chunks(seq: Sequence[int], size: int) -> Iterator[list[int]]:
    for i in range(0, len(seq), size):
        yield list(seq[i : i + size])


def ensure_dir(path: str | Path) -> Path:
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    return p
