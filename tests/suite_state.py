"""What the suite's global state starts from (threads, seed) and the learning probe, importable by tests.

A module of its own, not the conftest: the suite has two conftest.py files, and ``from conftest import``
resolves to whichever pytest loaded last. It imports torch only inside the probe, so the conftest can
import it before torch reads the thread settings.
"""

from __future__ import annotations

import json
import os

# WHY a fixed count: torch splits a CPU reduction into one chunk per thread, so the float sums of a
# training run, and with them its numbers, depend on the thread count. torch's default is the number of
# cores: a 64-core workstation would run every test with other numerics than CI's 2-core machine.
# VLALIGN_TEST_THREADS (default 2 = CI's cores) lets scripts/learning_spread.py measure other counts.
TEST_THREADS = int(os.environ.get("VLALIGN_TEST_THREADS", "2"))
# The seed every test starts from (random, numpy, torch) and that the learning tests pass to their
# configs (`learning.seed`). 0 in every normal run; scripts/learning_spread.py sets it to measure how a
# learning test's effect spreads over seeds.
TEST_SEED = int(os.environ.get("VLALIGN_TEST_SEED", "0"))


def _kernels() -> str:
    import torch

    return torch.backends.cpu.get_cpu_capability()


class LearningProbe:
    """What a learning test asserts, recorded so that scripts/learning_spread.py can size the bound.

    ``above(name, value, bound)`` is ``value > bound`` (``below``: ``value < bound``); when
    ``VLALIGN_LEARNING_LOG`` names a file, each call also appends the value, the bound, the seed, the
    threads and torch's CPU kernels to it as one JSON line.
    """

    def __init__(self, test: str, seed: int) -> None:
        self.test, self.seed = test, seed

    def above(self, name: str, value: float, bound: float) -> bool:
        self._record(name, float(value), ">", bound)
        return float(value) > bound

    def below(self, name: str, value: float, bound: float) -> bool:
        self._record(name, float(value), "<", bound)
        return float(value) < bound

    def _record(self, name: str, value: float, op: str, bound: float) -> None:
        path = os.environ.get("VLALIGN_LEARNING_LOG")
        if not path:
            return
        row = {"test": self.test, "name": name, "value": value, "op": op, "bound": bound, "seed": self.seed,
               "threads": TEST_THREADS, "kernels": _kernels()}
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
