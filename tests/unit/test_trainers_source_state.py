"""A checkpoint's data-source state holds every rank's position when they differ (a stream's read
position is per rank); each rank resumes from its own, and a different process count is refused."""

from __future__ import annotations

import pytest

from vlalign.trainers.run import rank_state


def test_each_rank_gets_its_own_state():
    saved = {"kind": "per_rank", "ranks": [{"kind": "stream", "rank": 0, "pos": 6}, {"kind": "stream", "rank": 1,
                                                                                      "pos": 7}]}
    assert rank_state(saved, 1, 2, "ckpt") == {"kind": "stream", "rank": 1, "pos": 7}
    assert rank_state(saved, 0, 2, "ckpt")["pos"] == 6


def test_a_shared_state_is_every_rank_s():
    shared = {"kind": "index", "num_rows": 8, "global_batch": 4, "seed": 0}
    assert rank_state(shared, 1, 2, "ckpt") is shared


def test_another_process_count_is_refused():
    saved = {"kind": "per_rank", "ranks": [{"rank": 0}, {"rank": 1}]}
    with pytest.raises(ValueError, match="saved by 2 processes and this run has 3"):
        rank_state(saved, 0, 3, "checkpoint-4")
