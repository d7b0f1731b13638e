"""Run logging: ``metrics.jsonl`` (one JSON object per logged step), accelerate trackers
(TensorBoard, W&B, ... when ``report_to`` is set) and a rich progress bar on the console.

Only the main process writes; every line carries the optimizer step so curves from resumed runs
line up (a resumed run appends to the same file).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any


class RunLogger:
    """Created at the start of a run (console messages work at once); :meth:`begin` then opens the
    metrics log at the step the run starts from and shows the progress bar."""

    def __init__(self, acc: Any, output_dir: str | Path, cfg: Any) -> None:
        self.acc = acc
        self.path = Path(output_dir) / "metrics.jsonl"
        self.main = acc.is_main_process
        self.trackers = bool(getattr(cfg, "report_to", None))
        self.progress = bool(getattr(cfg, "progress", False))
        self.output_dir, self.cfg = Path(output_dir), cfg
        self.t0 = time.time()
        self._bar = None

    def begin(self, total: int, start: int) -> RunLogger:
        """Keep the logged rows up to step ``start`` (a fresh run: none) and start the progress bar."""
        if self.main and self.path.exists():
            self._truncate_after(start)
        if self.trackers:
            self.acc.init_trackers(self.output_dir.name, config=_flat(self.cfg.model_dump(mode="json")))
        if self.main and self.progress:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"), transient=False,
            )
            self._task = self._bar.add_task("train", total=total, completed=start, info="")
            self._bar.start()
        return self

    def step(self, step: int, metrics: dict[str, float]) -> None:
        """Record one optimizer step's metrics (main process only writes)."""
        if self.trackers:
            self.acc.log(metrics, step=step)
        if not self.main:
            return
        self._write({"step": step, "time_s": round(time.time() - self.t0, 3), **metrics})
        if self._bar is not None:
            info = f"loss {metrics.get('loss', float('nan')):.4f}"
            if "accuracy" in metrics:
                info += f"  acc {metrics['accuracy']:.2f}"
            self._bar.update(self._task, completed=step, info=info)

    def event(self, step: int, payload: dict[str, Any]) -> None:
        """An event row (non-finite skip, monitor alert, evaluation...) at ``step``."""
        if self.main:
            self._write({"step": step, **payload})

    def warning(self, message: str) -> None:
        if self.main:
            print(f"warning: {message}", file=sys.stderr, flush=True)

    def info(self, message: str) -> None:
        if self.main:
            print(message, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
        if self.trackers:
            self.acc.end_training()

    def _truncate_after(self, step: int) -> None:
        """Drop rows logged after step ``step`` (resume: those steps are about to be redone), and any torn
        line a killed run left (named in a warning)."""
        rows = parse_metrics_lines(self.path, self.warning)
        keep = [json.dumps(r) for r in rows if isinstance(r.get("step"), int) and r["step"] <= step]
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in keep))
        os.replace(tmp, self.path)

    def _write(self, row: dict[str, Any]) -> None:
        line = json.dumps(row) + "\n"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as fh:
                fh.write(line)
        except OSError as exc:  # disk full, read-only: one clear message, not a traceback
            from vlalign.trainers.checkpoint import write_error

            raise write_error(exc, self.path, len(line)) from exc


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config → flat {a.b: scalar} (trackers such as TensorBoard hparams want scalars)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


def parse_metrics_lines(path: Path, warn: Any = None) -> list[dict[str, Any]]:
    """The rows of a metrics JSONL file; a line that is not a JSON object (a torn last line written by a
    killed run, or damage in the middle) is skipped and named in ``warn(message)``."""
    rows = []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise TypeError("not a JSON object")
        except (ValueError, TypeError) as exc:
            where = "its last line (torn: the writing run was killed)" if i == len(lines) - 1 else f"line {i + 1}"
            if warn is not None:
                warn(f"{path}: skipped {where}, which is not a JSON row ({exc})")
            continue
        rows.append(row)
    return rows


def read_metrics(output_dir: str | Path) -> list[dict[str, Any]]:
    """All rows of ``metrics.jsonl`` (for tests, plots and monitors); torn lines are skipped with a warning."""
    import warnings

    p = Path(output_dir) / "metrics.jsonl"
    return parse_metrics_lines(p, lambda m: warnings.warn(m, stacklevel=2)) if p.exists() else []
