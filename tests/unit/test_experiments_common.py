"""Small helpers shared by the experiment recipes (vlalign/experiments/common.py)."""

from __future__ import annotations

import json

from vlalign.experiments.common import run_once


def test_run_once_trains_then_reuses_a_finished_run(tmp_path):
    calls = []

    def train():
        calls.append(1)
        (tmp_path / "final").mkdir(exist_ok=True)
        return {"seconds": 1.5, "alerts": 0}

    assert run_once(tmp_path, train) == {"seconds": 1.5, "alerts": 0}
    assert json.loads((tmp_path / "train.json").read_text()) == {"seconds": 1.5, "alerts": 0}
    assert run_once(tmp_path, train) == {"seconds": 1.5, "alerts": 0, "reused": True}
    assert len(calls) == 1  # the second call read train.json instead of training again


def test_run_once_retrains_when_the_model_is_missing(tmp_path):
    """A train.json without final/ (the run died while saving) is not taken for a finished run."""
    (tmp_path / "train.json").write_text('{"seconds": 9}')
    assert run_once(tmp_path, lambda: {"seconds": 2}) == {"seconds": 2}
    assert json.loads((tmp_path / "train.json").read_text()) == {"seconds": 2}
