"""Active learning that runs: a background job retrains a reward model on the labels so far every N new
labels, scores every item with it, and the ``active`` queue re-ranks by those scores.

One round (:meth:`Learner.run_once`): majority-vote the judgements into preference pairs (the export's
rules, disabled annotators left out), train a Bradley–Terry reward model from the configured backbone
(``vlalign.trainers.reward_model.train_reward_model``), score (first, second) of every item, store
the scores with the round's id, and tell the queue to re-rank. A round runs in one background thread
while the server keeps serving; each round is recorded in ``model_runs`` (labels used, steps, time,
outcome), a failed round leaves the previous scores in place.

With the tiny models on a CPU a round takes seconds; on a real backbone give it a GPU machine or a
long ``every``.
"""

from __future__ import annotations

import threading
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from vlalign.annotate.export import export_preferences, store_images, write_export
from vlalign.annotate.session import Project
from vlalign.config.base import parse_overrides
from vlalign.data.records import PreferenceRecord
from vlalign.rewards.learned import load_reward_model
from vlalign.trainers.reward_model import RewardModelConfig, train_reward_model

DEFAULTS: dict[str, Any] = {"max_steps": 20, "per_device_batch_size": 8, "learning_rate": 1e-3,
                            "lr_scheduler": "constant", "progress": False, "save_merged": True}
MIN_PAIRS = 2


class Learner:
    def __init__(self, project: Project, workdir: str | Path, base_model: str, every: int,
                 options: list[str] | None = None, threads: int = 1) -> None:
        if every < 1:
            raise ValueError(f"retrain every N labels needs N >= 1, got {every}")
        self.project, self.workdir, self.base_model, self.every = project, Path(workdir), base_model, every
        self.overrides = parse_overrides(options or [])
        self.threads = threads
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._trained_on = -1  # label count of the last round (-1: none yet)

    def labels(self) -> int:
        return self.project.queue.progress()["votes"]

    def notify(self, _project: Project | None = None) -> None:
        """After each stored judgement: wake the job once ``every`` new labels have come in."""
        if self.labels() - max(self._trained_on, 0) >= self.every:
            self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="vlalign-learner", daemon=True)
        self._thread.start()
        self.notify()

    def stop(self, timeout: float = 60.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            self._wake.clear()
            if self._stop.is_set():
                return
            if self.labels() - max(self._trained_on, 0) >= self.every:
                self.run_once()

    def run_once(self) -> dict[str, Any]:
        """One round; returns what ``model_runs`` records for it."""
        store = self.project.store
        items = self.project.queue.items
        records, _report = export_preferences(items, store.judgements())
        n_labels = self.labels()
        run_id = store.start_model_run(n_labels)
        t0 = time.perf_counter()
        try:
            if len(records) < MIN_PAIRS:
                detail = {"skipped": f"{len(records)} decided pairs; a reward model needs >= {MIN_PAIRS}"}
                store.finish_model_run(run_id, "skipped", detail)
                return {"status": "skipped", **detail}
            detail = self._train_and_score(run_id, records, items)
            detail["seconds"] = round(time.perf_counter() - t0, 2)
            store.finish_model_run(run_id, "ok", detail)
            self._trained_on = n_labels
            self.project.queue.rescore()
            return {"status": "ok", **detail}
        except Exception as exc:  # noqa: BLE001 (a failed round must not take the server down; it is recorded)
            detail = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-4000:]}
            store.finish_model_run(run_id, "failed", detail)
            return {"status": "failed", **detail}

    def _train_and_score(self, run_id: int, records: list[PreferenceRecord], items: list) -> dict[str, Any]:
        store = self.project.store
        round_dir = self.workdir / f"round_{run_id:04d}"
        train_file = write_export(records, round_dir / "train.jsonl", store_images(store))
        torch.set_num_threads(self.threads)
        settings = {**DEFAULTS, **self.overrides}
        # early rounds have few pairs: one optimizer step must not need more rows than there are
        settings["per_device_batch_size"] = min(int(settings["per_device_batch_size"]), len(records))
        cfg = RewardModelConfig(**{
            **settings, "output_dir": str(round_dir / "rm"), "seed": run_id,
            "model": {"name_or_path": self.base_model}, "data": {"train": str(train_file), "max_length": 160},
            "eval": {"data": None, "before_training": False}})
        metrics = train_reward_model(cfg)
        model = load_reward_model(round_dir / "rm")
        paths = store.image_files(self.workdir / "images", sorted({h for it in items for h in it.images}))
        pairs = [PreferenceRecord(it.item_id, [str(paths[h]) for h in it.images], it.prompt, it.responses[0],
                                  it.responses[1]) for it in items]
        scores = model.score_records(pairs, batch_size=16)  # (N, 2): reward of first, of second
        store.set_scores({it.item_id: (float(a), float(b)) for it, (a, b) in zip(items, scores.tolist())}, run_id)
        return {"pairs": len(records), "steps": metrics.get("steps"), "items_scored": len(items)}
