"""Where each optimizer step's data comes from: the narrow interface the training core asks, and its
map-style implementation (a seeded permutation of the rows, sliced by step and by process).

The core never iterates a dataset itself. Before step ``s`` it asks its source for THIS process's
micro-batches, and it saves/restores the source's position with checkpoints:

    class BatchSource(Protocol):
        def micro_batches(self, step: int) -> list[Batch]   # this process's share of step `step`,
                                                            # exactly gradient_accumulation_steps items
        def state_dict(self) -> dict                         # JSON-able position (stored in trainer_state.json)
        def load_state_dict(self, state: dict) -> None       # called once on resume, before the first step

Contract (what makes resume exact and N processes equal one): the global batch of step ``s`` is a
pure function of (seed, s) and of the source's saved position — never of how many processes split it
— and process r of W takes the r-th of W equal slices of it. :class:`IndexSource` is that function for
map-style data (every row addressable by index); a streaming source (an IterableDataset read in
order) implements the same three methods by reading the next global batch from its stream, keeping
rows r·b … (r+1)·b−1 of it, and saving its read position (file offset / shard + row) in
``state_dict`` so that a resumed run continues from the same row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch

from vlalign.data.loader import MapSource


class BatchSource(Protocol):
    def micro_batches(self, step: int) -> list[Any]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


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


class IndexSource:
    """Map-style source: step → global row indices (:func:`global_batch_indices`) → this process's
    slice → micro-batches of ``micro`` rows, each made into a batch by ``collate(indices)``."""

    def __init__(self, num_rows: int, micro: int, accumulation: int, rank: int, world: int, seed: int,
                 collate: Callable[[list[int]], Any] = list) -> None:
        self.num_rows, self.micro, self.accumulation = num_rows, micro, accumulation
        self.rank, self.world, self.seed, self.collate = rank, world, seed, collate
        self.global_batch = micro * accumulation * world
        self.steps_per_epoch = steps_per_epoch(num_rows, self.global_batch)

    def indices(self, step: int) -> list[list[int]]:
        """This process's micro-batches of step ``step`` as row indices."""
        rows = global_batch_indices(step, self.num_rows, self.global_batch, self.seed)
        return local_micro_batches(rows, self.rank, self.world, self.micro)

    def micro_batches(self, step: int) -> list[Any]:
        return [self.collate(ix) for ix in self.indices(step)]

    def total_steps(self, max_steps: int | None, num_epochs: float) -> int:
        return max_steps or max(1, int(num_epochs * self.steps_per_epoch))

    def state_dict(self) -> dict[str, Any]:
        # the position is the step itself (a pure function); what must match on resume is the data
        return {"kind": "index", "num_rows": self.num_rows, "global_batch": self.global_batch, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mine = self.state_dict()
        if state and state.get("kind") == "index":
            diff = {k: (state.get(k), v) for k, v in mine.items() if state.get(k) != v}
            if diff:
                changes = ", ".join(f"{k}: {a} -> {b}" for k, (a, b) in diff.items())
                raise ValueError(f"resume: the data order differs from the checkpoint's ({changes}); the batches "
                                 "would not continue where the run stopped. Resume with the same data, batch size, "
                                 "process count and seed, or start over with resume=false overwrite=true")


class PrefetchedIndexSource:
    """An :class:`IndexSource`'s plan, encoded a few steps ahead in worker processes
    (:class:`vlalign.data.loader.MapSource`): the same row indices per step, so the same batches as
    encoding in the training process; the position (and the resume check) stays the IndexSource's."""

    def __init__(self, index: IndexSource, dataset: Any, num_workers: int) -> None:
        self.index = index
        self.loader = MapSource(dataset, index.indices, num_workers)

    def micro_batches(self, step: int) -> list[Any]:
        return self.loader.micro_batches(step)

    def total_steps(self, max_steps: int | None, num_epochs: float) -> int:
        return self.index.total_steps(max_steps, num_epochs)

    def state_dict(self) -> dict[str, Any]:
        return self.index.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.index.load_state_dict(state)

    def close(self) -> None:
        self.loader.close()
