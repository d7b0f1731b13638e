"""Ordered work in worker processes: tokenisation and image preprocessing off the training process.

:class:`OrderedPool` maps a function over an iterable in ``num_workers`` forked processes and yields the
results in input order, with at most ``window`` items in flight — so a streamed input is never read
ahead without bound, and the output is the same sequence whatever the number of workers (which is what
makes resume exact). ``num_workers=0`` runs in the calling process.

Why not ``torch.utils.data.DataLoader`` workers: a DataLoader worker gets a copy of the dataset when it
starts and cannot be fed new rows, so a stream would have to be split between workers by shard, and
its order (and the position to resume from) would then depend on the number of workers. Here the
training process reads and orders the rows; workers only do the expensive, per-row part. Like
DataLoader workers, they fork from the training process and run torch with one thread each.
"""

from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

import torch

_STATE: dict[str, Any] = {}  # what the worker functions use, inherited at fork


def _init_worker(state: dict[str, Any]) -> None:
    torch.set_num_threads(1)
    _STATE.clear()
    _STATE.update(state, in_worker=True)


def in_worker() -> bool:
    """True inside a worker process (its copies of the parent's objects are private to it)."""
    return bool(_STATE.get("in_worker"))


def worker_state() -> dict[str, Any]:
    """The state given to :class:`OrderedPool` (in a worker), or set by :func:`set_local_state` (inline)."""
    return _STATE


def set_local_state(state: dict[str, Any]) -> None:
    _STATE.clear()
    _STATE.update(state)


class OrderedPool:
    """``imap`` in forked workers with bounded read-ahead; results in input order."""

    def __init__(self, num_workers: int, state: dict[str, Any], window: int | None = None) -> None:
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.num_workers = num_workers
        self.window = window or max(2, 2 * num_workers)
        self.state = state
        self._pool: ProcessPoolExecutor | None = None
        if num_workers:
            ctx = multiprocessing.get_context("fork")
            self._pool = ProcessPoolExecutor(num_workers, mp_context=ctx, initializer=_init_worker,
                                             initargs=(state,))

    def imap(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[Any]:
        if self._pool is None:
            set_local_state(self.state)
            for item in items:
                yield fn(item)
            return
        pending: deque[Future] = deque()
        source = iter(items)
        exhausted = False
        while True:
            while not exhausted and len(pending) < self.window:
                try:
                    pending.append(self._pool.submit(fn, next(source)))
                except StopIteration:
                    exhausted = True
            if not pending:
                return
            yield pending.popleft().result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> OrderedPool:  # noqa: PYI034 (typing.Self needs Python 3.11; we support 3.10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
