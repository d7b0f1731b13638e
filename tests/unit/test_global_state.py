"""The conftest's autouse fixture gives every test the same process-wide state, whatever ran before it.

The first test changes everything a test can leak; the second (after it in file order, and in any order
pytest-random-order or --reverse picks) must still see the start-up state. The learning probe records
what a learning test asserts, for scripts/learning_spread.py.
"""

from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path

import numpy as np
import torch
from suite_state import TEST_SEED, TEST_THREADS, LearningProbe

START_DIR = os.getcwd()


def _draws() -> tuple[float, float, float]:
    return random.random(), float(np.random.rand()), float(torch.rand(()))


def _expected_draws() -> tuple[float, float, float]:
    """What a test's first draws are when its generators were seeded with TEST_SEED at its start."""
    state = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    random.seed(TEST_SEED)
    np.random.seed(TEST_SEED)
    torch.manual_seed(TEST_SEED)
    want = _draws()
    random.setstate(state[0])
    np.random.set_state(state[1])
    torch.set_rng_state(state[2])
    return want


def _assert_start_up_state() -> None:
    assert torch.get_num_threads() == TEST_THREADS
    assert os.environ["OMP_NUM_THREADS"] == str(TEST_THREADS)  # subprocesses get the same count
    assert not torch.are_deterministic_algorithms_enabled()
    assert torch.get_default_dtype() == torch.float32 and torch.is_grad_enabled()
    assert "VLALIGN_LEAK_PROBE" not in os.environ and os.getcwd() == START_DIR


def test_a_test_that_changes_every_global_setting(tmp_path):
    first = _draws()
    assert first == _expected_draws()  # seeded at the start of the test
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.set_default_dtype(torch.float64)
    torch.set_grad_enabled(False)
    os.environ["VLALIGN_LEAK_PROBE"] = "1"
    os.chdir(tmp_path)
    _draws()  # the generators move on


def test_the_next_test_starts_from_the_start_up_state():
    _assert_start_up_state()
    assert _draws() == _expected_draws()


def test_learning_probe_records_value_bound_and_seed(tmp_path, monkeypatch):
    log = tmp_path / "learning.jsonl"
    monkeypatch.setenv("VLALIGN_LEARNING_LOG", str(log))
    probe = LearningProbe("t::x", seed=3)
    assert probe.above("rise", 0.3, 0.1) and not probe.above("rise", 0.05, 0.1)
    assert probe.below("ratio", 0.8, 0.95) and not probe.below("ratio", 0.95, 0.95)
    rows = [json.loads(line) for line in Path(log).read_text().splitlines()]
    assert [(r["name"], r["value"], r["op"], r["bound"], r["seed"]) for r in rows] == [
        ("rise", 0.3, ">", 0.1, 3), ("rise", 0.05, ">", 0.1, 3),
        ("ratio", 0.8, "<", 0.95, 3), ("ratio", 0.95, "<", 0.95, 3),
    ]
    assert rows[0]["threads"] == TEST_THREADS and rows[0]["kernels"] == torch.backends.cpu.get_cpu_capability()


def test_no_test_imports_from_a_conftest():
    """The suite has two conftest.py files; ``from conftest import`` gets whichever pytest loaded last, so
    a helper imported that way breaks collection in some runs. Helpers live in *_support.py modules."""
    root = Path(__file__).resolve().parents[1]
    pattern = re.compile(r"^\s*(from conftest import|import conftest)", re.MULTILINE)
    offenders = [str(p.relative_to(root)) for p in root.rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == []
