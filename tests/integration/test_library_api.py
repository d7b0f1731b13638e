"""vlalign as a library: `import vlalign` is light, every exported name resolves, and the README's Python
example runs as written."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import vlalign

README = Path(__file__).resolve().parents[2] / "README.md"


def test_import_vlalign_loads_no_torch():
    """Names load on first use: a notebook or scheduler that imports vlalign pays nothing up front."""
    code = "import sys, vlalign; print(sorted(m for m in ('torch', 'transformers', 'vlalign.trainers') if m in sys.modules))"
    res = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "[]", res.stdout + res.stderr


def test_every_exported_name_resolves():
    for name in vlalign.__all__:
        assert getattr(vlalign, name) is not None, name
    assert vlalign.train_dpo.__module__ == "vlalign.trainers.dpo" and vlalign.DPOConfig.__name__ == "DPOConfig"
    assert set(dir(vlalign)) >= set(vlalign.__all__)
    with pytest.raises(AttributeError, match="no attribute 'train_dpoo'"):
        vlalign.train_dpoo  # noqa: B018


def readme_python_example() -> str:
    """The Python block of the README's Quick start."""
    quick = README.read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", quick, flags=re.DOTALL)
    assert len(blocks) == 1, "the Quick start holds exactly one Python example"
    return blocks[0]


def test_readme_python_example_runs_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the example writes runs/ relative to where it runs, like the CLI lines above it
    exec(compile(readme_python_example(), "README.md", "exec"), {})  # noqa: S102 (the README's own code)
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    saved = json.loads((tmp_path / "runs" / "eval_dpo" / "metrics.json").read_text())
    chair, ci = saved["metrics"]["chair_i"], saved["intervals"]["chair_i"]
    assert printed.startswith(repr(chair)) and ci["low"] <= chair <= ci["high"] and ci["n"] == 20  # limit=20 captions
    dpo = (tmp_path / "runs" / "dpo_tiny" / "config.yaml").read_text()
    assert "loss: ipo" in dpo and "beta: 0.5" in dpo and "max_steps: 10" in dpo  # the overrides took
    assert (tmp_path / "runs" / "dpo_tiny" / "final" / "README.md").is_file()  # the run's model card
