"""Replay of supervised rows beside the main training data (see :class:`~vlalign.trainers.configs.ReplayConfig`).

Training row ``r`` (a pair for DPO, a row for SFT) is paired with replay row ``perm[r mod n]``; the loss
adds the replay rows' NLL. Because the replay rows are a function of the training rows alone, every
property the loop guarantees for the main data (exact resume, 4×2 accumulation = 1×8, 2 processes =
1 process) holds for the replay term too.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import torch

from vlalign.data.collate import Batch, CollateConfig, EncodedDataset
from vlalign.data.validate import load_records
from vlalign.models.logprobs import response_logprobs
from vlalign.trainers.run import side_data


class Replay:
    """The replay rows, encoded once, and the fixed training-row → replay-row map."""

    def __init__(self, records: Sequence[Any], processor: Any, collate_cfg: CollateConfig, weight: float, seed: int) -> None:
        self.dataset = EncodedDataset(records, processor, collate_cfg, "sft")
        self.dataset.check_all()  # every unusable row at once, before training starts
        self.weight = weight
        self.perm = list(range(len(self.dataset)))
        random.Random(seed).shuffle(self.perm)

    def rows_for(self, train_rows: Sequence[int]) -> list[int]:
        """Replay row of each training row: ``perm[r mod n]``."""
        return [self.perm[r % len(self.perm)] for r in train_rows]

    def batch(self, train_rows: Sequence[int]) -> Batch:
        return self.dataset.batch(self.rows_for(train_rows))

    def response_tokens(self, train_rows: Sequence[int]) -> int:
        """Response tokens of the replay rows of ``train_rows`` (SFT counts them in its global token total)."""
        return sum(len(self.dataset.encode(i).responses[0]) for i in self.rows_for(train_rows))


def replay_nll(model: Any, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row NLL of the replay rows: (token sum (B,), token count (B,))."""
    logps, mask = response_logprobs(model, batch.inputs, batch.response_mask)  # (B, T), (B, T)
    return -(logps * mask).sum(-1), mask.sum(-1)


def build_replay(cfg: Any, processor: Any, collate_cfg: CollateConfig, log: Any = None) -> Replay | None:
    """The run's :class:`Replay` from ``cfg.replay`` (None when ``replay.train`` is unset). Bad rows
    fail like the main data does: one error naming the file, row and field (``data.on_bad_rows``)."""
    rc = cfg.replay
    if rc.train is None:
        return None
    # the replay file with the loading options of data: (image limits, network, cache, bad-row policy);
    # its own format, and none of the training source's split/subset/revision/format options
    result = load_records(side_data(cfg.data, rc.train, "replay", format=rc.format, format_options={}, split=None,
                                    subset=None, revision=None, image_root=None))
    records = result.records[: rc.limit] if rc.limit else result.records
    if not records:
        raise ValueError(f"replay.train {rc.train}: no usable rows (rows: {result.n_rows}, bad: {result.n_bad_rows})")
    missing = [r.id for r in records if getattr(r, "reference", None) is None]
    if missing:
        raise ValueError(f"replay.train {rc.train}: {len(missing)} rows (first: {missing[:5]}) have no `reference` "
                         "answer to replay; replay rows are SFT rows (prompt + reference): add the field, or point "
                         "replay.train at SFT data")  # fmt: skip
    if log is not None:
        log.info(f"replay: {len(records)} rows from {rc.train}, weight {rc.weight}")
    return Replay(records, processor, collate_cfg, rc.weight, cfg.seed)
