"""One optimizer step, the same for every trainer: accumulate, normalise globally, guard, clip, step.

A trainer hands :func:`optimizer_step` this process's micro-batches of the step, a ``counts(batch)``
function (how many loss units of each kind a micro-batch holds: response tokens, sequences, pairs,
rows...) and a ``loss_fn(batch, totals)``. The core sums the counts over ALL micro-batches and ALL
processes first (one all-reduce), then ``loss_fn`` returns the micro-batch's *share* of the global
mean loss — its sum divided by the global count. The shares of all micro-batches on all processes
add up to exactly the loss of the whole global batch, so 4 micro-batches × 2 equal 1 × 8 and
2 processes equal 1 process, for token-mean losses with ragged lengths too. (accelerate divides
each backward by ``gradient_accumulation_steps`` and DDP/FSDP average gradients over processes; the
core multiplies both back.)

Non-finite steps: the loss and the gradient norm are checked on every process and the verdict is
all-reduced, so every process skips the same steps. A skipped step applies nothing: neither the
optimizer NOR the learning-rate schedule steps. WHY not the schedule: the schedule is a function of
the number of updates actually applied, as in accelerate and the HF Trainer when an fp16 loss scaler
skips an overflowing step; stepping it would shorten the warm-up (or the decay) of the updates that
do happen. :class:`NonFiniteGuard` counts skips, reports the rows, and raises :class:`NonFiniteError`
after ``max_consecutive_nonfinite`` in a row — the same exception and message in every trainer.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

from vlalign.trainers.dist import Dist


@dataclass
class StepResult:
    """What a sum-style micro-step returns (SFT, DPO, reward models, CLIP): ``loss_sum`` is the SUM of
    per-unit losses (graph attached); ``metric_sums`` are sums over units; ``tokens`` counts the
    tokens processed (throughput only)."""

    loss_sum: torch.Tensor
    metric_sums: dict[str, torch.Tensor] = field(default_factory=dict)
    tokens: int = 0


class Share(NamedTuple):
    """A micro-batch's share of the step: its part of the global mean loss (graph attached) and of each
    global mean metric (summing the shares of every micro-batch on every process gives the means)."""

    loss: torch.Tensor
    metrics: dict[str, float | torch.Tensor]
    tokens: int = 0


LossFn = Callable[[Any, dict[str, float]], Share]  # (micro-batch, global unit counts) -> its share


def mean_over(unit: str, micro_step: Callable[[Any], StepResult]) -> LossFn:
    """Adapt a sum-style micro-step to the core: divide its sums by the global count of ``unit``."""

    def loss_fn(batch: Any, totals: dict[str, float]) -> Share:
        res = micro_step(batch)
        n = max(totals[unit], 1.0)
        return Share(res.loss_sum / n, {k: v.detach() / n for k, v in res.metric_sums.items()}, res.tokens)

    return loss_fn


class NonFiniteError(RuntimeError):
    """Too many consecutive non-finite steps: the run cannot recover by skipping batches."""


@dataclass
class StepOutcome:
    finite: bool
    metrics: dict[str, float]
    row_ids: list[str]  # ids of this process's rows (reported when the step is skipped)


def _params(optimizer: Any) -> list[torch.nn.Parameter]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def optimizer_step(run: Any, batches: Sequence[Any], loss_fn: Callable[[Any, dict[str, float]], Share],
                   counts: Callable[[Any], dict[str, float]]) -> StepOutcome:
    """One optimizer step over this process's ``batches`` (exactly ``gradient_accumulation_steps``).

    ``run`` provides ``acc``, ``cfg``, ``optimizer``, ``scheduler``, ``dist`` and ``trained`` (the
    prepared modules whose gradients accelerate synchronises). Returns whether the step was applied,
    its metrics (global means) and this process's row ids.
    """
    acc, cfg, dist = run.acc, run.cfg, run.dist
    if len(batches) != cfg.gradient_accumulation_steps:
        raise ValueError(f"one optimizer step takes gradient_accumulation_steps={cfg.gradient_accumulation_steps} "
                         f"micro-batches per process, got {len(batches)}")
    local: dict[str, float] = {}
    for b in batches:
        for k, v in counts(b).items():
            local[k] = local.get(k, 0.0) + float(v)
    totals = dist.sum_dict(local)
    scale = cfg.gradient_accumulation_steps * dist.world  # undo accelerate's ÷accumulation and DDP's mean

    t0 = time.perf_counter()
    loss_total, tokens, sums = 0.0, 0, {}
    for batch in batches:
        # autocast here (not only inside the wrapped forward): heads applied outside model.forward
        # (e.g. the output projection of the selected response positions) must see the same precision
        with acc.accumulate(*run.trained), acc.autocast():
            share = loss_fn(batch.to(acc.device), totals)
            acc.backward(share.loss * scale)
        loss_total += float(share.loss.detach())
        tokens += int(share.tokens)
        for k, v in share.metrics.items():
            sums[k] = sums.get(k, 0.0) + float(v)
    max_norm = cfg.max_grad_norm if cfg.max_grad_norm else float("inf")
    grad_norm = acc.clip_grad_norm_(_params(run.optimizer), max_norm)
    # DeepSpeed clips inside its engine and may report no norm: unknown counts as finite (logged NaN)
    norm_known = grad_norm is not None
    if hasattr(grad_norm, "full_tensor"):  # FSDP2: a replicated DTensor
        grad_norm = grad_norm.full_tensor()
    grad_norm = float(grad_norm) if norm_known else float("nan")

    reduced = dist.sum_dict({"loss": loss_total, "tokens": float(tokens), **{f"m/{k}": v for k, v in sums.items()}})
    bad = not math.isfinite(reduced["loss"]) or (norm_known and not math.isfinite(grad_norm))
    finite = not dist.any(bad)
    if finite:
        run.optimizer.step()
        run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    dt = max(time.perf_counter() - t0, 1e-9)

    metrics = {"loss": reduced["loss"], **{k[2:]: v for k, v in reduced.items() if k.startswith("m/")}}
    metrics.update({f"{unit}_per_s": n / dt for unit, n in totals.items()})
    metrics.update(grad_norm=grad_norm, lr=run.scheduler.get_last_lr()[0], tokens_per_s=reduced["tokens"] / dt,
                   step_time_s=dt)
    row_ids = [str(i) for b in batches for i in getattr(b, "ids", [])]
    return StepOutcome(finite, metrics, row_ids)


class NonFiniteGuard:
    """Counts skipped (non-finite) optimizer steps; reports each, aborts after too many in a row."""

    def __init__(self, limit: int, skipped: int = 0) -> None:
        self.limit, self.skipped, self.consecutive = limit, skipped, 0

    def check(self, outcome: StepOutcome, where: str, dist: Dist, log: Any) -> None:
        """Record ``outcome``; on a skipped step log it with every process's row ids, and raise
        :class:`NonFiniteError` at the limit."""
        if outcome.finite:
            self.consecutive = 0
            return
        self.consecutive += 1
        self.skipped += 1
        ids = [str(i) for i in dist.gather_objects(outcome.row_ids)]
        m = outcome.metrics
        log.warning(f"{where}: non-finite loss or gradient (loss={m['loss']}, grad_norm={m['grad_norm']}); "
                    f"update skipped (optimizer and lr schedule not stepped). Rows: {', '.join(ids) or '-'}")
        log.event(where, {"event": "nonfinite_skip", "row_ids": ids, **m})
        if self.consecutive >= self.limit:
            raise NonFiniteError(
                f"{self.consecutive} consecutive steps had a non-finite loss or gradient (last rows: "
                f"{', '.join(ids) or '-'}). Lower learning_rate, set max_grad_norm, check those rows and the reward "
                "source, or use fp32 (mixed_precision=no)."
            )
