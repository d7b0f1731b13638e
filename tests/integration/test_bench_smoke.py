"""`vlalign bench dpo` end to end on the tiny model, from a RELATIVE work folder, as a user runs it.

WHY: the benchmark runs each side in its own process whose working directory is that side's folder;
a path handed over relative to the caller's folder does not resolve there (every side then failed with
"no such file" for its spec). This runs the real command, one warm-up step and one measured step per
side, and checks what can be checked exactly: every side finished, its spec holds absolute paths, and
both frameworks start from the same DPO loss, ln 2 (policy == reference at step 1, so every margin is
0 and -log σ(0) = ln 2 = 0.693147).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

# The TRL side needs the optional ``trl`` package (dev and bench extras); without it only vlalign runs.
SIDES = "vlalign,trl" if importlib.util.find_spec("trl") is not None else "vlalign"


def test_bench_dpo_runs_from_a_relative_workdir(tmp_path):
    cli = Path(sys.executable).with_name("vlalign")
    cmd = [str(cli), "bench", "dpo", "--model", "tiny", "--steps", "1", "--warmup", "1", "--sides", SIDES,
           "--workdir", "rel/bench", "--json", "rel/report.json"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(cmd, check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=540)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]

    report = json.loads((tmp_path / "rel/report.json").read_text())
    for side in SIDES.split(","):
        result = report[side]
        assert "error" not in result, result.get("log_tail", result)
        assert result["pairs_per_s"] > 0 and result["peak_rss_mb"] > result["baseline_rss_mb"] > 0
        assert math.isclose(result["loss_first"], math.log(2), abs_tol=1e-4)
        spec = json.loads(next((tmp_path / "rel/bench" / f"dpo_{side}").glob("*.spec.json")).read_text())
        assert Path(spec["model"]).is_absolute() and Path(spec["data"]).is_absolute()
