"""The installed wheel behaves like the checkout: it carries every recipe (fast), and installed into a
fresh virtual environment, away from the source tree, it runs the demo's smoke configuration to the
same numbers as the checkout does (slow).

The fresh environment reuses this environment's dependencies through a ``.pth`` line (installing
torch again would take minutes); ``vlalign`` itself comes only from the wheel: the source tree is not
on its path and the editable install's finder is not loaded there (a ``.pth`` line adds a folder, it
does not run the ``.pth`` files inside it)."""

from __future__ import annotations

import json
import math
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "README.md", "vlalign", "configs")


def build_wheel(dest: Path) -> Path:
    """The wheel of a copy of the sources (the checkout itself gets no build/ or egg-info)."""
    src = dest / "src"
    src.mkdir()
    for name in SOURCES:
        item = ROOT / name
        if item.is_dir():
            shutil.copytree(item, src / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(item, src / name)
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", str(dest), str(src)]
    res = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    (wheel,) = dest.glob("vlalign-*.whl")
    return wheel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheel"))


def test_the_wheel_carries_every_recipe(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        configs = sorted(p.relative_to(ROOT / "configs").as_posix() for p in (ROOT / "configs").rglob("*.yaml"))
        assert configs and all(f"vlalign/recipes/{c}" in names for c in configs), sorted(n for n in names if "recipes" in n)
        for c in configs:  # the same bytes as the source: one source for the recipes
            assert zf.read(f"vlalign/recipes/{c}") == (ROOT / "configs" / c).read_bytes(), c
        assert not any(n.startswith(("configs/", "tests/")) for n in names)


def fresh_env(tmp: Path, wheel: Path) -> Path:
    """A new venv holding only the wheel's vlalign, with this environment's dependencies on its path."""
    env = tmp / "venv"
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(env)], check=True, timeout=300)
    python = env / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], check=True,
                             capture_output=True, text=True).stdout.strip()  # fmt: skip
    Path(purelib, "_vlalign_test_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    cmd = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q", str(wheel)]
    subprocess.run(cmd, check=True, timeout=600)
    return env


def numbers(m: dict) -> dict[str, float]:
    """Every metric of the demo's three models (timings aside)."""
    return {f"{g}.{k}": v for g in ("sft", "dpo", "control") for k, v in m[g].items() if not k.startswith("time")}


@pytest.mark.slow
def test_installed_wheel_runs_the_demo_smoke_like_the_checkout(wheel, tmp_path):
    from test_demo import SMOKE  # the smoke configuration of tests/integration/test_demo.py

    env = fresh_env(tmp_path, wheel)
    where = subprocess.run([str(env / "bin" / "python"), "-c", "import vlalign; print(vlalign.__file__)"], cwd=tmp_path,
                           check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip
    assert Path(where).is_relative_to(env) and not Path(where).is_relative_to(ROOT), where
    runs = {}
    for name, exe in (("wheel", env / "bin" / "vlalign"), ("checkout", Path(sys.executable).parent / "vlalign")):
        cwd = tmp_path / name
        cwd.mkdir()
        res = subprocess.run([str(exe), "demo", "--out", "out", "--seed", "3", *SMOKE], cwd=cwd, check=False,
                             capture_output=True, text=True, timeout=1200)  # fmt: skip
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        runs[name] = json.loads((cwd / "out" / "metrics.json").read_text())
    a, b = numbers(runs["wheel"]), numbers(runs["checkout"])
    assert a.keys() == b.keys() and len(a) > 20
    assert all(a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in a), {k: (a[k], b[k]) for k in a if a[k] != b[k]}
    assert runs["wheel"]["intervals"] == runs["checkout"]["intervals"]
    # the recipe both read is the packaged demo.yaml: the warm-up and frozen tower of configs/demo.yaml are in it
    saved = (tmp_path / "wheel" / "out" / "config.yaml").read_text()
    assert "freeze:\n- vision_tower" in saved and "replay_yes_no: 2000" in saved
