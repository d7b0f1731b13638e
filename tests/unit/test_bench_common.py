"""The benchmark helpers (bench/): memory parsing, rate and ratio maths, the report's JSON schema.

The benchmarks themselves (minutes per side) are not run here; see bench/README.md.
"""

from __future__ import annotations

import importlib.util
import json
import struct
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load(name: str):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


common = _load("common")
dpo = _load("dpo_vs_trl")
grpo = _load("grpo_vs_trl")

STATUS = """Name:\tpython
VmPeak:\t 4336628 kB
VmSize:\t 4336628 kB
VmHWM:\t 1277952 kB
VmRSS:\t  524288 kB
Threads:\t3
voluntary_ctxt_switches:\t12
"""


def test_parse_proc_status_reads_memory_lines_in_mib():
    got = common.parse_proc_status(STATUS)
    assert got["VmHWM"] == 1248.0  # 1277952 kB / 1024
    assert got["VmRSS"] == 512.0  # 524288 kB / 1024
    assert "Threads" not in got and "voluntary_ctxt_switches" not in got


def test_rss_snapshot_of_this_process_is_plausible():
    snap = common.rss_snapshot()
    assert 10 < snap["rss_mb"] <= snap["hwm_mb"] < 1e6


def test_maxrss_kib_to_mib_on_linux():
    if sys.platform == "darwin":
        pytest.skip("ru_maxrss is in bytes on macOS")
    assert common.maxrss_to_mb(1277952) == 1248.0


def test_memory_report_subtracts_the_import_baseline():
    # 1248.0 − 437.0 = 811.0 MiB above the baseline (the DESIGN.md TRL numbers)
    assert common.memory_report(437.0, 1248.0) == {
        "baseline_rss_mb": 437.0, "peak_rss_mb": 1248.0, "peak_above_baseline_mb": 811.0}


def test_steady_rate_excludes_warmup_steps():
    # steps end at 10, 12, 13, 14, 15 s; warm-up 2 → 3 steps × 4 pairs in (15 − 12) s = 4.0 pairs/s
    assert common.steady_rate([10.0, 12.0, 13.0, 14.0, 15.0], 4, warmup=2) == pytest.approx(4.0)
    # warm-up 1 → 4 steps × 4 pairs in (15 − 10) s = 3.2 pairs/s
    assert common.steady_rate([10.0, 12.0, 13.0, 14.0, 15.0], 4, warmup=1) == pytest.approx(3.2)


@pytest.mark.parametrize("ends,warmup", [([1.0, 2.0], 2), ([1.0, 2.0], 0), ([3.0, 3.0], 1)])
def test_steady_rate_rejects_unmeasurable_runs(ends, warmup):
    with pytest.raises(ValueError):
        common.steady_rate(ends, 4, warmup=warmup)


def test_ratio_and_missing_sides():
    assert common.ratio(9.0, 4.5) == 2.0
    assert common.ratio(749.0, 1248.0) == 0.6  # 749 / 1248 = 0.60016 → 0.6
    assert common.ratio(None, 4.5) is None and common.ratio(1.0, 0.0) is None


def test_nominal_flops_per_token():
    # DPO: 6·P training + 2·P reference forward; GRPO adds 2·P for generation
    assert common.nominal_dpo_flops_per_token(1_000) == 8_000
    assert common.nominal_grpo_flops_per_token(1_000) == 10_000


def _write_safetensors(path: Path, tensors: dict[str, list[int]]) -> None:
    header, offset = {}, 0
    for name, shape in tensors.items():
        n = 4
        for d in shape:
            n *= d
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + b"\0" * offset)


def test_safetensors_param_count_reads_headers(tmp_path):
    _write_safetensors(tmp_path / "model.safetensors", {
        "model.language_model.embed_tokens.weight": [10, 4],  # 40, an embedding look-up
        "model.language_model.layers.0.mlp.up_proj.weight": [8, 4],  # 32
        "lm_head.weight": [10, 4],  # 40
    })
    assert common.safetensors_param_count(tmp_path) == {"params": 112, "params_non_embedding": 72}
    with pytest.raises(FileNotFoundError):
        common.safetensors_param_count(tmp_path / "missing")


def test_read_rows_needs_enough_rows(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"id": "a"}\n{"id": "b"}\n')
    assert [r["id"] for r in common.read_rows(f, 1)] == ["a"]
    with pytest.raises(ValueError, match="needs 3"):
        common.read_rows(f, 3)


MACHINE = {"cpu": "test", "threads": 2, "matmul_gflops_fp32": 200.0}
MODEL = {"family": "llava", "params": 30_000_000, "params_non_embedding": 29_000_000}


def test_dpo_report_schema_and_ratios():
    vl = {"pairs_per_s": 9.0, "peak_rss_mb": 700.0, "peak_above_baseline_mb": 300.0, "tokens_per_pair": 200.0}
    trl = {"pairs_per_s": 4.5, "peak_rss_mb": 1400.0, "peak_above_baseline_mb": 800.0, "tokens_per_pair": 200.0}
    rep = dpo.assemble({"vlalign": vl, "trl": trl}, MACHINE, MODEL, {"steps": 20})
    for key in ("vlalign", "trl", "speedup", "memory_ratio", "machine", "model", "achieved_gflops"):
        assert key in rep
    assert rep["speedup"] == 2.0  # 9.0 / 4.5
    assert rep["memory_ratio"] == 0.5  # 700 / 1400
    assert rep["memory_above_baseline_ratio"] == 0.375  # 300 / 800
    # TRL: 8 · 29e6 FLOP/token × (4.5 pairs/s × 200 tokens/pair = 900 tokens/s) = 208.8 GFLOP/s
    assert rep["achieved_gflops"]["trl"] == pytest.approx(208.8)
    assert rep["fraction_of_matmul_peak"]["trl"] == pytest.approx(1.044)  # 208.8 / 200
    json.dumps(rep)  # the report must be JSON-serialisable


def test_dpo_report_gives_the_lean_side_its_own_ratios():
    trl = {"pairs_per_s": 2.0, "peak_rss_mb": 2000.0, "tokens_per_pair": 200.0}
    vl = {"pairs_per_s": 6.0, "peak_rss_mb": 1500.0, "tokens_per_pair": 200.0}
    lean = {"pairs_per_s": 4.0, "peak_rss_mb": 1300.0, "tokens_per_pair": 200.0}
    rep = dpo.assemble({"vlalign": vl, "vlalign_lean": lean, "trl": trl}, MACHINE, MODEL, {})
    assert (rep["speedup"], rep["memory_ratio"]) == (3.0, 0.75)  # the default side: 6/2, 1500/2000
    assert rep["lean"] == {"speedup": 2.0, "memory_ratio": 0.65}  # 4/2, 1300/2000
    assert rep["achieved_gflops"]["vlalign_lean"] == pytest.approx(185.6)  # 8 · 29e6 · 4 · 200 / 1e9
    assert dpo.assemble({"vlalign": vl, "trl": trl}, MACHINE, MODEL, {})["lean"] == {"speedup": None, "memory_ratio": None}


def test_each_side_gets_its_own_spec(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(common, "machine_info", lambda threads: {"threads": threads})
    monkeypatch.setattr(common, "package_versions", lambda names: {})
    monkeypatch.setattr(common, "run_worker", lambda script, spec, workdir: seen.setdefault(workdir.name, spec) and {})
    common.run_sides("dpo", dpo.SIDES, ("vlalign", "vlalign_lean", "trl"), {"threads": 2, "steps": 3}, tmp_path, (),
                     dpo.SIDE_SPECS)
    assert seen["dpo_vlalign"]["release_freed_memory"] is False
    assert seen["dpo_vlalign_lean"]["release_freed_memory"] is True
    assert "release_freed_memory" not in seen["dpo_trl"] and seen["dpo_trl"]["steps"] == 3


def test_dpo_report_keeps_a_failed_side():
    rep = dpo.assemble({"vlalign": {"error": "boom"}, "trl": {"pairs_per_s": 4.5, "tokens_per_pair": 1.0}},
                       MACHINE, MODEL, {})
    assert rep["vlalign"]["error"] == "boom"
    assert rep["speedup"] is None and rep["achieved_gflops"]["vlalign"] is None


def test_grpo_report_speedup_is_trl_time_over_vlalign_time():
    vl = {"s_per_step": 1.6, "generated_tokens_per_s": 160.0, "peak_rss_mb": 900.0, "peak_above_baseline_mb": 400.0}
    trl = {"s_per_step": 2.4, "generated_tokens_per_s": 104.0, "peak_rss_mb": 1500.0, "peak_above_baseline_mb": 700.0}
    rep = grpo.assemble({"vlalign": vl, "trl": trl}, MACHINE, MODEL, {})
    assert rep["speedup"] == 1.5  # 2.4 s / 1.6 s
    assert rep["generated_tokens_ratio"] == pytest.approx(1.538)  # 160 / 104 = 1.5385
    assert rep["memory_ratio"] == 0.6  # 900 / 1500
    assert rep["targets"]["speedup_min"] == 1.5


def test_bench_command_is_registered():
    from typer.testing import CliRunner

    from vlalign.cli import app

    out = CliRunner().invoke(app, ["bench", "--help"])
    assert out.exit_code == 0 and "dpo" in out.output and "grpo" in out.output
    bad = CliRunner().invoke(app, ["bench", "dpo", "--against", "openrlhf"])
    assert bad.exit_code == 2 and "only trl" in bad.output


def test_bench_sides_option_rejects_unknown_sides():
    from typer.testing import CliRunner

    from vlalign.cli import app

    bad = CliRunner().invoke(app, ["bench", "grpo", "--sides", "vlalign,openrlhf"])
    assert bad.exit_code == 2 and "--sides" in bad.output and "vlalign, trl" in bad.output
