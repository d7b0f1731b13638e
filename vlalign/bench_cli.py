"""`vlalign bench dpo|grpo --against trl --json OUT.json`: side-by-side benchmarks against TRL.

The benchmark code lives in the repository's ``bench/`` folder (not in the installed package: it needs
TRL, the ``bench`` extra, and is not part of the library). These commands load ``bench/dpo_vs_trl.py``
or ``bench/grpo_vs_trl.py`` by path from the source checkout next to this package, so they work from a
clone (``pip install -e .[bench]``), and fail with a clear message from a plain wheel install.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import typer

from vlalign.cli_common import fail

bench_app = typer.Typer(help="Side-by-side benchmarks against other frameworks (needs the `bench` extra).",
                        no_args_is_help=True)

AGAINST = ("trl",)


def bench_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "bench"


def load_bench_script(name: str) -> ModuleType:
    """Import ``bench/<name>.py`` from the source checkout (its folder holds its helpers)."""
    path = bench_dir() / f"{name}.py"
    if not path.exists():
        fail(f"{path} not found: the benchmarks run from a source checkout of vlalign (git clone, then "
             "`pip install -e .[bench]`), not from an installed wheel")
    spec = importlib.util.spec_from_file_location(f"vlalign_bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def _check(against: str, sides: tuple[str, ...]) -> None:
    if against not in AGAINST:
        fail(f"--against {against!r}: only {', '.join(AGAINST)} is supported")
    if "trl" in sides and importlib.util.find_spec("trl") is None:
        fail("TRL is not installed: `pip install -e .[bench]` (pins trl==1.16.0), or leave it out with --sides")


def _sides(text: str, known: tuple[str, ...]) -> tuple[str, ...]:
    sides = tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = [s for s in sides if s not in known]
    if unknown or not sides:
        fail(f"--sides {text!r}: choose a comma-separated subset of {', '.join(known)}")
    return sides


def _device(name: str) -> str:
    if name not in ("cpu", "cuda"):
        fail(f"--device {name!r}: cpu or cuda")
    if name == "cuda":
        import torch

        if not torch.cuda.is_available():
            fail("--device cuda: no CUDA GPU is visible to torch")
    return name


def _summary(report: dict, keys: tuple[str, ...], ratios: tuple[str, ...]) -> str:
    lines = []
    for side in ("vlalign", "vlalign_lean", "trl"):
        if side not in report:
            continue
        r = report[side]
        lines.append(f"{side}: " + (r["error"] if "error" in r else ", ".join(f"{k}={r.get(k)}" for k in keys)))
    lines.append("vlalign vs trl: " + ", ".join(f"{k}={report.get(k)}" for k in ratios))
    return "\n".join(lines)


WORKDIR = typer.Option(Path("runs/bench"), "--workdir", help="model, data and per-side logs go here")
AGAINST_OPTION = typer.Option("trl", "--against", help="framework to compare with")
DPO_JSON = typer.Option(Path("bench/results/dpo_vs_trl.json"), "--json", help="write the report here")
GRPO_JSON = typer.Option(Path("bench/results/grpo_vs_trl.json"), "--json", help="write the report here")
STEPS = typer.Option(None, "--steps", min=1, help="measured steps after the warm-up (default: per --model)")
WARMUP = typer.Option(None, "--warmup", min=1, help="warm-up steps, not in the steady rate (default: per --model)")
MODEL = typer.Option("small", "--model", help="tiny (seconds) | small (30M LLaVA) | bench-mini (a 2B checkpoint's "
                     "shapes) | bench-vocab (its real vocabulary), built by `vlalign tiny-model`; qwen2-vl-2b (the "
                     "real dimensions, random bf16 weights: GPU)")
FAMILY = typer.Option(None, "--family", help="llava | qwen2_vl (default: llava for tiny/small, qwen2_vl for bench-*)")
DEVICE = typer.Option("cpu", "--device", help="cpu (fp32) | cuda (bf16 weights on both sides; bench/gpu.sh)")
DPO_SIDES = ("vlalign", "vlalign_lean", "trl")
GRPO_SIDES = ("vlalign", "trl")


@bench_app.command("dpo")
def bench_dpo(
    against: str = AGAINST_OPTION,
    json_out: Path = DPO_JSON,
    steps: int | None = STEPS,
    warmup: int | None = WARMUP,
    workdir: Path = WORKDIR,
    model: str = MODEL,
    family: str | None = FAMILY,
    sides: str = typer.Option("vlalign,trl", "--sides", help="which of vlalign, vlalign_lean (vision tower "
                              "recomputed in backward), trl to run, in order"),
    max_batch_cap_gib: float | None = typer.Option(
        None, "--max-batch-cap-gib", help="also find each side's largest batch under this resident-memory cap "
        "(2-step probes in subprocesses, bisection; long)"),
    device: str = DEVICE,
) -> None:
    """Time to train one DPO epoch, vlalign vs TRL's DPOTrainer (same model, rows, hyper-parameters)."""
    from vlalign.cli_common import offline_by_default

    offline_by_default()
    chosen = _sides(sides, DPO_SIDES)
    _check(against, chosen)
    script = load_bench_script("dpo_vs_trl")
    if model not in script.SIZES:
        fail(f"--model {model!r}: choose one of {', '.join(script.SIZES)}")
    report = script.run(json_out, workdir, size=model, family=family, steps=steps, warmup=warmup, sides=chosen,
                        max_batch_cap_gib=max_batch_cap_gib, device=_device(device))
    typer.echo(_summary(report, ("e2e_s", "pairs_per_s", "peak_above_baseline_mb", "fraction_of_peak_steady"),
                        ("speedup_e2e", "speedup_steady", "memory_above_baseline_ratio", "max_batch_ratio")))
    typer.echo(f"wrote {json_out}")


@bench_app.command("grpo")
def bench_grpo(
    against: str = AGAINST_OPTION,
    json_out: Path = GRPO_JSON,
    steps: int | None = STEPS,
    warmup: int | None = WARMUP,
    workdir: Path = WORKDIR,
    model: str = MODEL,
    family: str | None = FAMILY,
    sides: str = typer.Option(",".join(GRPO_SIDES), "--sides", help="which sides to run, in this order"),
    device: str = DEVICE,
    vllm: bool = typer.Option(False, "--vllm", help="both sides sample with vLLM, colocated (CUDA, vllm installed)"),
) -> None:
    """GRPO s/step and generated tokens/s, vlalign vs TRL's GRPOTrainer (4 prompts × 4 samples)."""
    from vlalign.cli_common import offline_by_default

    offline_by_default()
    chosen = _sides(sides, GRPO_SIDES)
    _check(against, chosen)
    script = load_bench_script("grpo_vs_trl")
    if model not in script.SIZES:
        fail(f"--model {model!r}: choose one of {', '.join(script.SIZES)}")
    report = script.run(json_out, workdir, steps=steps, warmup=warmup, sides=chosen, size=model, family=family,
                        device=_device(device), vllm=vllm)
    typer.echo(_summary(report, ("s_per_step", "e2e_s", "peak_above_baseline_mb", "fraction_of_peak"),
                        ("speedup", "speedup_cpu", "speedup_e2e", "memory_above_baseline_ratio")))
    typer.echo(f"wrote {json_out}")


def register(app: typer.Typer) -> None:
    app.add_typer(bench_app, name="bench")
