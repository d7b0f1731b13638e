"""Run folders that cannot be mixed up: a lock held for the run's life, a run id, fresh runs that refuse
to start on top of another run's checkpoints, and resumes that refuse a changed optimisation.

- ``<output_dir>/.vlalign.lock``: an exclusive ``flock`` held by the main process from start to finish,
  holding the pid, host, start time and run id. A second run in the same folder is refused with the
  holder's pid and start time. The kernel drops the lock when its process dies (even on SIGKILL), so a
  lock file left by a dead run is detected (its pid no longer runs that process) and taken over with a
  message.
- ``<output_dir>/run.json``: the run id (kept across resumes) and the start time of every attempt.
- ``resume: false`` in a folder that holds checkpoints is refused unless ``overwrite: true``, which
  first deletes them and the older run's outputs (metrics, final model, summary): a new run's
  keep-last-N pruning can then never delete its own checkpoints in favour of an older run's, and
  ``resume: true`` can never pick up the older run's checkpoints.
- resuming compares the checkpoint's config with the new one (:func:`resume_changes`) and refuses any
  difference that alters the optimisation unless ``resume_allow_changes`` names it.
"""

from __future__ import annotations

import datetime as _dt
import errno
import fcntl
import json
import os
import shutil
import socket
import uuid
from pathlib import Path
from typing import Any

import psutil

LOCK_FILE = ".vlalign.lock"
RUN_FILE = "run.json"
# what a run writes into its output_dir (deleted by overwrite=true; caches are keyed and kept)
RUN_OUTPUTS = ("final", "adapter", "metrics.jsonl", "summary.json", "metrics.json", "trainer_state.json")

# config keys that never change what is optimised (how the run is watched, saved or reported);
# everything else differing between a checkpoint and the resumed config is refused
SAFE_TO_CHANGE = {
    "output_dir", "resume", "overwrite", "resume_allow_changes", "progress", "logging_steps", "report_to",
    "save_steps", "save_total_limit", "eval_steps", "monitors", "max_consecutive_nonfinite",
    "release_freed_memory", "save_merged", "gold", "reference.cache_dir", "reference.batch_size",
    "data.eval_limit", "num_threads", "deterministic", "mixed_precision",
    # the global batch (per process × accumulation × processes) is checked by the data source itself,
    # so a resume may split the same global batch over a different number of processes
    "per_device_batch_size", "gradient_accumulation_steps",
    # which rows are trained on is checked by the data fingerprint (content, not path): a moved file
    # with the same rows resumes, a changed one is refused
    "data.train", "data.format", "data.on_bad_rows", "data.limit", "data.eval", "data.eval_fraction",
}


class RunFolderError(ValueError):
    """The output folder cannot be used for this run as configured; the message says why and what to do."""


def _now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def _process_alive(pid: int, started: float | None) -> bool:
    """Whether ``pid`` still runs the process that started at ``started`` (epoch s; pids are reused)."""
    try:
        proc = psutil.Process(pid)
        return started is None or abs(proc.create_time() - started) < 1.0
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return False


class RunLock:
    """An exclusive flock on ``<folder>/.vlalign.lock`` with the holder written inside."""

    def __init__(self, folder: Path, run_id: str) -> None:
        self.path = folder / LOCK_FILE
        self.run_id = run_id
        self.fd: int | None = None
        self.took_over: dict[str, Any] | None = None

    def acquire(self) -> RunLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_json(self.path)
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            raise RunFolderError(
                f"{self.path.parent} is in use by another run (pid {holder.get('pid', '?')} on "
                f"{holder.get('host', '?')}, run {holder.get('run_id', '?')}, started {holder.get('started', '?')}); "
                "two runs in one output_dir overwrite each other's checkpoints, metrics and final model. "
                "Wait for it to finish, stop it, or choose another output_dir"
            ) from None
        previous = _read_json(self.path)
        if previous.get("pid") and not _process_alive(int(previous["pid"]), previous.get("create_time")):
            self.took_over = previous
        me = psutil.Process()
        payload = {"pid": os.getpid(), "host": socket.gethostname(), "run_id": self.run_id, "started": _now(),
                   "create_time": me.create_time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(payload) + "\n").encode(), 0)
        os.fsync(fd)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.ftruncate(self.fd, 0)  # an empty lock file: nobody holds it
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        finally:
            os.close(self.fd)
            self.fd = None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text() or "{}")
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def checkpoint_folders(folder: Path) -> list[Path]:
    """Every ``checkpoint-*`` entry (complete or not) in ``folder``."""
    return sorted(p for p in folder.glob("checkpoint-*") if p.is_dir()) if folder.is_dir() else []


def clear_outputs(folder: Path) -> list[str]:
    """Delete the checkpoints and outputs of an earlier run in ``folder`` (overwrite=true); returns names."""
    removed = []
    for p in [*checkpoint_folders(folder), *(folder / name for name in RUN_OUTPUTS), *folder.glob("*.pt")]:
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
        else:
            continue
        removed.append(p.name)
    (folder / RUN_FILE).unlink(missing_ok=True)
    return removed


def open_folder(cfg: Any) -> tuple[RunLock, list[str]]:
    """Main process only: create the folder, take the lock, apply the fresh-run rules, write run.json.

    Returns the held lock and the messages to print (takeover of a stale lock, what overwrite deleted)."""
    folder = Path(cfg.output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    info = _read_json(folder / RUN_FILE)
    resuming = bool(cfg.resume)
    run_id = info.get("run_id") if resuming and info.get("run_id") else uuid.uuid4().hex[:12]
    lock = RunLock(folder, run_id).acquire()
    notes = []
    try:
        if lock.took_over:
            old = lock.took_over
            notes.append(f"{folder}: took over the lock of run {old.get('run_id', '?')} (pid {old.get('pid')}, started "
                         f"{old.get('started', '?')}), which is no longer running")
        if not resuming:
            existing = checkpoint_folders(folder)
            if existing and not cfg.overwrite:
                names = ", ".join(p.name for p in existing[:4]) + (" ..." if len(existing) > 4 else "")
                raise RunFolderError(
                    f"{folder} holds checkpoints of an earlier run ({names}) and this run has resume: false. A new run "
                    "there would mix its checkpoints with the old ones (keep-last-N pruning would delete the new ones; "
                    "a later resume would pick the old run up). Set resume=true to continue that run, overwrite=true "
                    "to delete its outputs and start over, or choose another output_dir"
                )
            if existing or cfg.overwrite:
                removed = clear_outputs(folder)
                if removed:
                    notes.append(f"{folder}: overwrite=true deleted the earlier run's {', '.join(removed)}")
            info = {}
        attempts = [*info.get("attempts", []), {"started": _now(), "pid": os.getpid(), "resume": resuming}]
        (folder / RUN_FILE).write_text(json.dumps({"run_id": run_id, "attempts": attempts}, indent=2) + "\n")
    except BaseException:
        lock.release()
        raise
    return lock, notes


def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flat(v, key + "."))
        else:
            out[key] = v
    return out


def _allowed(key: str, allowed: set[str]) -> bool:
    parts = key.split(".")
    return any(".".join(parts[:i]) in allowed for i in range(1, len(parts) + 1))


def resume_changes(saved: dict[str, Any], current: dict[str, Any], allow: list[str],
                   defaults: dict[str, Any] | None = None) -> list[str]:
    """``key: old -> new`` for every config difference that alters the optimisation and is not allowed.

    A key the saved config lacks is no difference when the current value is that key's default
    (``defaults``, flattened): the checkpoint was written by a vlalign that did not have the option yet,
    and a new option's default keeps the behaviour the run had."""
    a, b, d = flat(saved), flat(current), defaults or {}
    allowed = SAFE_TO_CHANGE | set(allow)
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k) and not _allowed(k, allowed)
            and not (k not in a and k in d and d[k] == b.get(k))]


def config_defaults(cfg: Any) -> dict[str, Any]:
    """Every field's default of ``cfg``'s config class and of the classes of its nested sections, flattened
    like :func:`flat` (fields without a default are absent)."""
    from pydantic import BaseModel

    nested = {name for name in type(cfg).model_fields if isinstance(getattr(cfg, name), BaseModel)}
    dump = type(cfg).model_construct().model_dump(mode="json", warnings=False)
    out = flat({k: v for k, v in dump.items() if k not in nested})
    for name in nested:
        out.update({f"{name}.{k}": v for k, v in config_defaults(getattr(cfg, name)).items()})
    return out


def check_resume(state: dict[str, Any], cfg: Any, data_fingerprint: str, checkpoint: Path) -> None:
    """Refuse to resume ``checkpoint`` under a config or data that would change the optimisation."""
    problems = []
    saved_cfg = state.get("config")
    if saved_cfg is not None:
        problems += resume_changes(saved_cfg, cfg.model_dump(mode="json"), list(cfg.resume_allow_changes),
                                   config_defaults(cfg))
    saved_fp = state.get("data_fingerprint")
    if saved_fp and saved_fp != data_fingerprint and "data" not in cfg.resume_allow_changes:
        problems.append(f"training data: fingerprint {saved_fp} -> {data_fingerprint} (the rows differ)")
    if problems:
        keys = sorted({p.split(":")[0] if not p.startswith("training data") else "data" for p in problems})
        raise RunFolderError(
            f"resume from {checkpoint} refused: the run would not continue the same optimisation:\n  - "
            + "\n  - ".join(problems)
            + f"\nResume with the checkpoint's settings, allow the change explicitly "
            f"(resume_allow_changes=[{','.join(keys)}]), or start over (resume=false overwrite=true)"
        )
