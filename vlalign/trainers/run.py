"""The run around the optimizer step, the same for every trainer (SFT, DPO, reward/cost models, CLIP, RL).

A trainer's file reads top to bottom::

    run = start_run(cfg)                       # folder lock, accelerator, data, model, optimizer, resume
    ...                                        # its own datasets / reward sources / reference
    try:
        for step in run.steps():
            ...                                # its loop body (a micro-batch loss; or rollout → score → advantages)
            outcome = run.update(batches, loss_fn, counts)   # one optimizer step (vlalign.trainers.step)
            if run.end_step(step, metrics, outcome.finite):  # eval, monitors, log, checkpoint
                break
    finally:
        run.close()
    return run.finish()                        # final/ (+ adapter/), summary.json

The pieces of ``start_run`` are plain functions (:func:`open_run`, :func:`build_run`, :func:`resume_run`)
so that a trainer that needs something between them (the RL trainers' frozen reference copy and
critics, DPO's reference cache scored before any checkpoint is restored) calls them in order itself.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import DistributedType

from vlalign.config import save_config
from vlalign.hub import push_run
from vlalign.monitors import MonitorSet
from vlalign.trainers import checkpoint as ckpt
from vlalign.trainers.common import (
    apply_determinism,
    build_optimizer,
    build_scheduler,
    memory_metrics,
    setup_accelerator,
)
from vlalign.trainers.dist import Dist
from vlalign.trainers.logging import RunLogger
from vlalign.trainers.run_folder import RunFolderError, check_resume, open_folder
from vlalign.trainers.sources import IndexSource
from vlalign.trainers.step import NonFiniteGuard, Share, StepOutcome, optimizer_step


class _Interrupt(RuntimeError):
    """Raised after ``stop_after`` steps (tests, fault injection): ends the run abruptly, as a kill would."""


def data_fingerprint(records: Sequence[Any]) -> str:
    """Hash of the training rows as loaded (every field, in order): what a resume must train on too."""
    h = hashlib.sha256()
    for rec in records:
        row = asdict(rec) if is_dataclass(rec) else dict(vars(rec)) if hasattr(rec, "__dict__") else rec
        h.update(json.dumps(row, sort_keys=True, default=repr).encode())
        h.update(b"\n")
    return h.hexdigest()[:20]


class Run:
    """Everything a trainer's loop needs; built by :func:`start_run` (or its pieces)."""

    def __init__(self, cfg: Any, acc: Any, lock: Any, torch_state: Any, log: RunLogger) -> None:
        self.cfg, self.acc, self.lock, self.torch_state, self.log = cfg, acc, lock, torch_state, log
        self.dist = Dist(acc)
        self.output_dir = Path(cfg.output_dir)
        self.model: Any = None  # prepared (DDP/FSDP-wrapped) model
        self.modules: dict[str, Any] = {}  # further prepared, trained modules (critics)
        self.processor: Any = None
        self.records: list[Any] = []
        self.eval_records: list[Any] = []
        self.optimizer: Any = None
        self.scheduler: Any = None
        self.source: Any = None  # vlalign.trainers.sources.BatchSource
        self.total = 0
        self.start_step = 0
        self.state: dict[str, Any] = {}  # trainer state restored from a checkpoint ({} on a fresh run)
        self.data_fingerprint = ""
        self.monitors = MonitorSet(getattr(cfg, "monitors", []))
        self.guard = NonFiniteGuard(cfg.max_consecutive_nonfinite)
        self.evaluate: Callable[[], dict[str, float]] | None = None  # held-out metrics (eval/...)
        self.save_state: Callable[[], dict[str, Any]] = dict  # trainer-specific state for checkpoints
        self.last_good: Path | None = None
        self.stop_reason: str | None = None
        self.stop_after: int | None = None
        self.completed = 0
        self.closed = False

    @property
    def trained(self) -> list[Any]:
        """The prepared modules whose gradients accelerate synchronises."""
        return [self.model, *self.modules.values()]

    # ------------------------------------------------------------------------------------ the loop

    def steps(self) -> range:
        return range(self.start_step, self.total)

    def update(self, batches: Sequence[Any], loss_fn: Callable[[Any, dict[str, float]], Share],
               counts: Callable[[Any], dict[str, float]], where: int | None = None) -> StepOutcome:
        """One optimizer step (:func:`vlalign.trainers.step.optimizer_step`) checked by the non-finite guard."""
        outcome = optimizer_step(self, batches, loss_fn, counts)
        self.guard.check(outcome, where if where is not None else self.completed + 1, self.dist, self.log)
        return outcome

    def end_step(self, step: int, metrics: dict[str, float], finite: bool = True) -> bool:
        """After step ``step`` (0-based): evaluate, feed the monitors, log, checkpoint. True = stop the loop.

        A step whose update was skipped (non-finite) logs no metrics row (its event rows say what
        happened) and writes no checkpoint, in every trainer."""
        cfg, done = self.cfg, step + 1
        self.completed = done
        eval_now = self.evaluate is not None and cfg.eval_steps and (done % cfg.eval_steps == 0 or done == self.total)
        if eval_now:
            metrics.update(self.evaluate())
        alerts = self.monitors.update(done, metrics) if finite else []
        metrics.update(MonitorSet.as_metrics(alerts))
        if finite and (done % cfg.logging_steps == 0 or done == self.total or alerts or eval_now):
            # process CPU seconds so far (all threads): unlike wall time, barely moved by other jobs
            self.log.step(done, {**metrics, **memory_metrics(), "skipped_steps": self.guard.skipped,
                                 "time/process_cpu_s": time.process_time()})
        for alert in alerts:
            self.log.event(done, {"event": "monitor", **alert.to_dict()})
        decision = MonitorSet.decision(alerts)
        if decision in ("stop", "rollback"):
            self.stop_reason = f"{decision} by monitor(s) {', '.join(a.monitor for a in alerts)} at step {done}"
            if decision == "rollback":
                if self.last_good is not None:
                    ckpt.load_checkpoint(self.acc, self.last_good)
                    self.stop_reason += f"; weights restored from {self.last_good}"
                else:
                    self.stop_reason += "; no checkpoint to roll back to (set save_steps), weights kept"
            self.log.warning(self.stop_reason)
            return True
        if finite and cfg.save_steps and done % cfg.save_steps == 0 and done < self.total:
            self.last_good = self.checkpoint(done)
        if self.stop_after is not None and done >= self.start_step + self.stop_after:
            raise _Interrupt(f"stopped after {self.stop_after} steps (simulated kill)")
        return False

    # ------------------------------------------------------------------------------ checkpoints

    def trainer_state(self) -> dict[str, Any]:
        return {"skipped_steps": self.guard.skipped, "source": self.source.state_dict() if self.source else {},
                "config": self.cfg.model_dump(mode="json"), "data_fingerprint": self.data_fingerprint,
                **self.save_state()}

    def checkpoint(self, step: int) -> Path:
        needed = ckpt.state_bytes(*(self.acc.unwrap_model(m) for m in self.trained), self.optimizer)
        return ckpt.save_checkpoint(self.acc, self.output_dir, step, self.trainer_state(), self.cfg.save_total_limit,
                                    needed)

    # --------------------------------------------------------------------------------- the end

    def close(self) -> None:
        """Stop the progress bar, release the folder lock, restore the process's torch settings."""
        if self.closed:
            return
        self.closed = True
        self.log.close()
        if self.lock is not None:
            self.lock.release()
        self.torch_state.restore()

    def finish(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Save ``final/`` (LoRA: ``adapter/`` + merged ``final/``) and ``summary.json``; returns the summary
        (the same keys for every trainer). Call after the loop, with the lock still held."""
        try:
            saved = ckpt.save_final(self.acc, self.model, self.processor, self.output_dir,
                                    merge_lora=self.cfg.save_merged)
            summary = self.summary(saved, extra)
            if self.acc.is_main_process:  # model cards in final/ and adapter/; the upload when hub.push_to_hub
                push_run(self.cfg, self.output_dir, summary)
        finally:
            self.close()
        return summary

    def summary(self, saved: dict[str, str], extra: dict[str, Any] | None = None) -> dict[str, Any]:
        summary = {"steps": self.completed, "skipped_steps": self.guard.skipped, "stop_reason": self.stop_reason,
                   "alerts": [a.to_dict() for a in self.monitors.alerts], "saved": saved, **(extra or {})}
        if self.acc.is_main_process:
            ckpt.write_file(self.output_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        return summary


# ------------------------------------------------------------------------------------------ set-up


def open_run(cfg: Any, cls: type[Run] = Run) -> Run:
    """Accelerator (+ ``num_threads`` / ``deterministic``), then the output folder: lock, fresh-run rules,
    ``config.yaml``. A refusal on the main process is raised on every process."""
    torch_state = apply_determinism(cfg)
    acc = setup_accelerator(cfg)
    dist = Dist(acc)
    lock, notes, error = None, [], None
    if acc.is_main_process:
        try:
            lock, notes = open_folder(cfg)
            save_config(cfg, Path(cfg.output_dir) / "config.yaml")
            ckpt.remove_partial(cfg.output_dir)  # half-written checkpoints of a killed run are never resumed from
        except RunFolderError as exc:
            error = str(exc)
        except OSError as exc:  # e.g. a read-only or full file system
            error = (f"output_dir {cfg.output_dir} cannot be used: {exc.strerror or exc} ({exc.filename or ''}); "
                     "point output_dir at a writable folder with free space")
    error = dist.broadcast(error)
    if error is not None:
        torch_state.restore()
        raise RunFolderError(error)
    acc.wait_for_everyone()
    run = cls(cfg, acc, lock, torch_state, RunLogger(acc, cfg.output_dir, cfg))
    for note in notes:
        run.log.warning(note)
    return run


def load_train_records(cfg: Any) -> list[Any]:
    """Validated records of ``cfg.data.train`` (bad rows: error naming file/row/field, or skipped if asked)."""
    from vlalign.data.validate import load_records

    result = load_records(cfg.data.train, format=cfg.data.format, on_bad_rows=cfg.data.on_bad_rows)
    records = result.records
    if cfg.data.limit:
        records = records[: cfg.data.limit]
    if not records:
        raise ValueError(f"{cfg.data.train}: no usable records (rows: {result.n_rows}, bad: {result.n_bad_rows})")
    return records


def split_eval(cfg: Any, records: list[Any]) -> tuple[list[Any], list[Any]]:
    """(training rows, held-out rows): ``data.eval`` when set, else a seeded ``data.eval_fraction`` of the
    rows (taken out of training), else no held-out rows."""
    data = cfg.data
    if getattr(data, "eval", None):
        from vlalign.data.validate import load_records

        held = load_records(data.eval, format=data.format, on_bad_rows=data.on_bad_rows).records
    elif getattr(data, "eval_fraction", 0.0) > 0:
        n_eval = max(1, round(data.eval_fraction * len(records)))
        if n_eval >= len(records):
            raise ValueError(f"data.eval_fraction={data.eval_fraction} leaves no training rows out of {len(records)}")
        perm = torch.randperm(len(records), generator=torch.Generator().manual_seed(cfg.seed * 7_919 + 17)).tolist()
        chosen = set(perm[:n_eval])
        held = [r for i, r in enumerate(records) if i in chosen]
        records = [r for i, r in enumerate(records) if i not in chosen]
    else:
        held = []
    limit = getattr(data, "eval_limit", None)
    return records, held[:limit] if limit else held


def build_run(run: Run, model: Any, processor: Any, records: list[Any], *, accumulation: int,
              updates_per_step: int = 1, modules: dict[str, Any] | None = None,
              adjust_optimizer: Callable[[Any], None] | None = None) -> Run:
    """Optimizer over the model (+ ``modules``), schedule over every optimizer step, ``accelerator.prepare``,
    and the data source: ``per_device_batch_size`` rows per micro-batch, ``accumulation`` micro-batches
    per process per step (the supervised trainers: gradient_accumulation_steps; RL: 1 batch of prompts
    per rollout)."""
    cfg, acc = run.cfg, run.acc
    run.processor, run.records = processor, records
    run.data_fingerprint = data_fingerprint(records)
    run.source = IndexSource(len(records), cfg.per_device_batch_size, accumulation, acc.process_index,
                             acc.num_processes, cfg.seed)
    run.total = run.source.total_steps(cfg.max_steps, cfg.num_epochs)
    modules = dict(modules or {})
    if acc.distributed_type == DistributedType.FSDP:
        for m in (model, *modules.values()):
            prune_no_split_modules(m)
    trainable = torch.nn.ModuleDict({"model": model, **modules}) if modules else model
    optimizer = build_optimizer(trainable, cfg)
    if adjust_optimizer is not None:
        adjust_optimizer(optimizer)
    scheduler = build_scheduler(optimizer, cfg, run.total * updates_per_step)
    prepared = acc.prepare(model, *modules.values(), optimizer)
    run.model, run.optimizer = prepared[0], prepared[-1]
    run.modules = dict(zip(modules, prepared[1:-1], strict=True))
    run.scheduler = scheduler
    acc.register_for_checkpointing(scheduler)
    return run


def prune_no_split_modules(model: Any) -> None:
    """Keep only the ``_no_split_modules`` classes the model holds. FSDP's transformer-based auto-wrap
    (accelerate) fails on a listed class that is absent, and LLaVA lists CLIPTextEmbeddings (from the
    full CLIPModel) although it holds only the vision tower."""
    for m in model.modules():
        names = getattr(m, "_no_split_modules", None)
        if names:
            present = {type(x).__name__ for x in m.modules()}
            m._no_split_modules = [n for n in names if n in present]


def resume_run(run: Run) -> Run:
    """With ``resume: true``: restore the newest checkpoint that verifies (after checking that the config
    and the data would continue the same optimisation); then open the metrics log at that step."""
    cfg, acc = run.cfg, run.acc
    path = None
    if cfg.resume:
        path = run.dist.broadcast(ckpt.find_resumable(run.output_dir, run.log.warning) if acc.is_main_process else None)
    if path is not None:
        saved = json.loads((Path(path) / ckpt.STATE_FILE).read_text())
        check_resume(saved, cfg, run.data_fingerprint, Path(path))
        run.source.load_state_dict(saved.get("source", {}))
        run.state = ckpt.load_checkpoint(acc, path)
        run.start_step = int(run.state["step"])
        run.guard.skipped = int(run.state.get("skipped_steps", 0))
        run.last_good = Path(path)
    run.completed = run.start_step
    run.log.begin(run.total, run.start_step)
    if path is not None:
        run.log.info(f"resumed from {path} at step {run.start_step}/{run.total}")
    return run


def start_run(cfg: Any, records: list[Any] | None = None, wrap_model: Any = None, *,
              on_load: Callable[[Run, Any], None] | None = None,
              before_resume: Callable[[Run], None] | None = None) -> Run:
    """The supervised trainers' set-up: folder, accelerator, validated rows (and held-out rows), model
    (``wrap_model(model)`` e.g. adds a scalar head before the optimizer is built), optimizer, schedule,
    prepare, ``before_resume(run)`` (things that must see the weights as loaded, never a restored
    checkpoint: DPO's reference pass), resume. ``on_load(run, model)`` sees the freshly loaded model."""
    from vlalign.models.load import load_model

    run = open_run(cfg)
    try:
        rows = records if records is not None else load_train_records(cfg)  # bad data fails before the model load
        rows, run.eval_records = split_eval(cfg, list(rows))
        loaded = load_model(cfg.model)
        model = loaded.model if wrap_model is None else wrap_model(loaded.model)
        if on_load is not None:
            on_load(run, model)
        build_run(run, model, loaded.processor, rows, accumulation=cfg.gradient_accumulation_steps)
        if before_resume is not None:
            before_resume(run)
        return resume_run(run)
    except BaseException:
        run.close()
        raise


def finish_run(run: Run, skipped: int | None = None) -> dict[str, Any]:
    """Save the final model and a run summary; returns the summary (``skipped`` is ignored: the run counts)."""
    return run.finish()


def evaluate_sums(run: Run, dataset: Any, micro_step: Callable[[Any], Any], unit: Callable[[Any], float],
                  batch_size: int, prefix: str = "eval/") -> dict[str, float]:
    """Held-out means of a sum-style micro-step (no gradient): each process scores its share of the rows
    (every process runs the same number of forwards, as FSDP needs), sums are reduced over processes."""
    n, world, rank = len(dataset), run.dist.world, run.dist.rank
    mine = list(range(rank, n, world))
    n_batches = math.ceil(math.ceil(n / world) / batch_size)  # the same count on every process
    sums: dict[str, float] = {"loss": 0.0, "units": 0.0}
    model = run.model
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for b in range(n_batches):
                ix = mine[b * batch_size : (b + 1) * batch_size]
                weight = 1.0 if ix else 0.0  # a process out of rows runs a padding forward, counted 0
                batch = dataset.batch(ix or [0]).to(run.acc.device)
                res = micro_step(batch)
                sums["loss"] += weight * float(res.loss_sum)
                sums["units"] += weight * float(unit(batch))
                for k, v in res.metric_sums.items():
                    sums[k] = sums.get(k, 0.0) + weight * float(v)
    finally:
        model.train(was_training)
    total = run.dist.sum_dict(sums)
    units = max(total.pop("units"), 1.0)
    return {f"{prefix}{k}": v / units for k, v in total.items()}
