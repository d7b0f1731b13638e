"""Streaming source: exact mid-epoch resume (1 and 2 ranks), the same batches with or without workers,
bad rows skipped and listed, and streamed batches driving real DPO steps."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from vlalign.data.config import DataConfig
from vlalign.data.memory import RowTrimmer
from vlalign.data.stream import stream_source

COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30)}


def write_stream_data(folder, n_files: int = 3, per_file: int = 10, bad: tuple[tuple[int, int], ...] = ((1, 3),)):
    """``n_files`` JSONL shards of canonical preference rows; the rows listed in ``bad`` (file, row) have
    chosen == rejected (a row error)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for name, rgb in COLOURS.items():
        Image.new("RGB", (32, 32), rgb).save(folder / f"{name}.png")
    names = list(COLOURS)
    for f in range(n_files):
        rows = []
        for r in range(per_file):
            good, wrong = names[(f + r) % 3], names[(f + r + 1) % 3]
            rejected = f"It is {good}." if (f, r) in bad else f"It is {wrong}."
            rows.append({"id": f"f{f}r{r}", "images": [f"{good}.png"], "prompt": "What colour?",
                         "chosen": f"It is {good}.", "rejected": rejected, "meta": {}})
        (folder / f"part-{f}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
    return folder


@pytest.fixture(scope="module")
def processor(tiny_model_dir):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_model_dir("llava"))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_stream_data(tmp_path_factory.mktemp("stream"))


def source(data_dir, processor, rank=0, world=1, workers=0, accum=2, **kw):
    cfg = DataConfig(train=str(data_dir), streaming=True, shuffle_buffer=8, on_bad_rows="skip",
                     num_workers=workers, max_length=256)
    return stream_source(cfg, processor, "pair", micro_batch=2, micro_batches_per_step=accum, rank=rank,
                         world=world, seed=3, **kw)


def run(src, steps):
    return [[b.ids for b in src.micro_batches(s)] for s in steps]


@pytest.mark.parametrize("world", [1, 2])
def test_resume_mid_epoch_gives_the_same_batches(data_dir, processor, world, tmp_path):
    # 30 rows, 1 bad → 29 good; per rank and step 2 x 2 = 4 records: with 1 rank an epoch is 7 steps and
    # the 9 steps cross into epoch 1; with 2 ranks each rank's epoch holds ~14-15 rows (3-4 steps).
    n_steps, cut = 9, (4 if world == 1 else 2)
    for rank in range(world):
        full = source(data_dir, processor, rank, world)
        expected = run(full, range(n_steps))
        full.close()
        first = source(data_dir, processor, rank, world, report_path=tmp_path / f"bad{rank}.jsonl")
        got = run(first, range(cut))
        state = json.loads(json.dumps(first.state_dict()))  # what a checkpoint stores survives JSON
        first.close()
        resumed = source(data_dir, processor, rank, world, workers=2)  # workers do not change the order
        resumed.load_state_dict(state)
        got += run(resumed, range(cut, n_steps))
        resumed.close()
        assert got == expected
        assert state["epoch"] == 0 and 0 < state["pos"]  # the cut really is mid-epoch
    if world == 2:  # the ranks share no row within an epoch
        a = {i for step in run(source(data_dir, processor, 0, 2), range(3)) for b in step for i in b}
        b = {i for step in run(source(data_dir, processor, 1, 2), range(3)) for b in step for i in b}
        assert a and b and not a & b


def test_bad_rows_are_skipped_and_listed(data_dir, processor, tmp_path):
    src = source(data_dir, processor, report_path=tmp_path / "bad.jsonl")
    ids = {i for step in run(src, range(8)) for b in step for i in b}  # 8 steps x 4 > 29: a whole epoch
    src.close()
    assert "f1r3" not in ids and len({i for i in ids}) == 29
    listed = [json.loads(line) for line in (tmp_path / "bad.jsonl").read_text().splitlines()]
    assert {(x["file"].rsplit("/", 1)[-1], x["row"], x["field"]) for x in listed} == {("part-1.jsonl", 3, "rejected")}


def test_error_mode_stops_at_the_bad_row(data_dir, processor):
    from vlalign.data.validate import DataError

    cfg = DataConfig(train=str(data_dir), streaming=True, shuffle_buffer=1, max_length=256)
    src = stream_source(cfg, processor, "pair", micro_batch=4, seed=0)
    with pytest.raises(DataError, match=r"part-1.jsonl:row 3: rejected: chosen and rejected are identical"):
        run(src, range(10))
    src.close()


def test_resume_refuses_a_different_world(data_dir, processor):
    state = source(data_dir, processor, 0, 2).state_dict()
    with pytest.raises(ValueError, match="same ranks"):
        source(data_dir, processor, 0, 1).load_state_dict(state)


def test_streamed_batches_train_dpo_steps(data_dir, processor, tiny_model_dir):
    """Two optimizer steps of SimPO (reference-free DPO) on streamed batches move the weights and keep
    the loss finite; the same steps with the stream resumed in between give bit-identical weights."""
    from transformers import AutoModelForImageTextToText

    from vlalign.models.logprobs import response_logprobs
    from vlalign.objectives.preference_registry import PREFERENCE_LOSSES
    from vlalign.trainers.dpo import dpo_micro_step

    def forward(model, inputs, mask, num_records):  # the plain batched pair forward: (N, T) log-probs, mask
        return response_logprobs(model, inputs, mask)

    base = AutoModelForImageTextToText.from_pretrained(tiny_model_dir("llava"))

    def train(src_factory, cut=None):
        torch.manual_seed(0)
        model = copy.deepcopy(base).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        src, losses = src_factory(), []
        for step in range(2):
            if step == cut:  # a fresh source resumed from the saved position
                state = src.state_dict()
                src.close()
                src = src_factory()
                src.load_state_dict(state)
            for batch in src.micro_batches(step):
                out = dpo_micro_step(model, batch, PREFERENCE_LOSSES.get("simpo"), {}, None, None, 0.0, forward)
                out.loss_sum.backward()
                losses.append(float(out.loss_sum.detach()))
            opt.step()
            opt.zero_grad()
        src.close()
        return model, losses

    model, losses = train(lambda: source(data_dir, processor, accum=1))
    again, losses2 = train(lambda: source(data_dir, processor, accum=1), cut=1)
    before = base
    assert all(torch.isfinite(torch.tensor(losses)))
    moved = max((p - q).abs().max().item() for p, q in zip(model.parameters(), before.parameters()))
    assert moved > 1e-4
    assert losses == losses2
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), again.parameters()))


def test_row_trimmer_trims_once_per_thousand_rows():
    calls = []
    trimmer = RowTrimmer(every=1000, trim=lambda: calls.append(trimmer.rows))
    for _ in range(250):  # 2000 rows in chunks of 8: the 1000th and 2000th rows cross a boundary
        trimmer.count(8)
    trimmer.count(999)  # 2999: no third boundary yet
    assert calls == [1000, 2000] and trimmer.trims == 2
    trimmer.count(1)
    assert calls == [1000, 2000, 3000]
    with pytest.raises(ValueError, match="every must be >= 1"):
        RowTrimmer(every=0)


def test_importing_vlalign_puts_arrow_on_the_system_allocator_unless_the_user_chose():
    import os
    import subprocess
    import sys

    code = "import vlalign.data.stream, pyarrow; print(pyarrow.default_memory_pool().backend_name)"
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    run = lambda e: subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True,
                                   check=True).stdout.strip()
    assert run(env) == "system"
    assert run({**env, "ARROW_DEFAULT_MEMORY_POOL": "mimalloc"}) == "mimalloc"
