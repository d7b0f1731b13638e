"""Batch sources for the training loop: give this step's micro-batches for (rank, world), resume exactly.

Both sources have the same small interface, so the loop does not care where rows come from::

    batches = source.micro_batches(step)   # list[Batch]: this rank's micro-batches of optimizer step `step`
    state = source.state_dict()            # after the step: save with the checkpoint (one per rank)
    source.load_state_dict(state)          # on resume, before the first micro_batches call

- :class:`MapSource` — map-style rows (random access). Which rows a step uses is the loop's ``plan``,
  a pure function of the step (a fixed permutation per seed and epoch), so resume needs no state
  beyond the step; the source encodes the next steps ahead in worker processes.
- :class:`vlalign.data.stream.StreamSource` — streamed rows (``IterableDataset``): sharded by rank,
  shuffled through a seeded buffer per epoch, and resumed from a saved position.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from vlalign.data.collate import (
    EXTRA_BLOCKS,
    Batch,
    CollateConfig,
    Encoded,
    collate,
    encode_record,
)
from vlalign.data.workers import OrderedPool, in_worker, worker_state


@dataclass
class RecordEncoder:
    """One record → :class:`Encoded` (tokenised prompt and responses, preprocessed images), anywhere:
    in the training process or a worker. ``extra`` adds mDPO's corrupted-image block; KTO's
    mismatched block needs another row of a map-style dataset and is refused here."""

    processor: Any
    cfg: CollateConfig
    kind: str
    extra: str | None = None

    def __post_init__(self) -> None:
        if self.extra not in (None, "corrupted"):
            raise ValueError(f"extra block {self.extra!r} needs random access to other rows; use map-style data "
                             "(data.streaming=false) for it")

    def __call__(self, record: Any, row: int) -> Encoded:
        enc = encode_record(self.processor, record, row, self.cfg, self.kind)
        if self.extra is not None:
            EXTRA_BLOCKS[self.extra](_OneRow(self, record), row, enc)
        return enc


class _OneRow:
    """The slice of an EncodedDataset an extra-block function reads, for a single record."""

    def __init__(self, encoder: RecordEncoder, record: Any) -> None:
        self.processor, self.cfg, self.kind, self.records = encoder.processor, encoder.cfg, encoder.kind, _Any(record)


class _Any:
    def __init__(self, record: Any) -> None:
        self.record = record

    def __getitem__(self, i: int) -> Any:
        return self.record

    def __len__(self) -> int:
        return 1


# ---------------------------------------------------------------------------------------- map-style


def _encode_step(micro_indices: list[list[int]]) -> list[Batch]:
    """Worker task: one optimizer step's micro-batches, encoded and collated."""
    dataset = worker_state()["dataset"]
    if in_worker():
        dataset.cache_bytes = 0  # a worker's copy of the cache would grow in every worker
    return [dataset.batch(ix) for ix in micro_indices]


class MapSource:
    """Map-style rows by the loop's plan, encoded ``prefetch`` steps ahead in ``num_workers`` processes.

    ``plan(step)`` returns this rank's micro-batches of row indices for ``step`` (for the trainers:
    ``local_micro_batches(global_batch_indices(step, ...), rank, world, micro)``). With 0 workers the
    dataset encodes (and caches) in the training process, as before.
    """

    def __init__(self, dataset: Any, plan: Callable[[int], list[list[int]]], num_workers: int = 0,
                 prefetch: int = 2) -> None:
        self.dataset, self.plan, self.num_workers = dataset, plan, num_workers
        self.prefetch = prefetch
        self.next_step = 0
        self._pool: OrderedPool | None = None
        self._ahead: Iterator[list[Batch]] | None = None

    def _steps(self, start: int) -> Iterator[list[list[int]]]:
        step = start
        while True:
            yield self.plan(step)
            step += 1

    def micro_batches(self, step: int) -> list[Batch]:
        if self.num_workers == 0:
            self.next_step = step + 1
            return [self.dataset.batch(ix) for ix in self.plan(step)]
        if self._ahead is None or step != self.next_step:
            if self._pool is None:
                self._pool = OrderedPool(self.num_workers, {"dataset": self.dataset}, self.num_workers * self.prefetch)
            self._ahead = self._pool.imap(_encode_step, self._steps(step))
        self.next_step = step + 1
        return next(self._ahead)

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "map", "next_step": self.next_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != "map":
            raise ValueError(f"cannot resume a map-style source from a {state.get('kind')!r} state")
        self.next_step = int(state["next_step"])
        self._ahead = None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None


__all__ = ["MapSource", "RecordEncoder", "collate"]
