"""Run folders, caches and checkpoints that cannot silently mix runs up — the exact scenarios of the
fault report, as regression tests:

1. a fresh run in a folder holding an older run's higher-numbered checkpoints is refused (overwrite=true
   clears them; a resume then continues the new run, bit-identical to an uninterrupted one);
2. a second run in a folder in use is refused with the holder's pid and start time; a dead holder's
   lock is taken over with a message;
3. a resume whose reference cache went missing re-scores with the reference weights (never the trained
   policy), and a later run whose reference changed in place does not reuse the old cache;

plus the medium cases: resume with a changed learning rate or dataset is refused, the newest checkpoint
truncated or emptied falls back to the previous one, a full or read-only disk gives one clear message and
leaves no ``.tmp``, and a torn last line in ``metrics.jsonl`` does not break later runs."""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vlalign.trainers.configs import DPOConfig
from vlalign.trainers.logging import read_metrics
from vlalign.trainers.run_folder import RunFolderError


def cfg(model, data, out, **kw) -> DPOConfig:
    base = {"output_dir": str(out), "model": {"name_or_path": str(model)},
            "data": {"train": str(data), "max_length": 128}, "per_device_batch_size": 2, "max_steps": 6,
            "save_steps": 2, "save_total_limit": 2, "learning_rate": 2e-3, "warmup_steps": 2, "progress": False,
            "seed": 3, "forward": "batched"}
    return DPOConfig.model_validate({**base, **kw})


def train(c: DPOConfig, **kw):
    from vlalign.trainers.dpo import train_dpo

    return train_dpo(c, **kw)


def weights(folder) -> dict[str, torch.Tensor]:
    return load_file(Path(folder) / "final" / "model.safetensors")


def same_weights(a, b) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def llava(tiny_model_dir):
    return tiny_model_dir("llava")


@pytest.fixture(scope="module")
def reference_run(llava, trainer_data, tmp_path_factory):
    """The uninterrupted run (lr 2e-3) every interrupted scenario must reproduce exactly."""
    out = tmp_path_factory.mktemp("uninterrupted")
    train(cfg(llava, trainer_data[0], out))
    return out


def _killed(llava, data, out, **kw) -> None:
    """The run of ``reference_run``, stopped abruptly after step 5 (checkpoints at 2 and 4)."""
    from vlalign.trainers.run import _Interrupt

    with pytest.raises(_Interrupt):
        train(cfg(llava, data, out, **kw), stop_after=5)


# -------------------------------------------------------------------------- case 1: reused folder


def test_fresh_run_refused_in_folder_of_older_run_then_overwrite_and_resume_exact(llava, trainer_data, tmp_path,
                                                                                  reference_run):
    out = tmp_path / "run"
    # the older run: lr 1e-3, 10 steps, saved at 2, 4, 6, 8, keeping checkpoint-6 and checkpoint-8 — higher
    # than anything the new run (6 steps) writes
    train(cfg(llava, trainer_data[0], out, learning_rate=1e-3, max_steps=10))
    with pytest.raises(RunFolderError, match=r"holds checkpoints of an earlier run \(checkpoint-6, checkpoint-8\).*"
                                             r"overwrite=true"):
        train(cfg(llava, trainer_data[0], out))
    assert (out / "checkpoint-8").is_dir()  # refused before touching anything
    _killed(llava, trainer_data[0], out, overwrite=True)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    summary = train(cfg(llava, trainer_data[0], out, resume=True))
    assert summary["steps"] == 6
    assert same_weights(out, reference_run)  # the new run's lr 2e-3, continued from its own checkpoint-4
    saved = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    assert saved["config"]["learning_rate"] == 2e-3


def test_resume_with_changed_learning_rate_or_data_is_refused(llava, trainer_data, tmp_path):
    out = tmp_path / "run"
    _killed(llava, trainer_data[0], out)
    with pytest.raises(RunFolderError, match=r"(?s)learning_rate: 0.002 -> 0.003.*resume_allow_changes=\[learning_rate\]"):
        train(cfg(llava, trainer_data[0], out, resume=True, learning_rate=3e-3))
    other = tmp_path / "other.jsonl"  # the same file with one answer changed: other rows, same path length
    rows = trainer_data[0].read_text().splitlines()
    rows[0] = rows[0].replace("The image is red.", "It is red.")
    other.write_text("\n".join(rows) + "\n")
    shutil.copytree(trainer_data[0].parent / "images", tmp_path / "images")
    with pytest.raises(RunFolderError, match=r"training data: fingerprint .* \(the rows differ\)"):
        train(cfg(llava, other, out, resume=True))
    # an allowed change goes through
    summary = train(cfg(llava, trainer_data[0], out, resume=True, learning_rate=3e-3,
                        resume_allow_changes=["learning_rate"]))
    assert summary["steps"] == 6


# ----------------------------------------------------------------------- case 2: two runs at once


HOLD = """
import sys, time
from vlalign.trainers.run_folder import RunLock
RunLock(__import__("pathlib").Path(sys.argv[1]), "holder").acquire()
print("held", flush=True)
time.sleep(600)
"""


def test_second_run_in_a_folder_in_use_is_refused_and_a_dead_holders_lock_taken_over(llava, trainer_data, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunFolderError, match=rf"in use by another run \(pid {holder.pid} on .*started 20"):
            train(cfg(llava, trainer_data[0], out, max_steps=1, save_steps=0))
        assert not (out / "metrics.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()
    # the holder died without releasing: its lock file still names it, the kernel dropped the lock
    assert f'"pid": {holder.pid}' in (out / ".vlalign.lock").read_text()
    from vlalign.trainers.run_folder import open_folder

    lock, notes = open_folder(cfg(llava, trainer_data[0], out, max_steps=1, save_steps=0))
    lock.release()
    assert any(f"took over the lock of run holder (pid {holder.pid}" in n and "no longer running" in n for n in notes)


# ---------------------------------------------------------------------------- case 3: the reference cache


def test_resume_without_reference_cache_rescores_the_reference_not_the_policy(llava, trainer_data, tmp_path,
                                                                              reference_run):
    out = tmp_path / "run"
    _killed(llava, trainer_data[0], out)
    shutil.rmtree(out / "reference_cache")
    train(cfg(llava, trainer_data[0], out, resume=True))
    assert same_weights(out, reference_run)
    full = [(r["step"], r["kl_ref"], r["loss"]) for r in read_metrics(reference_run) if "kl_ref" in r]
    again = [(r["step"], r["kl_ref"], r["loss"]) for r in read_metrics(out) if "kl_ref" in r]
    assert again == full  # steps 5-6 after the resume scored against the true reference (kl_ref ≠ 0)
    assert all(kl != 0.0 for step, kl, _ in full if step > 2)


def test_reference_cache_is_keyed_by_the_weights_and_verified(llava, trainer_data, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(llava, model)
    cache = tmp_path / "cache"
    train(cfg(model, trainer_data[0], tmp_path / "a", max_steps=1, save_steps=0, reference={"cache_dir": str(cache)}))
    first = read_metrics(tmp_path / "a")[0]
    assert first["kl_ref"] == pytest.approx(0.0, abs=1e-6)  # policy = reference at step 1
    # the model is trained and saved over the same path: the old cache must not be used for it
    from transformers import AutoModelForImageTextToText

    m = AutoModelForImageTextToText.from_pretrained(model)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.01 * torch.randn_like(p))
    m.save_pretrained(model)
    capsys.readouterr()
    train(cfg(model, trainer_data[0], tmp_path / "b", max_steps=1, save_steps=0, reference={"cache_dir": str(cache)}))
    assert "scoring 8 rows with the reference model" in capsys.readouterr().err
    assert read_metrics(tmp_path / "b")[0]["kl_ref"] == pytest.approx(0.0, abs=1e-6)
    # a damaged cache file is detected, named and rebuilt
    newest = max(cache.glob("ref_logps-*.pt"), key=lambda p: p.stat().st_mtime)
    payload = torch.load(newest, weights_only=True)
    payload["table"][0][0] += 1.0
    torch.save(payload, newest)
    train(cfg(model, trainer_data[0], tmp_path / "c", max_steps=1, save_steps=0, reference={"cache_dir": str(cache)}))
    err = capsys.readouterr().err
    assert f"{newest} is corrupt" in err and "scoring 8 rows" in err


# ------------------------------------------------------------------------------ checkpoints and disk


@pytest.mark.parametrize("damage", ["model.safetensors", "optimizer.bin", "trainer_state.json"])
def test_corrupt_newest_checkpoint_falls_back_to_the_previous_one(llava, trainer_data, tmp_path, damage, capsys,
                                                                 reference_run):
    out = tmp_path / "run"
    _killed(llava, trainer_data[0], out)
    target = out / "checkpoint-4" / damage
    if damage == "trainer_state.json":
        target.write_text("")
    else:
        with open(target, "r+b") as fh:
            fh.truncate(target.stat().st_size // 2)
    capsys.readouterr()
    train(cfg(llava, trainer_data[0], out, resume=True))
    err = capsys.readouterr().err
    assert f"checkpoint {out / 'checkpoint-4'} is not usable: {damage}" in err
    assert f"resumed from {out / 'checkpoint-2'} at step 2/6" in err
    assert same_weights(out, reference_run)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_disk_full_or_read_only_gives_one_clear_error_and_no_tmp(llava, trainer_data, tmp_path, monkeypatch, code):
    from accelerate import Accelerator

    from vlalign.trainers.checkpoint import CheckpointError

    def failing(self, output_dir=None, **kw):
        Path(output_dir, "model.safetensors").write_bytes(b"x" * 1000)  # a half-written file
        raise OSError(code, "simulated")

    monkeypatch.setattr(Accelerator, "save_state", failing)
    out = tmp_path / "run"
    why = "No space left on device" if code == errno.ENOSPC else "the file system is read-only"
    with pytest.raises(CheckpointError, match=rf"could not write {out / 'checkpoint-2.tmp'}: {why}; .* MiB free "
                                              r"there, the save needs about .* MiB"):
        train(cfg(llava, trainer_data[0], out))
    assert not list(out.glob("*.tmp"))


def test_torn_metrics_line_does_not_break_later_runs(llava, trainer_data, tmp_path, capsys):
    out = tmp_path / "run"
    _killed(llava, trainer_data[0], out)
    with open(out / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 6, "loss": 0.69, "acc')  # a kill mid-write
    with pytest.warns(UserWarning, match="metrics.jsonl: skipped its last line"):
        read_metrics(out)
    capsys.readouterr()
    train(cfg(llava, trainer_data[0], out, resume=True))
    assert "metrics.jsonl: skipped its last line (torn" in capsys.readouterr().err
    assert [r["step"] for r in read_metrics(out) if "loss" in r and "event" not in r] == [1, 2, 3, 4, 5, 6]


def test_run_id_is_kept_across_resumes(llava, trainer_data, tmp_path):
    out = tmp_path / "run"
    _killed(llava, trainer_data[0], out)
    first = json.loads((out / "run.json").read_text())
    time.sleep(0.01)
    train(cfg(llava, trainer_data[0], out, resume=True))
    again = json.loads((out / "run.json").read_text())
    assert again["run_id"] == first["run_id"] and len(again["attempts"]) == 2
    assert (out / ".vlalign.lock").read_text() == ""  # released at the end
