"""Start and finish of every training run, as two plain functions the trainers call in order.

``start_run``: output dir + resolved config.yaml, accelerator + seed, model + processor (LoRA /
gradient checkpointing via the model loader), records (validated by the data loader), optimizer +
schedule, ``accelerator.prepare``, resume from the newest complete checkpoint, logger.
``finish_run``: final save (``final/``, LoRA adapter in ``adapter/``), ``summary.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlalign.config import save_config
from vlalign.hub import push_run
from vlalign.trainers import checkpoint as ckpt
from vlalign.trainers.common import build_optimizer, build_scheduler, setup_accelerator, total_steps
from vlalign.trainers.logging import RunLogger


@dataclass
class Run:
    cfg: Any
    acc: Any
    model: Any  # prepared (DDP/FSDP-wrapped) model
    processor: Any
    records: list[Any]
    optimizer: Any
    scheduler: Any
    total: int
    start_step: int
    state: dict[str, Any]  # trainer state restored from a checkpoint ({} on a fresh run)
    log: RunLogger
    output_dir: Path

    def checkpoint(self, step: int, state: dict[str, Any]) -> None:
        ckpt.save_checkpoint(self.acc, self.output_dir, step, state, self.cfg.save_total_limit)


def load_train_records(cfg: Any) -> list[Any]:
    """Validated records of ``cfg.data`` (bad rows: error naming file/row/field, or skipped if asked)."""
    from vlalign.data.validate import load_records

    result = load_records(cfg.data.train, format=cfg.data.format, on_bad_rows=cfg.data.on_bad_rows)
    records = result.records
    if cfg.data.limit:
        records = records[: cfg.data.limit]
    if not records:
        raise ValueError(f"{cfg.data.train}: no usable records (rows: {result.n_rows}, bad: {result.n_bad_rows})")
    return records


def start_run(cfg: Any, records: list[Any] | None = None, wrap_model: Any = None) -> Run:
    """``wrap_model(model) -> module``, when given, wraps the loaded model before the optimizer is
    built (e.g. a reward model's backbone + scalar head), so the wrapper's own parameters train too."""
    from vlalign.models.load import load_model

    out = Path(cfg.output_dir)
    acc = setup_accelerator(cfg)
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
        ckpt.remove_partial(out)  # half-written checkpoints of a killed run are never resumed from
    acc.wait_for_everyone()
    if records is None:
        records = load_train_records(cfg)  # bad data fails before the (slow) model load
    loaded = load_model(cfg.model)
    model = loaded.model if wrap_model is None else wrap_model(loaded.model)
    total = total_steps(cfg, len(records), acc.num_processes)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, total)
    model, optimizer = acc.prepare(model, optimizer)
    acc.register_for_checkpointing(scheduler)

    start, state = 0, {}
    if cfg.resume:
        latest = ckpt.latest_checkpoint(out)
        if latest is not None:
            state = ckpt.load_checkpoint(acc, latest)
            start = int(state["step"])
    log = RunLogger(acc, out, total, start, cfg.progress, cfg)
    if start:
        log.info(f"resumed from {out / f'checkpoint-{start}'} at step {start}/{total}")
    return Run(cfg, acc, model, loaded.processor, records, optimizer, scheduler, total, start, state, log, out)


def finish_run(run: Run, skipped: int) -> dict[str, Any]:
    """Save the final model and a run summary; returns the summary."""
    written = ckpt.save_final(run.acc, run.model, run.processor, run.output_dir, merge_lora=run.cfg.save_merged)
    summary = {"steps": run.total, "skipped_steps": skipped, "saved": written}
    if run.acc.is_main_process:
        (run.output_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    run.log.close()
    if run.acc.is_main_process:  # model cards in final/ and adapter/; the upload when hub.push_to_hub
        push_run(run.cfg, run.output_dir, summary)
    return summary
