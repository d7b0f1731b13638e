"""The few collective operations the trainers need, over accelerate (no hand-written distributed code).

WHY a small wrapper: every global quantity of a step — the token count a loss is normalised by, the
non-finite flag, a metric's mean, the mean episode cost a Lagrange multiplier moves on, the batch std of
a reward — must be the same number on every process and equal to what one process holding the whole
global batch would compute. These helpers reduce sums (never means of means) and gather small
per-row tensors in rank order, and are plain pass-throughs on one process.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch


class Dist:
    """Sums and gathers across the processes of an accelerate run (identity on one process)."""

    def __init__(self, acc: Any) -> None:
        self.acc = acc
        self.world = int(acc.num_processes)
        self.rank = int(acc.process_index)

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """Element-wise sum over processes of a float tensor (float64 on the way, returned on CPU)."""
        local = values.detach().to(torch.float64)
        if self.world == 1:
            return local.cpu()
        return self.acc.reduce(local.to(self.acc.device), reduction="sum").cpu()

    def sum_dict(self, values: Mapping[str, float | torch.Tensor]) -> dict[str, float]:
        """Sum over processes of named scalars; every process must pass the same keys."""
        keys = sorted(values)
        packed = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
        total = self.sum(packed)
        return {k: float(total[i]) for i, k in enumerate(keys)}

    def any(self, flag: bool) -> bool:
        """True when ``flag`` is true on at least one process."""
        return float(self.sum(torch.tensor([1.0 if flag else 0.0]))[0]) > 0

    def gather_objects(self, items: Sequence[Any]) -> list[Any]:
        """The lists of every process, concatenated in rank order (pickled: keep them small)."""
        if self.world == 1:
            return list(items)
        from accelerate.utils import gather_object

        return list(gather_object(list(items)))

    def gather_rows(self, rows: torch.Tensor) -> tuple[torch.Tensor, int]:
        """(every process's rows (N_global, ...) in rank order, offset of this process's first row)."""
        if self.world == 1:
            return rows.detach().cpu(), 0
        parts = self.gather_objects([rows.detach().cpu()])
        offset = sum(int(p.shape[0]) for p in parts[: self.rank])
        return torch.cat(parts), offset

    def broadcast(self, value: Any) -> Any:
        """The main process's ``value`` on every process."""
        if self.world == 1:
            return value
        from accelerate.utils import broadcast_object_list

        box = [value]
        broadcast_object_list(box, from_process=0)
        return box[0]


def global_masked_stats(dist: Dist, values: torch.Tensor, mask: torch.Tensor) -> tuple[float, float]:
    """(mean, Bessel-corrected variance) of the masked-in entries of ``values`` over EVERY process:
    two passes (mean first, then the squared deviations), as one process would compute them."""
    m = mask.to(torch.float64)
    v = values.detach().to(torch.float64)
    total = dist.sum(torch.stack([(v * m).sum(), m.sum()]))
    count = float(total[1])
    mean = float(total[0]) / max(count, 1.0)
    sq = float(dist.sum(((v - mean) ** 2 * m).sum().reshape(1))[0])
    return mean, sq / max(count - 1.0, 1.0)
