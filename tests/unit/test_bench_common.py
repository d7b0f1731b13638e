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


MACHINE = {"cpu": "test", "threads": 2, "matmul_gflops_fp32": 200.0, "matmul_gflops_per_cpu_s": 100.0}
MODEL = {"family": "llava", "params": 30_000_000, "params_non_embedding": 29_000_000}
FLOPS = {"train_per_pair": 30e9, "epoch": 8 * 40e9}  # 8 pairs of 40 GFLOP each (4 forwards of 10)


def test_dpo_report_schema_and_ratios():
    vl = {"e2e_s": 20.0, "e2e_cpu_s": 38.0, "pairs_per_s": 2.0, "pairs_per_cpu_s": 1.0, "peak_rss_mb": 700.0,
          "peak_above_baseline_mb": 300.0}
    trl = {"e2e_s": 80.0, "e2e_cpu_s": 150.0, "pairs_per_s": 0.5, "peak_rss_mb": 1400.0, "peak_above_baseline_mb": 800.0}
    rep = dpo.assemble({"vlalign": vl, "trl": trl}, MACHINE, MODEL, {"steps": 20}, FLOPS)
    for key in ("vlalign", "trl", "speedup_e2e", "speedup_steady", "memory_ratio", "machine", "model", "targets"):
        assert key in rep
    assert rep["speedup_e2e"] == 4.0  # 80 s / 20 s
    assert rep["speedup_steady"] == 4.0  # 2.0 / 0.5 pairs/s
    assert rep["speedup_e2e_cpu_time"] == pytest.approx(3.947)  # 150 / 38
    assert rep["memory_ratio"] == 0.5  # 700 / 1400
    assert rep["memory_above_baseline_ratio"] == 0.375  # 300 / 800
    # steady: 30 GFLOP per pair × 2 pairs/s = 60 GFLOP/s = 0.3 of the 200 GFLOP/s probe
    assert rep["vlalign"]["useful_gflops_steady"] == 60.0 and rep["vlalign"]["fraction_of_peak_steady"] == 0.3
    # per CPU-second: 30 GFLOP × 1 pair per CPU-s = 30 GFLOP per CPU-s = 0.3 of the probe's 100 per CPU-s
    assert rep["vlalign"]["fraction_of_peak_cpu_time_steady"] == 0.3
    # end to end: 320 GFLOP in 80 s = 4 GFLOP/s (TRL)
    assert rep["trl"]["useful_gflops_e2e"] == 4.0 and rep["trl"]["fraction_of_peak_e2e"] == 0.02
    assert rep["max_batch_ratio"] is None
    json.dumps(rep)  # the report must be JSON-serialisable


def test_dpo_report_gives_the_lean_side_and_max_batch_their_ratios():
    trl = {"e2e_s": 90.0, "peak_rss_mb": 2000.0}
    vl = {"e2e_s": 30.0, "peak_rss_mb": 1500.0}
    lean = {"e2e_s": 45.0, "peak_rss_mb": 1300.0}
    batches = {"vlalign": {"max_batch": 24}, "trl": {"max_batch": 5}}
    rep = dpo.assemble({"vlalign": vl, "vlalign_lean": lean, "trl": trl}, MACHINE, MODEL, {}, None, batches)
    assert (rep["speedup_e2e"], rep["memory_ratio"]) == (3.0, 0.75)  # 90/30, 1500/2000
    assert rep["lean"] == {"speedup_e2e": 2.0, "memory_ratio": 0.65}  # 90/45, 1300/2000
    assert rep["max_batch_ratio"] == 4.8  # 24 / 5


def test_each_side_gets_its_own_spec(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(common, "machine_info", lambda threads, device="cpu": {"threads": threads})
    monkeypatch.setattr(common, "package_versions", lambda names: {})
    monkeypatch.setattr(common, "run_worker", lambda script, spec, workdir: seen.setdefault(workdir.name, spec) and {})
    common.run_sides("dpo", dpo.SIDES, ("vlalign", "vlalign_lean", "trl"), {"threads": 2, "steps": 3}, tmp_path, (),
                     dpo.SIDE_SPECS)
    assert seen["dpo_vlalign"]["recompute_vision"] is False
    assert seen["dpo_vlalign_lean"]["recompute_vision"] is True
    assert "recompute_vision" not in seen["dpo_trl"] and seen["dpo_trl"]["steps"] == 3


def test_dpo_report_keeps_a_failed_side():
    rep = dpo.assemble({"vlalign": {"error": "boom"}, "trl": {"e2e_s": 4.5, "pairs_per_s": 1.0}},
                       MACHINE, MODEL, {}, FLOPS)
    assert rep["vlalign"]["error"] == "boom" and "useful_gflops_e2e" not in rep["vlalign"]
    assert rep["speedup_e2e"] is None and rep["speedup_steady"] is None


def test_grpo_report_speedup_is_trl_time_over_vlalign_time():
    vl = {"s_per_step": 1.6, "generated_tokens_per_s": 160.0, "peak_rss_mb": 900.0, "peak_above_baseline_mb": 400.0}
    trl = {"s_per_step": 4.8, "generated_tokens_per_s": 104.0, "peak_rss_mb": 1500.0, "peak_above_baseline_mb": 700.0}
    rep = grpo.assemble({"vlalign": vl, "trl": trl}, MACHINE, MODEL, {})
    assert rep["speedup"] == 3.0  # 4.8 s / 1.6 s
    assert rep["generated_tokens_ratio"] == pytest.approx(1.538)  # 160 / 104 = 1.5385
    assert rep["memory_ratio"] == 0.6  # 900 / 1500
    assert rep["targets"]["speedup_min"] == 3.0


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


# ------------------------------------------------------------------ max batch (bench/maxbatch.py)
maxbatch = _load("maxbatch")


@pytest.mark.parametrize("largest,limit,expected_probes", [
    (5, 64, [1, 2, 4, 8, 6, 5]),  # double to 8 (too big), bisect 4..8: 6 (no), 5 (yes)
    (0, 64, [1]),  # even one row does not fit
    (64, 64, [1, 2, 4, 8, 16, 32, 64]),  # the limit itself fits
    (40, 48, [1, 2, 4, 8, 16, 32, 48, 40, 44, 42, 41]),  # doubling passes the limit: probe it, then bisect
])
def test_largest_fitting_doubles_then_bisects(largest, limit, expected_probes):
    best, probes = maxbatch.largest_fitting(lambda b: b <= largest, limit)
    assert best == largest
    assert [b for b, _ in probes] == expected_probes


def test_probe_spec_is_two_steps_at_the_batch():
    spec = maxbatch.probe_spec({"rows": 32, "batch_size": 4, "warmup_steps": 2, "model": "m"}, 6)
    assert spec == {"rows": 12, "batch_size": 6, "reference_batch_size": 6, "warmup_steps": 1, "max_steps": 2,
                    "model": "m"}


def test_run_worker_kills_a_child_over_the_memory_cap(tmp_path, monkeypatch):
    """A worker that holds 300 MiB under a 150 MiB cap is killed and reported as not fitting; one under
    the cap runs to the end and its result comes back."""
    (tmp_path / "hog.py").write_text(
        "import json, sys, time\n"
        "spec = json.load(open(sys.argv[2]))\n"
        "block = bytearray(spec['mib'] * 2**20)\n"
        "for i in range(0, len(block), 4096): block[i] = 1  # touch every page: resident\n"
        "time.sleep(1.0)\n"
        "hwm = [int(x.split()[1]) / 1024 for x in open('/proc/self/status') if x.startswith('VmHWM')][0]\n"
        "open(sys.argv[4], 'w').write(json.dumps({'held_mib': spec['mib'], 'peak_rss_mb': hwm}))\n")
    monkeypatch.setattr(common, "BENCH_DIR", tmp_path)
    over = common.run_worker("hog.py", {"mib": 300}, tmp_path / "big", mem_cap_mb=150)
    assert over["over_cap"] is True and "cap" in over["error"]
    fine = common.run_worker("hog.py", {"mib": 20}, tmp_path / "small", mem_cap_mb=150)
    assert fine["held_mib"] == 20 and "error" not in fine


# ------------------------------------------------------------------ phases (bench/phases.py)
phases_mod = _load("phases")


def test_phase_clock_attributes_calls_to_their_phase():
    """A policy call with gradient is ``forward``, one without is ``reference``, then backward and the
    optimizer step; a call nested inside a timed phase is not counted twice."""
    import torch

    class Top(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 4)

        def forward(self, x):
            return self.lin(x)

    model = Top()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    clock = phases_mod.PhaseClock()
    clock.install([Top])
    try:
        x = torch.randn(2, 4)
        with torch.no_grad():
            model(x)  # reference
        loss = model(x).sum()  # forward
        loss.backward()
        opt.step()
        timed_data = clock.timed("data", lambda: model(x))  # a model call inside "data" stays "data"
        timed_data()
    finally:
        clock.uninstall()
    assert clock.calls == {"data": 1, "generation": 0, "reference": 1, "forward": 1, "backward": 1, "optimizer": 1}
    model(x).sum().backward()  # uninstalled: nothing more is counted
    assert clock.calls["forward"] == 1 and clock.calls["backward"] == 1
    rep = clock.report(total_wall=10.0, total_cpu=10.0)
    assert rep["other"]["wall_s"] == pytest.approx(10.0 - sum(clock.wall.values()), abs=1e-3)


def test_tables_render_dpo_and_grpo_reports(tmp_path):
    tables = _load("tables")
    phases = {p: {"wall_s": 1.0, "cpu_s": 1.0, "calls": 1, "share": 0.1} for p in tables.PHASES}
    vl = {"e2e_s": 20.0, "pairs_per_s": 2.0, "peak_rss_mb": 700.0, "phases": phases,
          "load_avg_before": [1.0, 1, 1], "load_avg_after": [1.5, 1, 1]}
    rep = dpo.assemble({"vlalign": vl, "trl": {"e2e_s": 80.0, "pairs_per_s": 0.5, "phases": phases}},
                       MACHINE, MODEL, {"size": "bench-mini"}, FLOPS)
    (tmp_path / "dpo.json").write_text(json.dumps(rep))
    text = tables.render(tmp_path / "dpo.json")
    assert "| vlalign | 20.0" in text and "| end-to-end speed-up (CPU time) | 4 " in text and "≥ 4" in text
    assert "1.0→1.5" in text and "| backward | 1.0 s (10%) | 1.0 s (10%) |" in text
    g = grpo.assemble({"vlalign": {"s_per_step": 1.0, "generated_tokens_per_step": [64, 64]},
                       "trl": {"s_per_step": 3.0}}, MACHINE, MODEL, {})
    (tmp_path / "grpo.json").write_text(json.dumps(g))
    assert "| per step (CPU time) | 3 " in tables.render(tmp_path / "grpo.json")
