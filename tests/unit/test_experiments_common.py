"""Small helpers shared by the experiment recipes (vlalign/experiments/base.py)."""

from __future__ import annotations

import json
from pathlib import Path

from vlalign.experiments.base import run_once


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


def test_with_absolute_images_resolves_a_relative_base(tmp_path, monkeypatch):
    """A relative --out (runs/demo) once wrote replay rows whose image paths were relative to the working
    directory, so loading them from the file's own folder failed; paths must come out absolute."""
    from types import SimpleNamespace

    from vlalign.experiments.base import with_absolute_images

    monkeypatch.chdir(tmp_path)
    recs = [SimpleNamespace(images=["images/a.png", "/abs/b.png"])]
    (out,) = with_absolute_images(recs, Path("runs/demo/data"))
    assert out.images == [str(tmp_path / "runs/demo/data/images/a.png"), "/abs/b.png"]
