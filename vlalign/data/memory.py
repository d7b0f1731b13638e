"""Keep a streaming pass's resident memory flat: Arrow on the system allocator, and the C heap's free pages
handed back to the OS every so many rows.

WHY: a streaming pass reads Parquet row groups (Arrow buffers) and makes one Python ``bytes`` object per
encoded image, tens of KB each — too small for glibc to serve with mmap, so they live in the heap. Nothing
is kept, yet the resident size keeps rising: pyarrow's default pool (mimalloc) and glibc's heap both
hold on to freed pages. Measured on the data-path benchmark (bench/data_path.py: 100k rows, 448-pixel JPEGs,
20 Parquet shards; reading the rows only): the process RSS rose 877 → 997 MiB from 10k to 50k rows with the
defaults, 824 → 938 MiB with Arrow on the system allocator alone, and stayed at 787 → 812 MiB with the
system allocator plus ``malloc_trim(0)`` every 1,000 rows. A trim costs about a millisecond.

Arrow's C++ default allocator is chosen once, when pyarrow loads, from ``ARROW_DEFAULT_MEMORY_POOL``
(switching ``pyarrow.set_memory_pool`` later does not reach the Parquet reader's buffers): ``import vlalign``
sets it to ``system`` unless the user chose one. Both settings are process-wide and change no result, only
which allocator serves Arrow's buffers and when glibc releases pages it no longer uses; where the C library
is not glibc the trim is a no-op.
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any

TRIM_EVERY_ROWS = 1000


@functools.cache
def glibc() -> Any:
    """The process's glibc (loaded once), or None where the C library is not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt, libc.malloc_trim  # noqa: B018 (glibc-only symbols: musl and others lack them)
    except (OSError, AttributeError):
        return None
    return libc


def trim_heap() -> bool:
    """Return freed memory to the OS: Arrow's default pool (``release_unused``: mimalloc/jemalloc keep freed
    pages otherwise) and glibc's heaps (``malloc_trim(0)``). False where the C library is not glibc."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()
    libc = glibc()
    return bool(libc.malloc_trim(0)) if libc is not None else False


class RowTrimmer:
    """Counts rows and trims the heap once every ``every`` rows (:func:`trim_heap`)."""

    def __init__(self, every: int = TRIM_EVERY_ROWS, trim: Any = trim_heap) -> None:
        if every < 1:
            raise ValueError(f"RowTrimmer: every must be >= 1, got {every}")
        self.every, self.trim, self.rows, self.trims = every, trim, 0, 0

    def count(self, rows: int = 1) -> None:
        before, self.rows = self.rows, self.rows + rows
        if self.rows // self.every > before // self.every:
            self.trim()
            self.trims += 1
