"""Shared pytest fixtures. Each area keeps its fixtures in its own clearly marked block."""

from __future__ import annotations

import os

# Before torch is imported, so that torch (and every subprocess a test starts) sees the same count.
from suite_state import TEST_SEED, TEST_THREADS, LearningProbe

os.environ["OMP_NUM_THREADS"] = str(TEST_THREADS)
# torch reads MKL_NUM_THREADS after OMP_NUM_THREADS: a stray one would override the count a test gives the
# subprocesses it starts (test_trainers_resume runs them with OMP_NUM_THREADS=1 to match its own run).
os.environ.pop("MKL_NUM_THREADS", None)
# Idle OpenMP threads sleep instead of spinning. Numerics are unchanged (the work is split the same way);
# on a CPU shared with other processes spinning threads steal each other's cores: a loop of small matmuls
# on 2 threads took 39-78 s spinning vs 2-4 s passive on this project's loaded 2-core machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import json
import logging
import random
from contextlib import contextmanager

import numpy as np
import pytest
import torch

# ==== global state: every test starts from the same process-wide state (docs/reproducibility.md) =====
torch.set_num_threads(TEST_THREADS)
try:  # settable only before the first inter-op parallel work, i.e. once per process
    torch.set_num_interop_threads(TEST_THREADS)
except RuntimeError:
    pass

# (getter, setter) of torch's process-wide numerics switches: a test that turns one on (e.g. a trainer's
# ``deterministic: true`` calling ``torch.use_deterministic_algorithms``) must not change the tests after it.
_TORCH_SWITCHES = {
    "deterministic_algorithms": (
        lambda: (torch.are_deterministic_algorithms_enabled(),
                 torch.is_deterministic_algorithms_warn_only_enabled()),
        lambda v: torch.use_deterministic_algorithms(v[0], warn_only=v[1])),
    "default_dtype": (torch.get_default_dtype, torch.set_default_dtype),
    "grad_enabled": (torch.is_grad_enabled, torch.set_grad_enabled),
    "anomaly_detection": (torch.is_anomaly_enabled, torch.set_anomaly_enabled),
    "float32_matmul_precision": (torch.get_float32_matmul_precision, torch.set_float32_matmul_precision),
    "cudnn_deterministic": (lambda: torch.backends.cudnn.deterministic,
                            lambda v: setattr(torch.backends.cudnn, "deterministic", v)),
    "cudnn_benchmark": (lambda: torch.backends.cudnn.benchmark,
                        lambda v: setattr(torch.backends.cudnn, "benchmark", v)),
}
# pytest itself sets and pops this one around every test phase.
_PYTEST_OWNED_ENV = {"PYTEST_CURRENT_TEST"}


def _snapshot() -> dict:
    root = logging.getLogger()
    return {
        "torch": {name: get() for name, (get, _) in _TORCH_SWITCHES.items()},
        "environ": {k: v for k, v in os.environ.items() if k not in _PYTEST_OWNED_ENV},
        "cwd": os.getcwd(),
        "root_logger": (root.level, _own_handlers(root)),
    }


def _own_handlers(logger: logging.Logger) -> list[logging.Handler]:
    """The logger's handlers less pytest's own capture handlers (pytest adds and removes those per phase)."""
    return [h for h in logger.handlers if not type(h).__module__.startswith("_pytest")]


_BASELINE = _snapshot()  # the state at start-up, before any test ran


def _restore(state: dict) -> list[str]:
    """Put the process back into ``state``; returns what a test had changed (for --report of leaks)."""
    changed = []
    for name, (get, set_) in _TORCH_SWITCHES.items():
        if get() != state["torch"][name]:
            changed.append(f"torch {name}")
            set_(state["torch"][name])
    env = {k: v for k, v in os.environ.items() if k not in _PYTEST_OWNED_ENV}
    if env != state["environ"]:
        keys = {k for k in set(env) | set(state["environ"]) if env.get(k) != state["environ"].get(k)}
        changed.append("os.environ " + ", ".join(sorted(keys)))
        for key in set(env) - set(state["environ"]):
            del os.environ[key]
        os.environ.update(state["environ"])
    if os.getcwd() != state["cwd"]:
        changed.append(f"cwd {os.getcwd()}")
        os.chdir(state["cwd"])
    root = logging.getLogger()
    if (root.level, _own_handlers(root)) != state["root_logger"]:
        changed.append("root logger")
        root.setLevel(state["root_logger"][0])
        pytest_handlers = [h for h in root.handlers if h not in _own_handlers(root)]
        root.handlers[:] = pytest_handlers + state["root_logger"][1]
    if torch.get_num_threads() != TEST_THREADS:
        changed.append(f"torch threads {torch.get_num_threads()}")
    return changed


def _reset_accelerate() -> None:
    """accelerate keeps one process-wide AcceleratorState (device, mixed precision) and raises when a later
    Accelerator asks for another one (e.g. ``cpu=True`` after a trainer took the GPU): start each test
    without it, as a fresh process would (accelerate's own test cases reset it the same way)."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # every device's generator


@contextmanager
def fresh_global_state(seed: int = TEST_SEED, threads: int = TEST_THREADS):
    """Run the body from the start-up state (threads, seeds, torch switches, environment, working
    directory, root logger, accelerate's state) and put that state back afterwards."""
    _restore(_BASELINE)
    _reset_accelerate()
    torch.set_num_threads(threads)
    seed_everything(seed)
    try:
        yield
    finally:
        leaked = _restore(_BASELINE)
        _reset_accelerate()
        torch.set_num_threads(threads)
        seed_everything(seed)  # module- and session-scoped fixtures set up before the next test start here too
        if leaked and os.environ.get("VLALIGN_REPORT_LEAKS"):
            test = os.environ.get("PYTEST_CURRENT_TEST", "?")
            print(f"\n[global state] {test} changed: {'; '.join(leaked)}")


@pytest.fixture(autouse=True)
def _same_global_state_for_every_test():
    """Every test starts from the same process-wide state, whatever ran before it."""
    with fresh_global_state():
        yield


@pytest.fixture(scope="session")
def learning_seed() -> int:
    """The seed of the learning tests (0 unless VLALIGN_TEST_SEED says otherwise), for module fixtures."""
    return TEST_SEED


@pytest.fixture
def learning(request) -> LearningProbe:
    """For a test that asserts learning (reward rises, loss falls): pass ``learning.seed`` to the run's
    config and assert ``learning.above(name, value, bound)`` / ``learning.below(...)``; size the bound
    with scripts/learning_spread.py (docs/reproducibility.md)."""
    return LearningProbe(request.node.nodeid, TEST_SEED)


def pytest_collection_modifyitems(config, items):
    """``VLALIGN_LEARNING_ONLY=1`` (set by scripts/learning_spread.py): keep only the learning tests."""
    if os.environ.get("VLALIGN_LEARNING_ONLY"):
        keep = [i for i in items if "learning" in getattr(i, "fixturenames", ())]
        config.hook.pytest_deselected(items=[i for i in items if i not in keep])
        items[:] = keep


# ==== end of global state =========================================================================


# ==== models area: tiny models, built once per session per family ================================
@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """``tiny_model_dir(family)`` -> Path of a saved tiny random model of that family.

    Built at most once per test session per family (a few seconds each) and shared by every test,
    so load it with ``AutoModelForImageTextToText.from_pretrained(path)`` / ``load_model``.
    Families: ``vlalign.models.tiny.ARCHITECTURES`` (llava, qwen2_vl, idefics3; "smolvlm" = idefics3).
    """
    built: dict[str, object] = {}

    def get(family: str = "llava"):
        if family not in built:
            from vlalign.models.tiny import build_tiny

            out = tmp_path_factory.mktemp(f"tiny_{family}")
            with torch.random.fork_rng(devices=[]):  # build_tiny seeds torch's global RNG: keep the test's
                built[family] = build_tiny(family, out, size="tiny", seed=0)
        return built[family]

    return get


# ==== end of models area =========================================================================


# ==== trainers area: small preference / SFT files with real images ===============================
COLOURS_RGB = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30), "yellow": (230, 220, 40)}


def write_trainer_data(out_dir, n: int = 8):
    """``n`` preference rows + ``n`` SFT rows over 4 images (a coloured square on white, 64×64); returns (pref, sft) paths.

    The chosen answer names the image's colour, the rejected one another colour, with an RLHF-V
    segment over the wrong word so dense DPO has something to weigh.
    """
    from pathlib import Path

    from PIL import Image

    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    names = list(COLOURS_RGB)
    for name, rgb in COLOURS_RGB.items():
        img = Image.new("RGB", (64, 64), (255, 255, 255))
        img.paste(rgb, (16, 16, 48, 48))  # a coloured square on white (crops differ: mDPO has work to do)
        img.save(out / "images" / f"{name}.png")
    pref, sft = [], []
    for i in range(n):
        good, bad = names[i % 4], names[(i + 1) % 4]
        rejected = f"The image is {bad}."
        start = rejected.index(bad)
        pref.append({
            "id": f"p{i}", "images": [f"images/{good}.png"], "prompt": "What color is the image?",
            "chosen": f"The image is {good}.", "rejected": rejected,
            "rejected_segments": [{"start": start, "end": start + len(bad), "correction": good}], "meta": {},
        })
        sft.append({"id": f"s{i}", "images": [f"images/{good}.png"], "prompt": "What color is the image?",
                    "reference": f"The image is {good}.", "meta": {}})
    for fname, rows in (("preference.jsonl", pref), ("sft.jsonl", sft)):
        (out / fname).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out / "preference.jsonl", out / "sft.jsonl"


@pytest.fixture(scope="session")
def trainer_data(tmp_path_factory):
    """(preference.jsonl, sft.jsonl) with 8 rows each, built once per session."""
    return write_trainer_data(tmp_path_factory.mktemp("trainer_data"))


# ==== end of trainers area ========================================================================


# ==== annotate area: candidate pairs with real images for the labelling app =======================
def write_annotate_data(out_dir, n: int = 6):
    """``n`` preference rows (chosen names the image colour) + 2 ranked rows of 3 responses.

    Returns (preference.jsonl, ranked.jsonl). The last preference row has an emoji so that character
    offsets are tested in code points, not UTF-16 units or bytes.
    """
    from pathlib import Path

    from PIL import Image

    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    names = list(COLOURS_RGB)
    for name, rgb in COLOURS_RGB.items():
        Image.new("RGB", (16, 16), rgb).save(out / "images" / f"{name}.png")
    pref = []
    for i in range(n):
        good, bad = names[i % 4], names[(i + 1) % 4]
        tail = " 🙂" if i == n - 1 else ""
        pref.append({"id": f"p{i}", "images": [f"images/{good}.png"], "prompt": "What color is the image?",
                     "chosen": f"The image is {good}.{tail}", "rejected": f"The image is {bad}.{tail}", "meta": {}})
    ranked = [{"id": f"r{i}", "images": [f"images/{names[i]}.png"], "prompt": "Describe the image.",
               "responses": [f"A {names[i]} square.", f"A {names[i + 1]} square.", "Nothing."], "meta": {}}
              for i in range(2)]
    for fname, rows in (("preference.jsonl", pref), ("ranked.jsonl", ranked)):
        (out / fname).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return out / "preference.jsonl", out / "ranked.jsonl"


@pytest.fixture
def annotate_data(tmp_path):
    """(preference.jsonl, ranked.jsonl) candidate files in a fresh folder."""
    return write_annotate_data(tmp_path / "candidates")


# ==== end of annotate area ========================================================================


# ==== rewards area: a small Shapes benchmark shared by the reward-model / CLIP / label tests =======
@pytest.fixture(scope="session")
def rewards_shapes_dir(tmp_path_factory):
    """A small Shapes folder (600 train / 100 eval scenes, 200 + 64 safety pairs), built once."""
    from vlalign.data.shapes.generate import ShapesConfig, generate_shapes

    out = tmp_path_factory.mktemp("rewards_shapes")
    generate_shapes(out, ShapesConfig(seed=0, n_train=600, n_eval=100, n_safety=200, n_safety_eval=64))
    return out


# ==== end of rewards area =========================================================================


# ==== data area: a private datasets cache, PNG bytes, Hub-layout folders =========================
@pytest.fixture(scope="session", autouse=True)
def datasets_cache(tmp_path_factory):
    """One ``datasets`` cache per test session instead of ~/.cache: cached maps never outlive a run,
    and subprocesses (CLI, accelerate) inherit it through HF_DATASETS_CACHE."""
    import datasets

    path = tmp_path_factory.mktemp("hf_datasets_cache")
    old, old_env = datasets.config.HF_DATASETS_CACHE, os.environ.get("HF_DATASETS_CACHE")
    datasets.config.HF_DATASETS_CACHE = path
    os.environ["HF_DATASETS_CACHE"] = str(path)
    yield path
    datasets.config.HF_DATASETS_CACHE = old
    if old_env is None:
        os.environ.pop("HF_DATASETS_CACHE", None)
    else:
        os.environ["HF_DATASETS_CACHE"] = old_env


# ==== end of data area ============================================================================
