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


def _summary(report: dict, keys: tuple[str, ...]) -> str:
    lines = []
    for side in ("vlalign", "vlalign_lean", "trl"):
        if side not in report:
            continue
        r = report[side]
        lines.append(f"{side}: " + (r["error"] if "error" in r else ", ".join(f"{k}={r.get(k)}" for k in keys)))
    lines.append(f"speedup (vlalign vs trl): {report.get('speedup')}   memory ratio: {report.get('memory_ratio')}")
    if "lean" in report:
        lean = report["lean"]
        lines.append(f"vlalign_lean vs trl: speedup {lean.get('speedup')}   memory ratio {lean.get('memory_ratio')}")
    return "\n".join(lines)


WORKDIR = typer.Option(Path("runs/bench"), "--workdir", help="model, data and per-side logs go here")
AGAINST_OPTION = typer.Option("trl", "--against", help="framework to compare with")
DPO_JSON = typer.Option(Path("bench/results/dpo_vs_trl.json"), "--json", help="write the report here")
GRPO_JSON = typer.Option(Path("bench/results/grpo_vs_trl.json"), "--json", help="write the report here")
WARMUP = typer.Option(None, "--warmup", min=1, help="warm-up steps, not measured (dpo 3, grpo 1)")
MODEL = typer.Option("small", "--model", help="benchmark model size (vlalign tiny-model --size): tiny | small")
DPO_SIDES = ("vlalign", "vlalign_lean", "trl")
GRPO_SIDES = ("vlalign", "trl")


@bench_app.command("dpo")
def bench_dpo(
    against: str = AGAINST_OPTION,
    json_out: Path = DPO_JSON,
    steps: int = typer.Option(20, "--steps", min=1, help="measured steps (after the warm-up)"),
    warmup: int | None = WARMUP,
    workdir: Path = WORKDIR,
    model: str = MODEL,
    sides: str = typer.Option(",".join(DPO_SIDES), "--sides", help="which sides to run, in this order"),
) -> None:
    """DPO pairs/s and peak memory, vlalign vs TRL's DPOTrainer (same model, data, hyper-parameters)."""
    from vlalign.cli_common import offline_by_default

    offline_by_default()
    chosen = _sides(sides, DPO_SIDES)
    _check(against, chosen)
    report = load_bench_script("dpo_vs_trl").run(json_out, workdir, steps=steps, warmup=warmup or 3, size=model,
                                                 sides=chosen)
    typer.echo(_summary(report, ("pairs_per_s", "peak_rss_mb", "peak_above_baseline_mb")))
    typer.echo(f"wrote {json_out}")


@bench_app.command("grpo")
def bench_grpo(
    against: str = AGAINST_OPTION,
    json_out: Path = GRPO_JSON,
    steps: int = typer.Option(2, "--steps", min=1, help="measured GRPO steps (after the warm-up)"),
    warmup: int | None = WARMUP,
    workdir: Path = WORKDIR,
    model: str = MODEL,
    sides: str = typer.Option(",".join(GRPO_SIDES), "--sides", help="which sides to run, in this order"),
) -> None:
    """GRPO s/step and generated tokens/s, vlalign vs TRL's GRPOTrainer (4 prompts × 4, 16 tokens)."""
    from vlalign.cli_common import offline_by_default

    offline_by_default()
    chosen = _sides(sides, GRPO_SIDES)
    _check(against, chosen)
    report = load_bench_script("grpo_vs_trl").run(json_out, workdir, steps=steps, warmup=warmup or 1, size=model,
                                                  sides=chosen)
    typer.echo(_summary(report, ("s_per_step", "generated_tokens_per_s", "peak_rss_mb")))
    typer.echo(f"wrote {json_out}")


def register(app: typer.Typer) -> None:
    app.add_typer(bench_app, name="bench")
